"""The writer's side of worker-encoded tiles: a tiled GeoTIFF (or COG) assembled from tiles arriving in any
order, and a run that can be resumed after it was killed.

* **GeoTIFF**: tifffile first writes the file's structure with every tile empty (the IFD, its tag values and a
  zeroed tile index); each arriving tile is then appended, as it comes, and the tile index is filled in place at
  the end. No byte is copied twice.
* **COG** (``levels`` > 0): every IFD must come first and the overviews' data before the full resolution, which
  is only known at the end: tiles are appended to a scratch file (``.NAME.partial.tiles``) as they come, coarse
  overview levels assembled in ``.NAME.partial.levels`` (:mod:`mpi_s2.output.coarse_levels`); at the end the
  structure is written and the tiles copied in the kernel (``copy_file_range``), smallest level first, each in
  row-major order.

Everything GDAL would write around the pixels (georeferencing, GDAL metadata and nodata, colour interpretation,
codec and predictor tags) comes from a one-tile template GDAL makes with the same creation options, so GDAL
reads the result as it reads its own. Tiles no window covers stay sparse (offset and size 0, read as 0).

With a ``fingerprint`` the run keeps a journal (:mod:`mpi_s2.output.journal`) of windows whose tiles are
durably written; ``resume=True`` reopens a killed run's files, checks the fingerprint, drops bytes the journal
does not vouch for, and reports the windows already done in :attr:`TiffAssembler.done`. On a stop,
:meth:`TiffAssembler.commit_placed` (called by the signal watcher's thread) syncs and journals every window
placed so far, so that ``--resume`` reuses them.
"""

from __future__ import annotations

import errno
import io
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO

import numpy as np
import tifffile
from osgeo import gdal

from mpi_s2 import __version__
from mpi_s2.errors import OutputError
from mpi_s2.output.coarse_levels import CoarseLevels
from mpi_s2.output.fingerprint import DIGEST_DOMAIN, DIGEST_ITEM, describe_mismatch
from mpi_s2.output.journal import Journal
from mpi_s2.output.overviews import coarse_strips, level_size
from mpi_s2.output.paths import partial_path, remove_partial, spool_path
from mpi_s2.output.plan import OutputSpec
from mpi_s2.output.profiles import as_gdal_list
from mpi_s2.output.tile_messages import RAW_PIECE, TileEntry
from mpi_s2.windows import TileLayout, Window, tile_size

gdal.UseExceptions()

#: Tags copied from GDAL's template: GeoTIFF keys and parameters, GDAL's metadata and nodata.
GEO_TAGS = (33550, 33922, 34264, 34735, 34736, 34737, 42112, 42113)
NODATA_TAG = 42113
_INTERPRETATIONS = (gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand, gdal.GCI_AlphaBand)
_COPY_CHUNK = 1 << 30


def geotiff_template(spec: OutputSpec) -> dict:
    """What GDAL writes around the pixels for ``spec``: read back from a one-tile file it makes."""
    path = f"/vsimem/mpi_s2_template_{os.getpid()}.tif"
    tx, ty = tile_size(spec.creation_options)
    options = {k: v for k, v in spec.creation_options.items() if k != "BIGTIFF"}
    ds = gdal.GetDriverByName("GTiff").Create(path, tx, ty, spec.band_count, gdal.GDT_Byte,
                                              options=as_gdal_list(options))
    ds.SetGeoTransform(spec.grid.geotransform)
    if spec.grid.crs_wkt:
        ds.SetProjection(spec.grid.crs_wkt)
    ds.SetMetadata(dict(spec.metadata))
    if spec.fingerprint_digest:
        ds.SetMetadataItem(DIGEST_ITEM, spec.fingerprint_digest, DIGEST_DOMAIN)
    for i in range(spec.band_count):
        band = ds.GetRasterBand(i + 1)
        band.SetColorInterpretation(_INTERPRETATIONS[i])
        if spec.band_count == 3:
            band.SetNoDataValue(0)
    ds = None
    fh = gdal.VSIFOpenL(path, "rb")
    try:
        gdal.VSIFSeekL(fh, 0, 2)
        size = gdal.VSIFTellL(fh)
        gdal.VSIFSeekL(fh, 0, 0)
        data = bytes(gdal.VSIFReadL(1, size, fh))
    finally:
        gdal.VSIFCloseL(fh)
        gdal.Unlink(path)
    with tifffile.TiffFile(io.BytesIO(data)) as tf:
        tags = tf.pages[0].tags
        return {
            "extratags": [(t.code, t.dtype, t.count, t.value, True) for t in tags.values() if t.code in GEO_TAGS],
            "compression": int(tags.valueof(259, 1)),
            "predictor": int(tags.valueof(317, 1)),
        }


