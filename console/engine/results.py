"""Result arrays of one task on disk: ``.npy`` memmaps written chunk by chunk, then a summary.

Memory stays flat however large the result: a chunk's rows go straight into the
memory-mapped file, and ``export_npz`` streams the arrays into the ``.npz`` users fetch.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from console.engine.statedir import make_private_dir, write_private_file

OK_FILE = "ok.npy"
RESULT_FILE = "result.npy"
NORMS_FILE = "norms.npy"
SUMMARY_FILE = "summary.json"
NPZ_FILE = "result.npz"


_FSYNC_WRITES_MAPPED_PAGES = sys.platform.startswith("linux")
"""On Linux a shared mapping's pages are the file's page cache, so fsync makes them durable."""


class ResultStore:
    """The ``ok`` flags and result values of one task, as ``.npy`` files written in place.

    Values go to disk with ``pwrite`` at their rows' offsets, so they sit in the page
    cache, not in the front-end's memory, however large the result. The ``ok`` flags (a
    byte an item) are a small memory map the front-end also reads.
    """

    def __init__(
        self,
        folder: Path,
        *,
        count: int,
        item_shape: tuple[int, ...],
        dtype: np.dtype,
        return_mode: str,
    ) -> None:
        self.folder = make_private_dir(folder)
        values_file = RESULT_FILE if return_mode == "full" else NORMS_FILE
        if return_mode == "full":
            shape, values_dtype = (count, *item_shape), np.dtype(dtype)
        else:
            shape, values_dtype = (count,), np.dtype(np.float64)
        self.ok = _open(self.folder / OK_FILE, np.dtype(bool), (count,))
        self.values = _RowFile(self.folder / values_file, values_dtype, shape)

    def write(self, start: int, stop: int, ok: np.ndarray, values: np.ndarray) -> None:
        """Store the results of items ``start..stop-1``."""
        self.values.write(start, values)
        self.ok[start:stop] = ok

    def fail(self, start: int, stop: int) -> None:
        """Mark items ``start..stop-1`` failed: ``ok`` false and NaN values."""
        self.values.write(start, np.full((stop - start, *self.values.shape[1:]), np.nan, self.values.dtype))
        self.ok[start:stop] = False

    def flush(self) -> None:
        """Make every write durable on disk."""
        self.values.fsync()
        if not _FSYNC_WRITES_MAPPED_PAGES:
            self.ok.flush()  # msync: it holds the interpreter lock while the disk works
        _fsync(self.ok.filename)

    def close(self) -> None:
        self.flush()
        self.values.close()
        del self.ok


class _RowFile:
    """An ``.npy`` file whose rows are written in place with ``pwrite``."""

    def __init__(self, path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.dtype, self.shape = dtype, shape
        header = _open(path, dtype, shape)  # creates the file with its header, or checks it
        self.offset = header.offset
        del header
        self.row_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
        self._fd = os.open(path, os.O_RDWR)

    def write(self, start: int, rows: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(rows, dtype=self.dtype)).cast("B")
        position = self.offset + start * self.row_bytes
        while data:
            written = os.pwrite(self._fd, data, position)
            data, position = data[written:], position + written

    def fsync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> np.memmap:
    """Open ``path`` for update, creating it when missing or of another shape."""
    if path.exists():
        array = np.lib.format.open_memmap(path, mode="r+")
        if array.shape == shape and array.dtype == dtype:
            return array
        del array
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    os.chmod(path, 0o600)
    return array


NPY_HEADER_BYTES = 4096
"""At most what an ``.npy`` header takes on disk (it is padded to 64 bytes; a block is more)."""


def result_nbytes(*, count: int, item_shape: tuple[int, ...], dtype: np.dtype, return_mode: str) -> int:
    """Bytes a task's result files take once every item is stored: ``ok`` flags and values."""
    if return_mode == "full":
        values = count * int(np.prod(item_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    else:
        values = count * np.dtype(np.float64).itemsize
    return count + values + 2 * NPY_HEADER_BYTES


def unwritten_bytes(folder: Path) -> int:
    """Bytes a task's result files will still take on disk: they are sparse until written."""
    total = 0
    for name in (OK_FILE, RESULT_FILE, NORMS_FILE):
        try:
            info = os.stat(folder / name)
        except OSError:
            continue
        total += max(0, info.st_size - info.st_blocks * 512)
    return total


def verify_result_files(folder: Path, *, count: int, item_shape: tuple[int, ...], dtype: np.dtype,
                        return_mode: str) -> str:
    """Why the result files of a task cannot be trusted, or ``""`` when they are whole.

    Used on resume for a task whose journal lists stored ranges: their values must still
    be there, in files of the task's shape.
    """
    values_file = RESULT_FILE if return_mode == "full" else NORMS_FILE
    expected = {OK_FILE: ((count,), np.dtype(bool))}
    if return_mode == "full":
        expected[values_file] = ((count, *item_shape), np.dtype(dtype))
    else:
        expected[values_file] = ((count,), np.dtype(np.float64))
    for name, (shape, want_dtype) in expected.items():
        path = folder / name
        try:
            array = np.lib.format.open_memmap(path, mode="r")
        except FileNotFoundError:
            return f"result file {path} is missing"
        except (OSError, ValueError, EOFError) as exc:
            return f"result file {path} is damaged: {exc}"
        found = (array.shape, array.dtype)
        del array
        if found != (shape, want_dtype):
            return f"result file {path} holds {found[1]}{list(found[0])}, not {want_dtype}{list(shape)}"
    return ""


def discard_results(folder: Path) -> None:
    """Remove a task's result files (on resume, when the journal trusts none of their rows)."""
    for name in (OK_FILE, RESULT_FILE, NORMS_FILE, NPZ_FILE):
        (folder / name).unlink(missing_ok=True)


def write_summary(folder: Path, summary: dict) -> None:
    """Write the task's summary JSON (atomically)."""
    write_private_file(folder / SUMMARY_FILE, (json.dumps(summary, indent=2) + "\n").encode())


def export_npz(folder: Path, target: Path | None = None) -> Path:
    """Write the ``.npz`` users download: ``ok`` and ``result`` or ``norms``.

    Without ``target`` it is built once, inside the task folder, and kept for later
    downloads; with one it is written straight there (one copy of a large result, not two).
    Each call writes its own temporary file and renames it into place, so downloads that
    race to build it each get a whole file, and a reader never sees a half-written one.
    """
    if target is None:
        target = folder / NPZ_FILE
        if target.exists():
            return target
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(name)
    try:
        with open(fd, "wb") as out, zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED,
                                                    allowZip64=True) as archive:
            for arcname, filename in (("ok", OK_FILE), ("result", RESULT_FILE), ("norms", NORMS_FILE)):
                source = folder / filename
                if source.exists():
                    archive.write(source, arcname=arcname + ".npy")
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
