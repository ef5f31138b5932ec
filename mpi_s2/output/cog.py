"""The writer's side of ``--cog``: a Cloud-Optimized GeoTIFF assembled from tiles the workers encoded.

A COG puts every IFD (the main image's, then each overview's, largest first) at the start of the file, then
the tile data of the smallest overview, of the next larger one, ..., and the full resolution last, so that a
reader fetching ranges over HTTP gets the whole structure with its first request. The overviews are known
only once every window is done, so the writer keeps what arrives in two scratch files beside the output:

* ``.NAME.partial.tiles``: encoded tiles (full resolution and the levels workers encode), appended as they
  arrive, with an in-memory index (level, tile) -> (offset, size);
* ``.NAME.partial.levels``: the coarse levels (window shares smaller than a tile), as raw pixels placed by the
  writer, then cut into strips that ranks encode in parallel (:meth:`CogAssembler.coarse_strips`).

:meth:`CogAssembler.write` then has tifffile write the IFDs with empty tile indexes (tag values GDAL takes
from a template it makes, as for the plain GeoTIFF), appends the tiles level by level with in-kernel copies
(``copy_file_range``), each level in row-major order, and fills in each IFD's tile index in place. The
scratch files are removed when the file is complete; it is renamed into place by :meth:`commit`.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

import numpy as np
import tifffile

from mpi_s2 import __version__
from mpi_s2.errors import OutputError
from mpi_s2.output.overviews import coarse_strips, level_size, level_window
from mpi_s2.output.tiff_assembly import geotiff_template
from mpi_s2.output.tiles import RAW_PIECE, TileEntry, TileLayout, needs_bigtiff, tile_size
from mpi_s2.output.writer import OutputSpec, partial_path, remove_partial, spool_path
from mpi_s2.planning.windows import Window

#: The GDAL nodata tag, repeated on overview IFDs.
NODATA_TAG = 42113
_COPY_CHUNK = 1 << 30


def _copy_range(src: int, dst: int, offset: int, size: int, dst_offset: int) -> None:
    """Copy ``size`` bytes from ``src`` at ``offset`` to ``dst`` at ``dst_offset``, in the kernel when it can."""
    while size:
        try:
            done = os.copy_file_range(src, dst, min(size, _COPY_CHUNK), offset, dst_offset)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            data = os.pread(src, min(size, _COPY_CHUNK), offset)
            done = os.pwrite(dst, data, dst_offset)
        if done <= 0:
            raise OSError(errno.EIO, "short copy")
        offset, dst_offset, size = offset + done, dst_offset + done, size - done


class CogAssembler:
    """Collects a COG's tiles in any order and writes the file, overviews before the full resolution.

    ``levels`` overview levels; levels 1 .. ``encoded_levels`` arrive encoded from the workers, coarser levels
    arrive as raw window shares (:data:`~mpi_s2.output.tiles.RAW_PIECE`).
    """

    def __init__(self, spec: OutputSpec, windows: Sequence[Window], levels: int, encoded_levels: int):
        self.spec = spec
        self.windows = windows
        self.levels = levels
        self.encoded_levels = encoded_levels
        self.tile = tile_size(spec.creation_options)
        width, height = spec.grid.size
        self.sizes = [level_size(width, height, level) for level in range(levels + 1)]
        self.layouts = [TileLayout(w, h, self.tile) for w, h in self.sizes]
        self.bigtiff = needs_bigtiff(width, height, spec.band_count, spec.creation_options, levels)
        self._tmp = partial_path(spec.path)
        self._template = geotiff_template(spec)
        # (offset in the tiles spool, size) per tile of each level; size -1: not arrived
        self._index = [np.full((layout.count, 2), -1, dtype=np.int64) for layout in self.layouts]
        try:
            self._spool = open(spool_path(spec.path, "tiles"), "wb")
            self._spool_end = 0
            self._coarse = self._coarse_rasters()
        except OSError as exc:
            self.discard()
            raise OutputError(f"{spec.path}: cannot create scratch files: {exc.strerror or exc}") from None

    def _coarse_rasters(self) -> dict[int, np.ndarray]:
        """Zero-filled ``(bands, rows, cols)`` rasters of the coarse levels, in one scratch file."""
        bands = self.spec.band_count
        levels = range(self.encoded_levels + 1, self.levels + 1)
        total = sum(bands * self.sizes[lv][0] * self.sizes[lv][1] for lv in levels)
        if not total:
            return {}
        store = np.memmap(spool_path(self.spec.path, "levels"), dtype=np.uint8, mode="w+", shape=(total,))
        rasters, start = {}, 0
        for level in levels:
            w, h = self.sizes[level]
            rasters[level] = store[start: start + bands * w * h].reshape(bands, h, w)
            start += bands * w * h
        return rasters

    def add(self, window_index: int, entries: list[TileEntry]) -> None:
        """A window's message: encoded tiles are spooled, raw coarse-level shares placed."""
        for level, number, data in entries:
            if number == RAW_PIECE:
                share = level_window(self.windows[window_index], level)
                rows, cols = share.toslices()
                self._coarse[level][:, rows, cols] = np.frombuffer(data, dtype=np.uint8).reshape(
                    self.spec.band_count, share.height, share.width)
            else:
                self.add_tile(level, number, data)

    def add_tile(self, level: int, number: int, data: bytes | np.ndarray) -> None:
        if self._index[level][number, 1] >= 0:
            raise OutputError(f"{self.spec.path}: tile {number} of level {level} arrived twice")
        size = len(memoryview(data).cast("B"))
        try:
            self._spool.write(data)
        except OSError as exc:
            raise OutputError(f"{self.spec.path}: writing the GeoTIFF failed: {exc.strerror or exc}") from None
        self._index[level][number] = (self._spool_end, size)
        self._spool_end += size

    def coarse_strips(self) -> list[tuple[int, int, int]]:
        """The coarse levels' strips to encode: ``(level, row_off, rows)``, one tile row each."""
        return coarse_strips(self.sizes[1:], self.encoded_levels + 1, self.tile) if self._coarse else []

    def strip_pixels(self, level: int, row: int, rows: int) -> np.ndarray:
        return np.ascontiguousarray(self._coarse[level][:, row: row + rows, :])

    def write(self) -> None:
        """Write the whole file under the temporary name (every tile has arrived)."""
        try:
            self._spool.close()
            self._write_structure()
            with open(spool_path(self.spec.path, "tiles"), "rb") as src, open(self._tmp, "r+b") as dst:
                end = os.fstat(dst.fileno()).st_size
                placed = []
                for level in range(self.levels, -1, -1):  # smallest overview first, full resolution last
                    offsets = np.zeros(self.layouts[level].count, dtype=np.int64)
                    sizes = np.maximum(self._index[level][:, 1], 0)
                    for number in np.flatnonzero(sizes).tolist():
                        _copy_range(src.fileno(), dst.fileno(), int(self._index[level][number, 0]),
                                    int(sizes[number]), end)
                        offsets[number] = end
                        end += int(sizes[number])
                    placed.append((level, offsets, sizes))
            self._fill_indexes(placed)
        except OSError as exc:
            raise OutputError(f"{self.spec.path}: writing the GeoTIFF failed: {exc.strerror or exc}") from None
        finally:
            self._remove_scratch()

    def _write_structure(self) -> None:
        """Every IFD, with all tiles empty: tifffile writes the IFDs and their tag data one after another."""
        t = self._template
        nodata = [tag for tag in t["extratags"] if tag[0] == NODATA_TAG]
        bands = self.spec.band_count
        with tifffile.TiffWriter(self._tmp, bigtiff=self.bigtiff) as tw:
            for level, (w, h) in enumerate(self.sizes):
                tw.write(data=iter([b""] * self.layouts[level].count), shape=(h, w, bands), dtype=np.uint8,
                         tile=(self.tile[1], self.tile[0]), photometric="rgb", planarconfig="contig",
                         extrasamples=["unassalpha"] if bands == 4 else None,
                         compression="ADOBE_DEFLATE" if t["compression"] != 1 else None,
                         predictor=t["predictor"] == 2, extratags=t["extratags"] if level == 0 else nodata,
                         metadata=None, software=f"mpi_s2 {__version__}" if level == 0 else None,
                         subfiletype=1 if level else 0)

    def _fill_indexes(self, placed: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
        with tifffile.TiffFile(self._tmp, mode="r+b") as tf:
            pages = list(tf.pages)
            if len(pages) != self.levels + 1:
                raise OutputError(f"{self.spec.path}: expected {self.levels + 1} IFDs, wrote {len(pages)}")
            for level, offsets, sizes in placed:
                page = pages[level]
                page.tags["TileOffsets"].overwrite(offsets.tolist())
                page.tags["TileByteCounts"].overwrite(sizes.tolist())
                if self._template["compression"] != 1:
                    page.tags["Compression"].overwrite(self._template["compression"])

    def _remove_scratch(self) -> None:
        self._coarse = {}
        for kind in ("tiles", "levels"):
            try:
                os.unlink(spool_path(self.spec.path, kind))
            except OSError:
                pass

    def commit(self) -> None:
        try:
            os.replace(self._tmp, self.spec.path)
        except OSError as exc:
            self.discard()
            raise OutputError(f"{self.spec.path}: writing the GeoTIFF failed: {exc.strerror}") from None

    def discard(self) -> None:
        spool = getattr(self, "_spool", None)
        if spool is not None:
            spool.close()
        self._coarse = {}
        remove_partial(self.spec.path)