def _copy_range(src: int, dst: int, offset: int, size: int, dst_offset: int) -> None:
    """Copy ``size`` bytes from ``src`` at ``offset`` to ``dst`` at ``dst_offset``, in the kernel when it can."""
    while size:
        try:
            done = os.copy_file_range(src, dst, min(size, _COPY_CHUNK), offset, dst_offset)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            done = os.pwrite(dst, os.pread(src, min(size, _COPY_CHUNK), offset), dst_offset)
        if done <= 0:
            raise OSError(errno.EIO, "short copy")
        offset, dst_offset, size = offset + done, dst_offset + done, size - done


def _fail(spec: OutputSpec, exc: OSError) -> OutputError:
    return OutputError(f"{spec.path}: writing the GeoTIFF failed: {exc.strerror or exc}")


class TiffAssembler:
    """Collects encoded tiles (and, for a COG, coarse overview shares) and writes ``spec``'s file.

    ``levels`` overview levels (0: a plain GeoTIFF); levels 1 .. ``encoded_levels`` arrive encoded, coarser
    ones as raw window shares (:data:`~mpi_s2.output.tile_encoding.RAW_PIECE`).
    """

    def __init__(self, spec: OutputSpec, windows: Sequence[Window], *, levels: int = 0, encoded_levels: int = 0,
                 fingerprint: dict[str, Any] | None = None, resume: bool = False):
        self.spec = spec
        self.windows = windows
        self.levels, self.encoded_levels = levels, encoded_levels
        self.tile = tile_size(spec.creation_options)
        width, height = spec.grid.size
        self.sizes = [level_size(width, height, level) for level in range(levels + 1)]
        self.layouts = [TileLayout(w, h, self.tile) for w, h in self.sizes]
        self.bigtiff = needs_bigtiff(width, height, spec.band_count, spec.creation_options, levels)
        self._tmp = partial_path(spec.path)
        self._data_path = self._tmp if levels == 0 else spool_path(spec.path, "tiles")
        self._journal_path = spool_path(spec.path, "journal")
        self._template = geotiff_template(spec)
        # per level, per tile: (offset in the data file, size); size -1: not arrived
        self._index = [np.full((layout.count, 2), -1, dtype=np.int64) for layout in self.layouts]
        self.done: set[int] = set()
        self._journal: Journal | None = None
        self._data: BinaryIO | None = None
        self._coarse: CoarseLevels | None = None
        self._lock = threading.Lock()  # a window is placed whole before a stop's commit looks at it
        if resume:
            self._resume(fingerprint)
        else:
            self._create(fingerprint)

    # -- opening -------------------------------------------------------------------------------------------
    def _create(self, fingerprint: dict[str, Any] | None) -> None:
        remove_partial(self.spec.path)  # a previous run's leftovers: this run starts over
        try:
            if self.levels == 0:
                self._write_structure()
            else:
                open(self._data_path, "wb").close()
            self._data = open(self._data_path, "r+b")
            self._end = self._data.seek(0, os.SEEK_END)
            self._coarse = self._coarse_levels(create=True)
            if fingerprint is not None:
                self._journal = Journal.create(self._journal_path, fingerprint, self._end)
        except OSError as exc:
            self.discard()
            raise OutputError(f"{self.spec.path}: cannot create the output: {exc.strerror or exc}") from None

    def _coarse_levels(self, create: bool) -> CoarseLevels | None:
        if self.levels <= self.encoded_levels:
            return None
        return CoarseLevels(spool_path(self.spec.path, "levels"), self.sizes, self.encoded_levels,
                            self.spec.band_count, create=create)

    def _resume(self, fingerprint: dict[str, Any] | None) -> None:
        """Reopen a killed run's files; nothing is changed unless it matches this run."""
        where = f"{self.spec.path}: --resume"
        if not os.path.exists(self._journal_path):
            raise OutputError(f"{where}: no partial run to resume (no {os.path.basename(self._journal_path)} "
                              f"beside it); run without --resume")
        if fingerprint is None:
            raise OutputError(f"{where}: this run keeps no journal")
        stored, records = Journal.read(self._journal_path)
        mismatch = describe_mismatch(stored["fingerprint"], fingerprint)
        if mismatch:
            raise OutputError(f"{where}: {mismatch}; the partial run is left as it is")
        end = int(stored["data_start"])
        for window, tiles in records:
            for level, number, offset, size in tiles:
                self._index[level][number] = (offset, size)
                end = max(end, offset + size)
            self.done.add(window)
        try:
            if os.path.getsize(self._data_path) < end:
                raise OutputError(f"{where}: {self._data_path} is shorter than its journal says; run without "
                                  f"--resume")
            self._coarse = self._coarse_levels(create=False)
            self._data = open(self._data_path, "r+b")
            self._data.truncate(end)  # bytes of windows the journal does not vouch for
            self._end = self._data.seek(end)
            self._journal = Journal.reopen(self._journal_path, stored, self._sync)
        except OSError as exc:
            raise OutputError(f"{where}: cannot reopen the partial run: {exc.strerror or exc}") from None

    # -- arriving tiles ------------------------------------------------------------------------------------
    def add(self, window_index: int, entries: list[TileEntry]) -> None:
        """A window's tiles and shares; journaled (group commit) once durably written."""
        with self._lock:
            tiles = []
            for level, number, data in entries:
                if number == RAW_PIECE:
                    assert self._coarse is not None
                    self._coarse.place(level, self.windows[window_index], data)
                else:
                    tiles.append([level, number, *self.add_tile(level, number, data)])
            self.done.add(window_index)
            if self._journal is not None:
                self._journal.record(window_index, tiles)
        if self._journal is not None:
            try:
                self._journal.maybe_commit(self._sync)
            except OSError as exc:
                raise _fail(self.spec, exc) from None

    def commit_placed(self, timeout: float = 0.25) -> int:
        """A stop, step 1: journal every window placed so far, now, without a sync (any thread; thread-safe).

        Waits up to ``timeout`` seconds for a window being placed to be placed whole (it then counts too);
        a window still being placed after that is left out, as the journal only names windows placed whole.
        Returns the number of windows this call journalled. :meth:`sync_placed` makes them durable."""
        if self._journal is None:
            return 0
        locked = self._lock.acquire(timeout=timeout)
        try:
            return self._journal.stop_record()
        finally:
            if locked:
                self._lock.release()

    def sync_placed(self) -> None:
        """A stop, step 2 (the stopped writer's last step): sync what :meth:`commit_placed` journalled."""
        if self._journal is not None:
            self._journal.stop_sync(self._sync)

    def _opened(self) -> BinaryIO:
        """The data file (open from the constructor until the end)."""
        assert self._data is not None
        return self._data

    def add_tile(self, level: int, number: int, data: bytes | np.ndarray) -> tuple[int, int]:
        """Append one encoded tile; return its (offset, size) in the data file."""
        if self._index[level][number, 1] >= 0:
            raise OutputError(f"{self.spec.path}: tile {number} of level {level} arrived twice")
        view = memoryview(data).cast("B")  # type: ignore[arg-type]  # numpy 1.24 predates typing.Buffer
        try:
            self._opened().write(view)
            self._opened().flush()  # in the file (page cache) before the journal's thread may sync it
        except OSError as exc:
            raise _fail(self.spec, exc) from None
        offset, size = self._end, len(view)
        self._index[level][number] = (offset, size)
        self._end += size
        return offset, size

    def _sync(self) -> None:
        """Make what the journal is about to name durable (the journal's thread; appends go on meanwhile)."""
        data = self._opened()
        if data.closed:  # a stop while the file is being finished: sync it by its name
            fd = os.open(self._data_path, os.O_RDONLY)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        else:
            os.fdatasync(data.fileno())
        if self._coarse is not None:
            self._coarse.flush()

    # -- the coarse overview levels ------------------------------------------------------------------------
    def coarse_strips(self) -> list[tuple[int, int, int]]:
        """The coarse levels' strips to encode: ``(level, row_off, rows)``, one tile row each."""
        return coarse_strips(self.sizes[1:], self.encoded_levels + 1, self.tile) if self._coarse else []

    def strip_pixels(self, level: int, row: int, rows: int) -> np.ndarray:
        assert self._coarse is not None
        return self._coarse.strip(level, row, rows)

    # -- finishing -----------------------------------------------------------------------------------------
    def write(self) -> None:
        """Complete the file under the temporary name (every tile has arrived)."""
        try:
            if self._journal is not None:
                self._journal.wait()
            self._opened().flush()
            if self.levels == 0:
                self._opened().close()
                placed = [(0, np.maximum(self._index[0][:, 0], 0), np.maximum(self._index[0][:, 1], 0))]
            else:
                placed = self._copy_levels()
            self._fill_indexes(placed)
        except OSError as exc:
            raise _fail(self.spec, exc) from None

    def _copy_levels(self) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """COG: structure first, then the tiles, smallest level first, each in row-major order."""
        self._write_structure()
        placed = []
        with open(self._tmp, "r+b") as dst:
            end = os.fstat(dst.fileno()).st_size
            for level in range(self.levels, -1, -1):
                offsets = np.zeros(self.layouts[level].count, dtype=np.int64)
                sizes = np.maximum(self._index[level][:, 1], 0)
                for number in np.flatnonzero(sizes).tolist():
                    _copy_range(self._opened().fileno(), dst.fileno(), int(self._index[level][number, 0]),
                                int(sizes[number]), end)
                    offsets[number] = end
                    end += int(sizes[number])
                placed.append((level, offsets, sizes))
        return placed

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
                raise OutputError(f"{self.spec.path}: expected {self.levels + 1} IFDs, found {len(pages)}")
            for level, offsets, sizes in placed:
                page = pages[level]
                page.tags["TileOffsets"].overwrite(offsets.tolist())
                page.tags["TileByteCounts"].overwrite(sizes.tolist())
                if self._template["compression"] != 1:
                    page.tags["Compression"].overwrite(self._template["compression"])

    def commit(self) -> None:
        """Rename the complete file into place; remove the journal and scratch files."""
        try:
            os.replace(self._tmp, self.spec.path)
        except OSError as exc:
            self.discard()
            raise _fail(self.spec, exc) from None
        self._close()
        remove_partial(self.spec.path)

    def _close(self) -> None:
        if self._journal is not None:
            self._journal.close()
        if self._data is not None and not self._data.closed:
            try:
                self._data.close()
            except OSError:
                pass
        if self._coarse is not None:
            self._coarse.close()
            self._coarse = None

    def discard(self) -> None:
        """Drop the unfinished file, the journal and the scratch files."""
        self._close()
        remove_partial(self.spec.path)


