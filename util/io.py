"""File I/O every part of the project shares: atomic writes, and readers whose errors name the file.

Every file the project writes goes through `atomic_write`: it is written under a hidden temporary
name in its own folder and renamed over the target only when complete, so a kill, a full disk or an
exception never leaves a half-written file under the real name (and the temporary one is removed).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from util.errors import InputError, require_file

MAX_CONFIG_BYTES = 1 << 20  # a YAML config larger than this is refused unread


def temporary_path(path: str | Path) -> Path:
    """A fresh hidden name beside `path` with the same suffix (so writers keep their format), for a file
    that is renamed over `path` once complete; its folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (see temporary_path); rename it over `path` when the block
    ends without an error, remove it otherwise."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def is_temporary(path: Path) -> bool:
    """Whether `path` is one of atomic_write's temporary files (left only by a killed process)."""
    return path.name.startswith(".") and ".tmp" in path.name


def is_disk_full(err: BaseException) -> bool:
    """Whether an exception (or its cause) is 'no space left on device'."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        err = err.__cause__ or err.__context__
    return False


def prepare_output_dir(folder: Path, flag: str, overwrite: bool) -> Path:
    """Make `folder` ready for a run's outputs: a writable folder, empty unless `overwrite`; temporary files
    a killed run left there are removed; a user's file in the way is an error, never replaced."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{flag}: {folder} is a file, not a results folder; it is left as it is, choose another "
                         f"{flag}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{flag}: cannot create {folder} ({err.strerror or err})") from err
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{flag}: {folder} is not writable")
    for stale in [p for p in folder.iterdir() if is_temporary(p)]:
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    if any(folder.iterdir()) and not overwrite:
        raise InputError(f"results folder {folder} already exists; pass --overwrite to replace the files this run "
                         f"makes in it, or choose another {flag}")
    return folder


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """np.save, atomically."""
    with atomic_write(path) as tmp:
        np.save(tmp, array)


def save_npz(path: str | Path, compressed: bool = False, **arrays: np.ndarray) -> None:
    """np.savez (or savez_compressed), atomically."""
    with atomic_write(path) as tmp:
        (np.savez_compressed if compressed else np.savez)(tmp, **arrays)


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: str | Path, what: str) -> dict:
    """A JSON object from a file, with errors that name it."""
    require_file(path, what)
    try:
        data = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"{what} {path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise InputError(f"{what} {path}: expected a JSON object, found {type(data).__name__}")
    return data


def load_npz(path: str | Path, what: str, keys: tuple[str, ...] = (), hint: str = "") -> dict[str, np.ndarray]:
    """Every array of an .npz (no pickled objects), checking that `keys` are present; errors name the file."""
    require_file(path, what + hint)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise InputError(f"{what} {path}: missing arrays {', '.join(missing)} (has {', '.join(data.files)})")
            return {k: np.asarray(data[k]) for k in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(f"{what} {path}: cannot be read as an .npz archive of numbers ({err})") from err


def check_array(arr: np.ndarray, path: str | Path, what: str, shape: tuple[int, ...]) -> np.ndarray:
    """`arr` if it is a finite numeric array of `shape` (-1 matches any size); else an InputError."""
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{what} {path}: expected numbers, found {arr.dtype} values")
    if arr.ndim != len(shape) or any(s not in (-1, a) for s, a in zip(shape, arr.shape)):
        want = "x".join("N" if s == -1 else str(s) for s in shape)
        raise InputError(f"{what} {path}: expected shape {want}, found {'x'.join(map(str, arr.shape)) or 'a scalar'}")
    if arr.size and not np.all(np.isfinite(arr)):
        raise InputError(f"{what} {path}: contains NaN or infinite values")
    return arr


def load_array(path: str | Path, what: str, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    """np.load (no pickles) with a shape, dtype and finiteness check; -1 in `shape` matches any size."""
    require_file(path, what)
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"{what} {path}: cannot be read as a .npy array of numbers ({err})") from err
    return check_array(arr, path, what, shape).astype(dtype)


def load_image_rgb(path: str | Path, what: str) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB."""
    import cv2

    require_file(path, what)
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"{what} {path}: cannot be decoded as an image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_yaml(path: str | Path, what: str = "config file") -> dict:
    """A YAML mapping read with a safe loader that refuses aliases (no 'billion laughs') and large files."""
    path = Path(path)
    require_file(path, what)
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise InputError(f"{what} {path}: {path.stat().st_size} bytes; a config may have at most {MAX_CONFIG_BYTES}")
    try:
        text = path.read_bytes().decode("utf-8")
        data = _safe_load_without_aliases(text)
    except UnicodeDecodeError as err:
        raise InputError(f"{what} {path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except yaml.YAMLError as err:
        raise InputError(f"{what} {path}: not valid YAML ({' '.join(str(err).split())})") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{what} {path}: expected a mapping of settings, found {type(data).__name__}")
    return data


def _safe_load_without_aliases(text: str) -> Any:
    loader = _NoAliasLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader without aliases: configs never need them, and a few hundred bytes of nested aliases
    expand into gigabytes ('billion laughs')."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(f"aliases (*{event.anchor}) are not allowed in configs "
                                 f"(line {event.start_mark.line + 1})")
        return super().compose_node(parent, index)
