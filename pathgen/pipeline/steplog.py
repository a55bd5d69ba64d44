"""Each pipeline step's output goes to the terminal as usual and, as a plain-text log, to <run>/logs/<step>.log.

A terminal shows progress bars by redrawing them: carriage returns (tqdm) or cursor movements (rich's live
display). Written to a file as they are, those redraws become thousands of lines of noise. The log side of the
tee therefore plays the terminal: it keeps the last screenful of lines in memory, applies carriage returns,
erase-line and cursor-up codes to them, drops other escape codes, and writes a line out once it has scrolled
beyond the reach of a redraw. What lands in the log is what the terminal finally showed.
"""

from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path

_ESCAPE = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")
_WINDOW = 200  # lines a redraw can reach back; rich's live display is far shorter


class ScreenLog:
    """A file that receives terminal output and keeps only what a terminal would end up showing."""

    def __init__(self, path: Path):
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self.lines: list[str] = [""]  # the window; the cursor is on the last line

    def write(self, text: str) -> None:
        pos = 0
        for match in _ESCAPE.finditer(text):
            self._text(text[pos : match.start()])
            self._escape(match.group(1), match.group(2))
            pos = match.end()
        self._text(text[pos:])
        while len(self.lines) > _WINDOW:
            self.file.write(self.lines.pop(0) + "\n")

    def _text(self, text: str) -> None:
        for i, part in enumerate(text.split("\n")):
            if i:
                self.lines.append("")
            if "\r" in part:  # a redraw of the current line: what follows the last carriage return wins
                part = part.rpartition("\r")[2]
                self.lines[-1] = ""
            self.lines[-1] += part

    def _escape(self, arg: str, code: str) -> None:
        if code == "A":  # cursor up: the lines below are about to be redrawn
            for _ in range(min(int(arg or 1), len(self.lines) - 1)):
                self.lines.pop()
        elif code == "K":  # erase line
            self.lines[-1] = ""

    def close(self) -> None:
        tail = self.lines if self.lines[-1] else self.lines[:-1]
        for line in tail:
            self.file.write(line + "\n")
        self.lines = [""]
        self.file.close()


class Tee:
    """Writes to a stream and a ScreenLog; looks like the stream (isatty, encoding) to whoever prints."""

    def __init__(self, stream, log: ScreenLog):
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.log.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.file.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextlib.contextmanager
def step_log(path: Path):
    """Tee sys.stdout and sys.stderr into `path` for the duration of a step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    log = ScreenLog(path)
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = Tee(out, log), Tee(err, log)
    try:
        yield log
    finally:
        sys.stdout, sys.stderr = out, err
        log.close()
