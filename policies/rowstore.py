"""Minute-major arrays that can live in a file: the observation builder's week of history and the status
board's day of minutes.

A `RowStore` is a (rows, n) numpy array (one row per minute, one column per group), so a tick writes one
contiguous row and reads a few. In memory (`directory=None`, training and backtests) it is a plain array. With
a directory (the daemon's state directory, next to the journal) it is a shared mapping of an unnamed file
(O_TMPFILE: no name on disk, gone when the process ends, even after kill -9), with its blocks reserved up
front (`posix_fallocate`: a full disk is found when the store is made, never as a SIGBUS in a tick; a
directory where no such file can be made leaves the array in memory, with one warning per directory). `release()` drops the
process's mapping of every page (madvise MADV_DONTNEED): the data stays in the file and the page cache, which
the kernel may write back and evict, and the next read maps in only what it touches. So the process keeps
resident only the rows one tick reads and writes, whatever the size of the fleet; the values are the same
bytes either way.

Nothing survives a restart: the daemon backfills its history from the sources, as it does without a file.
"""

from __future__ import annotations

import logging
import mmap
import os
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger("fleetpilot")
_warned: set[str] = set()


class RowStore:
    """A (rows, n) array of `dtype` filled with `fill`, in memory or in an unnamed file under `directory`."""

    def __init__(self, rows: int, n: int, dtype: np.dtype | type, fill: float | int = 0, directory: Path | None = None):
        self.shape = (int(rows), int(n))
        dt = np.dtype(dtype)
        self._map: mmap.mmap | None = None
        if directory is None or self.shape[0] * self.shape[1] == 0:
            self.array = np.full(self.shape, fill, dtype=dt)
            return
        size = self.shape[0] * self.shape[1] * dt.itemsize
        try:
            with tempfile.TemporaryFile(dir=directory, prefix="fleetpilot-rows-") as f:
                os.posix_fallocate(f.fileno(), 0, size)
                self._map = mmap.mmap(f.fileno(), size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            if str(directory) not in _warned:
                _warned.add(str(directory))
                log.warning(
                    "no file for the history or the status rings in the state directory; they stay in memory",
                    extra={"directory": str(directory), "error": exc.strerror or str(exc)},
                )
            self.array = np.full(self.shape, fill, dtype=dt)
            return
        # the mapping keeps the file alive after its descriptor is closed
        self.array = np.frombuffer(self._map, dtype=dt).reshape(self.shape)
        if fill != 0:  # fallocate'd blocks read as zeros
            for lo in range(0, self.shape[0], _chunk_rows(self.shape[1] * dt.itemsize)):
                self.array[lo : lo + _chunk_rows(self.shape[1] * dt.itemsize)] = fill
                self.release()

    @property
    def in_file(self) -> bool:
        return self._map is not None

    def release(self) -> None:
        """Drop the process's mapping of the file's pages (a no-op in memory): the values stay, reads map them in
        again. Views of the array stay valid."""
        if self._map is not None:
            self._map.madvise(mmap.MADV_DONTNEED)

    def resident_bytes(self) -> int:
        """Bytes of the array resident in this process: all of it in memory; in a file, its mapped pages
        (/proc/self/smaps), for tests and benchmarks."""
        if self._map is None:
            return int(self.array.nbytes)
        start = self.array.__array_interface__["data"][0]
        return _smaps_rss(start)


def _chunk_rows(row_bytes: int) -> int:
    """Rows per 4 MiB (at least one): the block `RowStore` fills before it releases the pages."""
    return max(1, (4 << 20) // max(row_bytes, 1))


def _smaps_rss(start: int) -> int:
    """The Rss of the mapping that starts at address `start`, from /proc/self/smaps (0 when none is found)."""
    found = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(" ", 1)[0]
        if "-" in head and ":" not in head:
            lo = int(head.split("-", 1)[0], 16)
            found = lo == start
        elif found and line.startswith("Rss:"):
            return int(line.split()[1]) * 1024
    return 0
