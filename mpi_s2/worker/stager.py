"""Staging units on a worker: decode whole blocks of a source file once and copy them into its raw file.

See :mod:`mpi_s2.planning.stage_plan`. Units of different workers cover disjoint pixels, so they write
disjoint byte ranges of the raw files with ``pwrite``; nothing is shared but the file. Before a worker reports
its units done, it closes the files: on a POSIX file system (local, Lustre, GPFS) written bytes are visible at
once, and NFS's close-to-open consistency makes them visible to any rank that opens the copy later, which every
reader does (windows that read a copy start only once staging has ended). Nothing waits for the disk: the copy
is scratch, removed at the end of the run.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np
from osgeo import gdal

from mpi_s2.errors import OutputError
from mpi_s2.inputs.bands import TileReader
from mpi_s2.inputs.block_counts import DecodeCounter
from mpi_s2.planning.stage_plan import StagedFile, StageUnit

gdal.UseExceptions()

_DTYPES = {"UInt16": np.uint16, "Byte": np.uint8}


class Stager:
    def __init__(self, staged: Sequence[StagedFile], counter: DecodeCounter):
        self.staged = list(staged)
        self.counter = counter
        self._readers: dict[int, TileReader] = {}
        self._fds: dict[int, int] = {}
        self._buffers: dict[str, np.ndarray] = {}

    def _reader(self, k: int) -> TileReader:
        if k not in self._readers:
            f = self.staged[k]
            self._readers[k] = TileReader((f.original,), (f.original,))
        return self._readers[k]

    def _fd(self, k: int) -> int:
        if k not in self._fds:
            self._fds[k] = os.open(self.staged[k].raw, os.O_WRONLY)
        return self._fds[k]

    def _buffer(self, data_type: str, size: int) -> np.ndarray:
        buf = self._buffers.get(data_type)
        if buf is None or buf.size < size:
            buf = self._buffers[data_type] = np.empty(size, dtype=_DTYPES[data_type])
        return buf

    def stage(self, unit: StageUnit) -> tuple[float, float]:
        """Decode and copy ``unit``; return (seconds reading, seconds writing)."""
        w = unit.window
        read_s = write_s = 0.0
        for k in unit.files:
            f = self.staged[k]
            block = self._buffer(f.data_type, w.size)[: w.size].reshape(w.shape)
            t0 = time.perf_counter()
            self._reader(k).read_band(0, w, block)
            self.counter.record(unit.source, f.original, w, f.block_size)
            t1 = time.perf_counter()
            self._write(k, f, w, block)
            read_s += t1 - t0
            write_s += time.perf_counter() - t1
        return read_s, write_s

    def _write(self, k: int, f: StagedFile, w, block: np.ndarray) -> None:
        fd = self._fd(k)
        line = f.grid.width * f.itemsize
        start = w.row_off * line + w.col_off * f.itemsize
        try:
            if w.col_off == 0 and w.width == f.grid.width:
                os.pwrite(fd, block.data.cast("B"), start)
            else:
                for r in range(w.height):
                    os.pwrite(fd, block[r].data.cast("B"), start + r * line)
        except OSError as exc:
            raise OutputError(f"{f.raw}: writing the staged copy of {f.original} failed: {exc.strerror}") from None

    def close(self) -> None:
        """Close the copies written so far: what they hold is then visible to every rank that opens them."""
        fds, self._fds = self._fds, {}
        for k, fd in fds.items():
            try:
                os.close(fd)
            except OSError as exc:
                raise OutputError(f"{self.staged[k].raw}: writing the staged copy failed: {exc.strerror}") from None
