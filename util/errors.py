"""Exceptions for bad user input: the CLIs print them as one line, without a traceback."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """A file, flag or value given by the user is unusable; the message names it and what was expected."""


class MissingFileError(InputError, FileNotFoundError):
    """A file or folder the user (or a config) points at does not exist."""


def require_file(path: str | Path, what: str) -> None:
    """Raise MissingFileError naming `what` when `path` is not an existing file."""
    p = Path(path)
    if not p.is_file():
        hint = " (it is a folder)" if p.is_dir() else ""
        raise MissingFileError(f"{what} not found: {p}{hint}")
