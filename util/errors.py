"""Exceptions for bad user input, and how the CLIs report them: one line, printed last, no traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
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


EXIT_BAD_INPUT = 2  # argparse's own status for a bad command line
EXIT_INTERRUPTED = 130  # the shell's status for Ctrl-C


def run_cli(prog: str, work: Callable[[], int | None], failures: dict[type[BaseException], int] | None = None) -> int:
    """Run a command line tool's work and turn the expected failures into one line on stderr, printed last:
    bad input (exit 2), a full disk (exit 2), Ctrl-C (exit 130), and `failures` (exception type -> exit
    status, e.g. a training failure). Anything else is a bug and keeps its traceback."""
    from util.io import is_disk_full

    try:
        return work() or 0
    except InputError as err:
        return _fail(prog, str(err), EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        return _fail(prog, "interrupted (Ctrl-C); files being written were removed, finished ones kept",
                     EXIT_INTERRUPTED)
    except OSError as err:
        if is_disk_full(err):
            return _fail(prog, f"disk full while writing ({err.filename or err}); free space and run again; "
                               "unfinished files were removed", EXIT_BAD_INPUT)
        raise
    except tuple(failures or ()) as err:
        return _fail(prog, str(err), (failures or {})[type(err)])


def _fail(prog: str, message: str, status: int) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    return status
