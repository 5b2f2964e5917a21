"""Per-frame arrays written to disk as they come and assembled into one .npz at the end.

A long demo run records landmarks, poses and shoulders for every frame; keeping them in memory would
make memory grow with the audio's length. ArrayRecorder appends each array's rows to a raw file in a
hidden temporary folder beside the output, then streams those files into a compressed .npz that
`np.load` reads like any other. The output appears atomically; an aborted run leaves nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

COPY_BLOCK = 1 << 20


class ArrayRecorder:
    """`add(name=rows, ...)` any number of times, then `close(**constants)` writes the .npz."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._dir = Path(tempfile.mkdtemp(prefix=f".{self.path.stem}.", dir=self.path.parent))
        self._arrays: dict[str, dict] = {}

    def add(self, **arrays: np.ndarray) -> None:
        """Append rows (first axis) to each named array; later rows must keep the dtype and row shape."""
        for name, rows in arrays.items():
            rows = np.ascontiguousarray(rows)
            entry = self._arrays.get(name)
            if entry is None:
                entry = {"file": open(self._dir / name, "wb"), "dtype": rows.dtype,
                         "shape": rows.shape[1:], "rows": 0}
                self._arrays[name] = entry
            if rows.dtype != entry["dtype"] or rows.shape[1:] != entry["shape"]:
                raise ValueError(f"{name}: rows {rows.dtype}{rows.shape[1:]} after {entry['dtype']}{entry['shape']}")
            entry["file"].write(rows.tobytes())
            entry["rows"] += len(rows)

    def rows(self, name: str) -> int:
        return self._arrays[name]["rows"] if name in self._arrays else 0

    def close(self, **constants: np.ndarray) -> Path:
        """Write the .npz (recorded arrays plus `constants` stored whole) and remove the temporary files."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for name, entry in self._arrays.items():
                    entry["file"].close()
                    header = {"descr": np.lib.format.dtype_to_descr(entry["dtype"]), "fortran_order": False,
                              "shape": (entry["rows"], *entry["shape"])}
                    with zf.open(f"{name}.npy", "w", force_zip64=True) as out, open(self._dir / name, "rb") as src:
                        np.lib.format.write_array_header_2_0(out, header)
                        shutil.copyfileobj(src, out, COPY_BLOCK)
                for name, value in constants.items():
                    with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
                        np.lib.format.write_array(out, np.asarray(value))
            os.replace(tmp, self.path)
        finally:
            self.abort()
            tmp.unlink(missing_ok=True)
        return self.path

    def abort(self) -> None:
        """Drop everything recorded so far."""
        for entry in self._arrays.values():
            entry["file"].close()
        shutil.rmtree(self._dir, ignore_errors=True)
