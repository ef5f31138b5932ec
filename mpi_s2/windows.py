"""Windows and tiles, the value types every part shares: how a raster is cut into rectangles that ranks process
independently (windows), and how the output file is cut into tiles (:class:`TileLayout`).

Pure logic, no MPI and no GDAL. A :class:`Window` is a small immutable value; a plan is a list of them in
row-major order that covers the raster exactly once. Windows are aligned with the source's block grid so that
each compressed block (a JPEG 2000 tile, a GeoTIFF tile) is decoded by exactly one window; edge windows are
smaller, nothing is padded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mpi_s2.errors import WindowError

#: Default target edge length of a window, in pixels (the actual size is a multiple of the block size).
DEFAULT_WINDOW_TARGET = 1024


@dataclass(frozen=True, slots=True)
class Window:
    """A rectangle of pixels: ``col_off``/``row_off`` of its upper-left corner, ``width``/``height``."""

    col_off: int
    row_off: int
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.col_off < 0 or self.row_off < 0:
            raise WindowError(f"window offsets must be >= 0, got {self}")
        if self.width <= 0 or self.height <= 0:
            raise WindowError(f"window sizes must be > 0, got {self}")

    @property
    def size(self) -> int:
        """Number of pixels in the window."""
        return self.width * self.height

    @property
    def shape(self) -> tuple[int, int]:
        """Numpy shape ``(rows, cols)``."""
        return (self.height, self.width)

    def toslices(self) -> tuple[slice, slice]:
        """Row and column slices into a full-raster array."""
        return (
            slice(self.row_off, self.row_off + self.height),
            slice(self.col_off, self.col_off + self.width),
        )

    def gdal_args(self) -> tuple[int, int, int, int]:
        """``(xoff, yoff, xsize, ysize)`` as GDAL's ``ReadRaster``/``WriteRaster`` take them."""
        return (self.col_off, self.row_off, self.width, self.height)


def aligned_length(block: int, target: int = DEFAULT_WINDOW_TARGET) -> int:
    """The multiple of ``block`` closest to ``target`` (at least one block).

    Ties go to the smaller multiple, which keeps windows small on blocks of odd sizes.
    """
    if block <= 0:
        raise WindowError(f"block size must be > 0, got {block}")
    if target <= 0:
        raise WindowError(f"window size must be > 0, got {target}")
    lower = max(1, target // block)
    upper = lower + 1
    best = lower if abs(lower * block - target) <= abs(upper * block - target) else upper
    return best * block


def choose_window_size(
    block_size: tuple[int, int], raster_size: tuple[int, int], override: int | None = None
) -> tuple[int, int]:
    """Window ``(width, height)`` for a source of ``block_size`` and ``raster_size`` (both x, y).

    By default each side is the multiple of the block side closest to 1024. A block that spans the whole
    raster width (a striped file) can be cut anywhere along that axis, so the target is used as is there.
    ``override`` forces a square window of that edge.
    """
    if override is not None:
        if override <= 0:
            raise WindowError(f"--window must be > 0, got {override}")
        return (min(override, raster_size[0]), min(override, raster_size[1]))
    sizes = []
    for block, full in zip(block_size, raster_size, strict=True):
        if block >= full:  # one block spans the axis: any cut decodes that block anyway
            sizes.append(min(DEFAULT_WINDOW_TARGET, full))
        else:
            sizes.append(min(aligned_length(block), full))
    return (sizes[0], sizes[1])


def plan_windows(raster_size: tuple[int, int], window_size: tuple[int, int]) -> list[Window]:
    """Cut a ``raster_size`` (width, height) raster into row-major windows of ``window_size``.

    Windows start at multiples of the window size; the last column and row of windows are smaller when the
    raster is not a multiple of it.
    """
    width, height = raster_size
    win_w, win_h = window_size
    if width <= 0 or height <= 0:
        raise WindowError(f"raster size must be > 0, got {raster_size}")
    if win_w <= 0 or win_h <= 0:
        raise WindowError(f"window size must be > 0, got {window_size}")
    return [
        Window(col, row, min(win_w, width - col), min(win_h, height - row))
        for row in range(0, height, win_h)
        for col in range(0, width, win_w)
    ]


def intersection(a: Window, b: Window) -> Window | None:
    """The overlap of two windows, or None when they do not overlap."""
    col0, row0 = max(a.col_off, b.col_off), max(a.row_off, b.row_off)
    col1 = min(a.col_off + a.width, b.col_off + b.width)
    row1 = min(a.row_off + a.height, b.row_off + b.height)
    if col1 <= col0 or row1 <= row0:
        return None
    return Window(col0, row0, col1 - col0, row1 - row0)


def relative_to(inner: Window, outer: Window) -> Window:
    """``inner`` in the pixel coordinates of ``outer`` (whose upper-left corner becomes 0, 0)."""
    return Window(inner.col_off - outer.col_off, inner.row_off - outer.row_off, inner.width, inner.height)


@dataclass(frozen=True, slots=True)
class TileLayout:
    """The output's tiling: tile edge and tiles across and down."""

    width: int
    height: int
    tile: tuple[int, int]

    @property
    def across(self) -> int:
        return -(-self.width // self.tile[0])

    @property
    def down(self) -> int:
        return -(-self.height // self.tile[1])

    @property
    def count(self) -> int:
        return self.across * self.down

    def index(self, tx: int, ty: int) -> int:
        """Row-major tile number, as TIFF's TileOffsets are ordered."""
        return ty * self.across + tx


def tile_size(options: Mapping[str, str]) -> tuple[int, int]:
    return (int(options.get("BLOCKXSIZE", 256)), int(options.get("BLOCKYSIZE", options.get("BLOCKXSIZE", 256))))


