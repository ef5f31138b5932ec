"""Overview levels of a Cloud-Optimized GeoTIFF, computed where the pixels are composed (pure numpy, no MPI).

Level ``L`` halves the resolution ``L`` times: its pixel ``(r, c)`` is the mean of the *valid* full-resolution
pixels of the cell ``[r * 2**L, (r + 1) * 2**L) x [c * 2**L, (c + 1) * 2**L)``, rounded half up, so nodata never
darkens an edge; a cell without any valid pixel is nodata (RGB 0, alpha 0), any other has alpha 255. Every level
is computed from the full-resolution pixels (exact integer sums carried from level to level), not as an average
of averages. Cells cut by the raster's right or bottom edge average what they have; level sizes are
``ceil(size / 2**L)``, as GDAL computes them.

Windows are whole output tiles whose edge is a multiple of ``2**L`` for every level (a power-of-two tile
edge guarantees it up to the tile's own exponent), so a level-``L`` cell never spans two windows and each worker
computes the final overview pixels of its window alone. Where a window's share of a level is itself whole tiles
(level 1 of a 1024 window with 512 tiles) the worker encodes those tiles too; smaller shares are sent raw to the
writer, which assembles those coarse levels and has them encoded in parallel at the end.
"""

from __future__ import annotations

import numpy as np

from mpi_s2.errors import OutputError
from mpi_s2.windows import Window


def level_count(width: int, height: int, tile: tuple[int, int]) -> int:
    """Levels needed until the whole raster fits in one tile (0 when it already does)."""
    levels = 0
    while width > tile[0] or height > tile[1]:
        width, height, levels = -(-width // 2), -(-height // 2), levels + 1
    return levels


def level_size(width: int, height: int, level: int) -> tuple[int, int]:
    factor = 1 << level
    return (-(-width // factor), -(-height // factor))


def level_window(window: Window, level: int) -> Window:
    """The part of level ``level`` that ``window`` (full-resolution pixels, offsets multiples of 2**level) covers."""
    factor = 1 << level
    return Window(window.col_off // factor, window.row_off // factor,
                  -(-window.width // factor), -(-window.height // factor))


def check_window_size(window_size: tuple[int, int], raster_size: tuple[int, int], levels: int) -> None:
    """Raise :class:`OutputError` when a level's cells could span two windows: a window edge that is not a
    multiple of the coarsest cell (unless one window spans that axis)."""
    factor = 1 << levels
    for edge, full in zip(window_size, raster_size, strict=True):
        if edge % factor and edge < full:
            raise OutputError(f"--cog: {levels} overview levels need windows that are multiples of {factor} "
                              f"pixels, got {window_size[0]} x {window_size[1]}")


def worker_levels(window_size: tuple[int, int], raster_size: tuple[int, int], tile: tuple[int, int],
                  levels: int) -> int:
    """How many levels (1, 2, ...) the workers encode: those where a window's share is whole tiles (or, where
    one window spans an axis, the whole level)."""
    encoded = 0
    for level in range(1, levels + 1):
        for edge, full, t in zip(window_size, raster_size, tile, strict=True):
            share = edge >> level
            if edge < full and (share < t or share % t or edge % (1 << level)):
                return encoded
        encoded = level
    return encoded


def valid_pixels(block: np.ndarray) -> np.ndarray:
    """Where a composed ``(bands, rows, cols)`` block holds data: alpha > 0, or (no alpha) any of RGB > 0."""
    return block[3] > 0 if block.shape[0] == 4 else (block[:3] > 0).any(axis=0)


def _halve(sums: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum 2 x 2 cells (a trailing odd row or column forms a cell of its own)."""
    rows, cols = counts.shape
    pr, pc = rows % 2, cols % 2
    if pr or pc:
        sums = np.pad(sums, ((0, 0), (0, pr), (0, pc)))
        counts = np.pad(counts, ((0, pr), (0, pc)))
    r2, c2 = counts.shape[0] // 2, counts.shape[1] // 2
    return (sums.reshape(sums.shape[0], r2, 2, c2, 2).sum(axis=(2, 4), dtype=np.uint64),
            counts.reshape(r2, 2, c2, 2).sum(axis=(1, 3), dtype=np.uint64))


def _pixels(sums: np.ndarray, counts: np.ndarray, bands: int) -> np.ndarray:
    """Mean rounded half up where ``counts`` > 0; RGB 0 and alpha 0 elsewhere."""
    out = np.zeros((bands, *counts.shape), dtype=np.uint8)
    has = counts > 0
    safe = np.where(has, counts, 1)
    out[:3] = np.where(has, (2 * sums + safe) // (2 * safe), 0).astype(np.uint8)
    if bands == 4:
        out[3] = np.where(has, 255, 0).astype(np.uint8)
    return out


def reduce_window(block: np.ndarray, levels: int) -> list[np.ndarray]:
    """Levels 1 .. ``levels`` of a composed ``(bands, rows, cols)`` uint8 block, each ``(bands, rows', cols')``."""
    if levels <= 0:
        return []
    valid = valid_pixels(block)
    counts = valid
    sums = block[:3] * valid  # uint8; the first halving sums into uint64
    out = []
    for _ in range(levels):
        sums, counts = _halve(sums, counts)
        out.append(_pixels(sums, counts, block.shape[0]))
    return out


def coarse_strips(level_sizes: list[tuple[int, int]], first_level: int, tile: tuple[int, int]
                  ) -> list[tuple[int, int, int]]:
    """``(level, row_off, rows)`` strips of one tile row each, for levels ``first_level`` .. the last."""
    strips = []
    for level in range(first_level, len(level_sizes) + 1):
        height = level_sizes[level - 1][1]
        for row in range(0, height, tile[1]):
            strips.append((level, row, min(tile[1], height - row)))
    return strips
