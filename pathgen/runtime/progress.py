"""Progress bars that behave in a terminal and in a batch log alike.

In a terminal this is a plain tqdm bar. Outside one (SLURM, `nohup`, CI, a pipe) tqdm would still redraw its
bar with carriage returns, which a log file keeps as thousands of updates on one line; there every refresh
becomes one plain line instead, at most once every PATHGEN_PROGRESS_SECONDS (default 30) seconds, plus the
final one.
"""

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm

DEFAULT_SECONDS = 30.0


class _Lines:
    """A stream for tqdm outside a terminal: each refresh of the bar is written as one line of its own."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


class _LogBar(tqdm):
    """tqdm outside a terminal: a new postfix or description waits for the next timed line instead of forcing one
    (a trainer sets its loss every few steps, which would otherwise print a line every few steps)."""

    def set_postfix(self, ordered_dict=None, refresh=False, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_postfix_str(self, s="", refresh=False):
        super().set_postfix_str(s, refresh=False)

    def set_description(self, desc=None, refresh=False):
        super().set_description(desc, refresh=False)

    def set_description_str(self, desc=None, refresh=False):
        super().set_description_str(desc, refresh=False)


def is_terminal(stream=None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def progress_bar(total: float | None = None, *, desc: str | None = None, unit: str = "it", initial: float = 0,
                 unit_scale: bool = False, disable: bool = False, file=None, leave: bool = True) -> tqdm:
    """A tqdm bar on `file` (stderr by default): animated in a terminal, a line every N seconds in a log."""
    stream = file or sys.stderr
    kwargs = dict(total=total, desc=desc, unit=unit, initial=initial, unit_scale=unit_scale, disable=disable,
                  leave=leave)
    if is_terminal(stream):
        return tqdm(file=stream, dynamic_ncols=True, **kwargs)
    seconds = float(os.environ.get("PATHGEN_PROGRESS_SECONDS", DEFAULT_SECONDS))
    # miniters=1 with mininterval: the time limit alone decides (tqdm's adaptive miniters would skip updates)
    return _LogBar(file=_Lines(stream), mininterval=seconds, miniters=1, ncols=100, ascii=True, **kwargs)


@contextmanager
def progress_bar_or(bar: tqdm | None, **kwargs) -> Iterator[tqdm]:
    """`bar` as it is, when a caller passes its own (one display over several calls: left open), else a new
    `progress_bar(**kwargs)`, closed on exit."""
    if bar is not None:
        yield bar
        return
    own = progress_bar(**kwargs)
    try:
        yield own
    finally:
        own.close()