#: Classic TIFF addresses 4 GiB; what may pass it (pixels, plus the worst case of a codec's expansion and the
#: tile index) is written as BigTIFF.
CLASSIC_TIFF_LIMIT = 1 << 32


def needs_bigtiff(width: int, height: int, bands: int, options: Mapping[str, str], levels: int = 0) -> bool:
    """BIGTIFF=YES/NO as asked; otherwise BigTIFF whenever the file may pass 4 GiB, compressed or not.

    A compressed tile may come out larger than raw (incompressible pixels): DEFLATE, LZW and ZSTD stay within
    1 % plus a few bytes, which the bound adds, with the tile index and the header's room. ``levels`` overview
    levels (each half the size of the previous) count too.
    """
    asked = options.get("BIGTIFF", "IF_SAFER").upper()
    if asked in ("YES", "TRUE", "ON"):
        return True
    if asked in ("NO", "FALSE", "OFF"):
        return False
    tx, ty = tile_size(options)
    tiles = 0
    for level in range(levels + 1):
        factor = 1 << level
        tiles += TileLayout(-(-width // factor), -(-height // factor), (tx, ty)).count
    raw = tiles * tx * ty * bands  # edge tiles are stored whole
    worst = raw + raw // 100 + tiles * (64 + 16) + (levels + 1) * 4096 + (1 << 20)
    return worst >= CLASSIC_TIFF_LIMIT


