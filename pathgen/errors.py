"""User-facing errors. The CLI prints them as one line and exits non-zero, without a traceback."""

from pathlib import Path


class PathgenError(Exception):
    """An error caused by the user's input (a file, a config, an option), not by a bug in pathgen."""


class FileError(PathgenError):
    """A problem with one file or setting, reported as `<path>: <message>` (the path kept as `.path`)."""

    def __init__(self, path: str | Path | None, message: str):
        super().__init__(f"{path}: {message}" if path is not None else message)
        self.path = path


class SlideError(FileError):
    """A slide cannot be opened or read, or has no usable resolution."""


class StoreError(FileError):
    """A patch store is missing, unfinished or malformed."""


class ConfigError(FileError):
    """A config file or override is invalid."""


class CheckpointError(FileError):
    """A training checkpoint cannot be loaded or does not fit the configured model."""


class EncoderError(FileError):
    """An exported encoder's weights or metadata are missing or unreadable."""


class ModelError(FileError):
    """A trained model folder is missing, unreadable, or does not fit the inputs it is given."""


def one_line(err: BaseException) -> str:
    """An error as a manifest cell: one line of at most 500 characters, without the path the row already names."""
    text = str(err) if isinstance(err, PathgenError) else f"{type(err).__name__}: {err}"
    prefix = f"{getattr(err, 'path', None)}: "
    if text.startswith(prefix):
        text = text[len(prefix) :]
    return " ".join(text.split())[:500]
