"""User-facing errors. The CLI prints them as one line and exits non-zero, without a traceback."""

from pathlib import Path


class PathgenError(Exception):
    """An error caused by the user's input (a file, a config, an option), not by a bug in pathgen."""


def _located(path: str | Path | None, message: str) -> str:
    return f"{path}: {message}" if path is not None else message


class SlideError(PathgenError):
    """A slide cannot be opened or read, or has no usable resolution."""

    def __init__(self, path: str | Path | None, message: str):
        super().__init__(_located(path, message))
        self.path = path


class StoreError(PathgenError):
    """A patch store is missing, unfinished or malformed."""

    def __init__(self, path: str | Path | None, message: str):
        super().__init__(_located(path, message))
        self.path = path


class ConfigError(PathgenError):
    """A config file or override is invalid."""

    def __init__(self, path: str | Path | None, message: str):
        super().__init__(_located(path, message))
        self.path = path
