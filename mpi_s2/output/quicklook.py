"""A small preview of the result (PNG or JPEG) next to the GeoTIFF, to look at without GIS software.

The preview is the output reduced by an integer ``factor`` (the longest side at most the asked size): each
preview pixel is the mean of the *valid* pixels of its cell of ``factor`` x ``factor`` output pixels, rounded half
up, so nodata never darkens an edge; a cell without valid pixels is transparent (PNG) or black (JPEG).

It is made where the pixels are, as the COG overviews are (pure numpy + GDAL, no MPI here):

* :func:`cell_sums`: a worker, right after composing a window, sums its valid pixels per cell, for every cell the
  window touches (:func:`cell_window`). Windows are not multiples of the factor, so a cell may span several
  windows; each then contributes its part, and the parts add up exactly (integers).
* :class:`QuicklookSums`: the writer adds each window's sums into one ``(4, rows, cols)`` uint64 accumulator
  (R, G, B sums and the count; at most ``4 x size x size x 8`` bytes, whatever the mosaic) and writes the image
  at the end, under a temporary name renamed when complete. Windows a resumed run reuses are read back from the
  finished output, one at a time (:meth:`QuicklookSums.add_file_windows`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
from osgeo import gdal

from mpi_s2.errors import InputError, OutputError
from mpi_s2.output.overviews import valid_pixels
from mpi_s2.windows import Window

gdal.UseExceptions()

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
DEFAULT_SIZE = 1024
#: A window's (or the accumulator's) sums: R, G, B over the valid pixels of each cell, then their count.
SUM_BANDS = 4


def quicklook_format(path: str) -> str:
    """GDAL driver for ``path``'s extension; :class:`InputError` for any other."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise InputError(f"{path}: --quicklook must end in .png or .jpg (got {ext or 'no extension'!r})")
    return FORMATS[ext]


