"""What a worker makes of a composed window for the output stage: its encoded tiles and, for ``--cog``, its
share of every overview level (encoded where the share is whole tiles, raw otherwise; see
:mod:`mpi_s2.output.overviews`)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mpi_s2.output.overviews import level_size, level_window, reduce_window
from mpi_s2.output.tiles import RAW_PIECE, TileEncoder, TileEntry, TileLayout, tile_size
from mpi_s2.planning.windows import Window


class WindowEncoder:
    """Encodes windows of an output of ``size`` (width, height) with ``levels`` overview levels, of which the
    first ``encoded_levels`` are encoded here."""

    def __init__(self, options: Mapping[str, str], size: tuple[int, int], bands: int, levels: int = 0,
                 encoded_levels: int = 0):
        tile = tile_size(options)
        self.levels, self.encoded_levels = levels, encoded_levels
        self.sizes = [level_size(*size, level) for level in range(levels + 1)]
        self._encoders = [TileEncoder(options, TileLayout(*self.sizes[level], tile), bands, level)
                          for level in range(levels + 1)]

    def encode(self, window: Window, block: np.ndarray, timers=None) -> list[TileEntry]:
        """Entries for ``window``'s composed ``(bands, rows, cols)`` block."""
        entries = self._encoders[0].encode(window, block)
        for level, share in enumerate(reduce_window(block, self.levels), start=1):
            if level <= self.encoded_levels:
                entries += self._encoders[level].encode(level_window(window, level), share)
            else:
                entries.append((level, RAW_PIECE, share))
        return entries

    def encode_strip(self, level: int, row: int, block: np.ndarray) -> list[TileEntry]:
        """Tiles of a full-width strip of a coarse ``level``, whole tile rows starting at ``row``."""
        return self._encoders[level].encode(Window(0, row, block.shape[2], block.shape[1]), block)
