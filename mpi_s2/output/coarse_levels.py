"""The coarse levels of a Cloud-Optimized GeoTIFF, assembled by the writer.

A window's share of a coarse overview level (smaller than a tile: level 2 of a 1024 window with 512 tiles is
256 px) arrives raw from the worker that composed it (:mod:`mpi_s2.output.overviews`) and is placed here, in a
zero-filled scratch file beside the output (``.NAME.partial.levels``, memory-mapped, so the writer's memory does
not grow with the mosaic). Once every window is in, the levels are cut into strips of one tile row that the
workers encode (:mod:`mpi_s2.parallel.coarse_strips`). The file is flushed with the tiles before the journal
names a window, so that a resumed run finds the shares of the windows it reuses.
"""

from __future__ import annotations

import os

import numpy as np

from mpi_s2.errors import OutputError
from mpi_s2.output.overviews import level_window
from mpi_s2.windows import Window


class CoarseLevels:
    """``(bands, rows, cols)`` rasters of levels ``encoded_levels + 1`` .. the last, in one scratch file."""

    def __init__(self, path: str, sizes: list[tuple[int, int]], encoded_levels: int, bands: int, create: bool):
        self.bands = bands
        levels = range(encoded_levels + 1, len(sizes))
        total = sum(bands * sizes[level][0] * sizes[level][1] for level in levels)
        if not create:
            try:
                if os.path.getsize(path) != total:
                    raise OutputError(f"{path}: not the size the partial run's overview levels need")
            except OSError as exc:
                raise OutputError(f"{path}: cannot reopen the partial run's overview levels: {exc.strerror}") from None
        if create:  # reserve the space now: a page of a sparse mapping that finds the disk full is a SIGBUS
            with open(path, "wb") as fh:
                os.posix_fallocate(fh.fileno(), 0, max(1, total))
        self._store = np.memmap(path, dtype=np.uint8, mode="r+", shape=(total,))
        self._rasters: dict[int, np.ndarray] = {}
        start = 0
        for level in levels:
            w, h = sizes[level]
            self._rasters[level] = self._store[start: start + bands * w * h].reshape(bands, h, w)
            start += bands * w * h

    def place(self, level: int, window: Window, data) -> None:
        """``window``'s share of ``level`` (raw ``(bands, rows, cols)`` bytes)."""
        share = level_window(window, level)
        rows, cols = share.toslices()
        self._rasters[level][:, rows, cols] = np.frombuffer(data, dtype=np.uint8).reshape(
            self.bands, share.height, share.width)

    def strip(self, level: int, row: int, rows: int) -> np.ndarray:
        return np.ascontiguousarray(self._rasters[level][:, row: row + rows, :])

    def flush(self) -> None:
        self._store.flush()

    def close(self) -> None:
        self._rasters = {}
        del self._store  # unmaps the scratch file
