"""Logging set-up: one named logger for the project, stream + optional file handler, warnings once."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

LOGGER_NAME = "lsp"
_FORMAT = "%(asctime)s %(levelname).1s %(message)s"
_warned: set[str] = set()


class _TqdmHandler(logging.StreamHandler):
    """Writes through tqdm so log lines and progress bars do not garble each other."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise
            self.handleError(record)


def get_logger(run_dir: str | Path | None = None, level: int = logging.INFO) -> logging.Logger:
    """Return the project logger; when `run_dir` is given, also append to `<run_dir>/log.txt`."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(getattr(h, "_lsp_stream", False) for h in logger.handlers):
        handler = _TqdmHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
        handler._lsp_stream = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)
    if run_dir is not None:
        path = run_log_path(run_dir)
        if not any(getattr(h, "baseFilename", None) == str(path) for h in logger.handlers):
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = logging.FileHandler(path)
            fh.setFormatter(logging.Formatter(_FORMAT))
            logger.addHandler(fh)
    return logger


def run_log_path(run_dir: str | Path) -> Path:
    """`<run_dir>/log.txt`, resolved as logging.FileHandler records it (its `baseFilename`)."""
    return (Path(run_dir) / "log.txt").resolve()


def close_run_log(run_dir: str | Path) -> None:
    """Stop appending to `<run_dir>/log.txt` (a process that trains several runs gives each its own log)."""
    logger = logging.getLogger(LOGGER_NAME)
    path = str(run_log_path(run_dir))
    for handler in [h for h in logger.handlers if getattr(h, "baseFilename", None) == path]:
        logger.removeHandler(handler)
        handler.close()


def warn_once(message: str) -> None:
    """Log a warning the first time `message` is seen in this process."""
    if message not in _warned:
        _warned.add(message)
        logging.getLogger(LOGGER_NAME).warning(message)


def git_commit() -> str:
    """The project's current git commit, or 'unknown' (recorded with checkpoints and identities)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"