def reduction_factor(width: int, height: int, max_size: int) -> int:
    """The smallest integer factor that brings the longest side to at most ``max_size``."""
    if max_size <= 0:
        raise InputError(f"--quicklook-size must be > 0, got {max_size}")
    return max(1, -(-max(width, height) // max_size))


def cell_window(window: Window, factor: int) -> Window:
    """The cells (in preview pixels) that ``window`` (in output pixels) touches, partly or wholly."""
    col0, row0 = window.col_off // factor, window.row_off // factor
    col1 = -(-(window.col_off + window.width) // factor)
    row1 = -(-(window.row_off + window.height) // factor)
    return Window(col0, row0, col1 - col0, row1 - row0)


def _cell_totals(values: np.ndarray, axis: int, offset: int, factor: int, dtype: type) -> np.ndarray:
    """Sums of ``values`` along ``axis`` per cell of ``factor``, the axis starting ``offset`` pixels into the
    raster: a partial first cell, the whole cells (one reshaped sum, no copy), a partial last cell."""
    size = values.shape[axis]
    head = min((-offset) % factor, size)
    whole = (size - head) // factor * factor
    parts = []

    def part(start: int, stop: int) -> np.ndarray:
        return values[(slice(None),) * axis + (slice(start, stop),)]

    if head:
        parts.append(part(0, head).sum(axis=axis, dtype=dtype, keepdims=True))
    if whole:
        cells = part(head, head + whole)
        shape = (*cells.shape[:axis], whole // factor, factor, *cells.shape[axis + 1:])
        parts.append(cells.reshape(shape).sum(axis=axis + 1, dtype=dtype))
    if head + whole < size:
        parts.append(part(head + whole, size).sum(axis=axis, dtype=dtype, keepdims=True))
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axis)


def cell_sums(block: np.ndarray, window: Window, factor: int) -> np.ndarray:
    """``window``'s part of the quicklook: ``(4, rows, cols)`` uint64 over :func:`cell_window`'s cells.

    ``block``: the window's composed ``(bands, rows, cols)`` uint8 pixels (RGB first; valid as
    :func:`~mpi_s2.output.overviews.valid_pixels` says). Per cell: the sums of R, G and B over the valid pixels of
    the cell that lie in the window, then their count. About 2 ms for a 1024 x 1024 window.
    """
    valid = valid_pixels(block)
    masked = np.empty((SUM_BANDS, *valid.shape), dtype=np.uint8)
    np.multiply(block[:3], valid, out=masked[:3])
    masked[3] = valid
    # rows first (a sum of ``factor`` uint8 rows fits uint16 up to factor 257), then columns, into uint64
    narrow = np.uint16 if factor * 255 <= 0xFFFF else np.uint64
    rows = _cell_totals(masked, 1, window.row_off, factor, narrow)
    return _cell_totals(rows, 2, window.col_off, factor, np.uint64)


class QuicklookSums:
    """The writer's accumulator of the windows' :func:`cell_sums`, and the image they make."""

    def __init__(self, width: int, height: int, max_size: int = DEFAULT_SIZE):
        self.raster_size = (width, height)
        self.factor = reduction_factor(width, height, max_size)
        self.size = (-(-width // self.factor), -(-height // self.factor))
        self.sums = np.zeros((SUM_BANDS, self.size[1], self.size[0]), dtype=np.uint64)

    def add(self, window: Window, sums: bytes | np.ndarray) -> None:
        """Add ``window``'s :func:`cell_sums` (the array, or its bytes as they arrived in a message)."""
        cells = cell_window(window, self.factor)
        expected = SUM_BANDS * cells.height * cells.width
        if isinstance(sums, np.ndarray) and sums.dtype == np.uint64:
            flat = sums.reshape(-1)
        else:
            flat = np.frombuffer(sums, dtype=np.uint64)
        if flat.size != expected:
            raise OutputError(f"quicklook: the sums of window {window} hold {flat.size} values, expected {expected}")
        rows, cols = cells.toslices()
        self.sums[:, rows, cols] += flat.reshape(SUM_BANDS, cells.height, cells.width)

    def add_block(self, window: Window, block: np.ndarray) -> None:
        """Add a composed window's pixels (where they are at hand: raw blocks on the writer, or one rank)."""
        self.add(window, cell_sums(block, window, self.factor))

    def add_file_windows(self, path: str, windows: Iterable[Window]) -> None:
        """Add ``windows`` as the GeoTIFF at ``path`` holds them, read one window at a time (bounded memory)."""
        windows = list(windows)
        if not windows:
            return
        try:
            ds = gdal.Open(path)
            for window in windows:
                block = ds.ReadAsArray(window.col_off, window.row_off, window.width, window.height)
                self.add_block(window, block.reshape(ds.RasterCount, window.height, window.width))
        except RuntimeError as exc:
            raise OutputError(f"{path}: reading windows back for the quicklook failed: {exc}") from None
        finally:
            ds = None

    def image(self, bands: int) -> np.ndarray:
        """``(bands, rows, cols)`` uint8: per cell, ``floor(sum / count + 0.5)`` in integers, 0 where count is 0;
        a 4th band (alpha) is 255 where any pixel of the cell is valid."""
        counts = self.sums[3]
        has = counts > 0
        safe = np.where(has, counts, 1)
        out = np.zeros((bands, *counts.shape), dtype=np.uint8)
        for b in range(3):  # (2 sum + count) // (2 count) == floor(sum / count + 0.5); one band at a time
            out[b] = np.where(has, (2 * self.sums[b] + safe) // (2 * safe), 0)
        if bands == 4:
            out[3] = np.where(has, 255, 0)
        return out

    def write(self, path: str) -> tuple[int, int]:
        """Write the preview to ``path`` (PNG with alpha, or JPEG); return its (width, height)."""
        driver = quicklook_format(path)
        write_image(path, self.image(4 if driver == "PNG" else 3))
        return self.size


#: GDAL's creation options per format. PNG: deflate level 1, not the default 6: 4x faster (0.1 s for a 1000 x
#: 1000 RGBA preview, on the job's critical path) for a file about a quarter larger; the pixels are the same.
CREATION_OPTIONS = {"PNG": ["WORLDFILE=NO", "ZLEVEL=1"], "JPEG": ["QUALITY=90"]}


def write_image(path: str, image: np.ndarray) -> None:
    """Write ``(bands, rows, cols)`` uint8 ``image`` to ``path`` (PNG, or JPEG at quality 90) under a temporary
    name renamed when complete; :class:`OutputError` in one line when it fails, leaving nothing behind."""
    driver = quicklook_format(path)
    bands, height, width = image.shape
    mem = gdal.GetDriverByName("MEM").Create("", width, height, bands, gdal.GDT_Byte)
    for b in range(bands):
        mem.GetRasterBand(b + 1).WriteArray(image[b])
    if bands == 4:
        mem.GetRasterBand(4).SetColorInterpretation(gdal.GCI_AlphaBand)
    head, tail = os.path.split(os.path.abspath(path))
    tmp = os.path.join(head, f".{tail}.partial")
    try:
        gdal.GetDriverByName(driver).CreateCopy(tmp, mem, options=CREATION_OPTIONS[driver])
        for aux in (tmp + ".aux.xml",):
            if os.path.exists(aux):
                os.unlink(aux)
        os.replace(tmp, path)
    except (RuntimeError, OSError) as exc:
        for leftover in (tmp, tmp + ".aux.xml"):
            if os.path.exists(leftover):
                os.unlink(leftover)
        raise OutputError(f"{path}: writing the quicklook failed: {exc}") from None
