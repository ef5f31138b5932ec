"""Compressing output tiles where the pixels are composed, so that the writer only places bytes.

A worker that composed a window of whole output tiles encodes them with GDAL itself: it writes the window into
an in-memory GeoTIFF (``/vsimem/``) with the output's creation options and takes each tile's bytes
(``BLOCK_OFFSET_x_y`` / ``BLOCK_SIZE_x_y``). The codec, its level and the predictor are GDAL's own, so a tile is
byte for byte what GDAL's writer would have stored, and it is compressed once, by the rank that composed it.

Pure planning (which layouts allow it, the BigTIFF decision) needs no MPI.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping

import numpy as np
from osgeo import gdal

from mpi_s2.output.overviews import level_size, level_window, reduce_window
from mpi_s2.output.profiles import as_gdal_list
from mpi_s2.output.tile_messages import RAW_PIECE, TileEntry
from mpi_s2.windows import TileLayout, Window, tile_size

gdal.UseExceptions()

#: Codecs a worker may encode: their tiles need nothing from the file but the tile (JPEG, for one, does).
WORKER_CODECS = ("NONE", "DEFLATE", "LZW", "ZSTD")
_counter = itertools.count()


def workers_can_compress(options: Mapping[str, str], window_size: tuple[int, int],
                         raster_size: tuple[int, int] | None = None) -> str | None:
    """None when workers can encode whole tiles for these options and windows; else the reason they cannot.

    A window side that spans the whole raster (``raster_size``) need not be whole tiles."""
    if options.get("TILED", "NO").upper() not in ("YES", "TRUE", "ON", "1"):
        return "the output is not tiled (TILED=NO)"
    codec = options.get("COMPRESS", "NONE").upper()
    if codec not in WORKER_CODECS:
        return f"COMPRESS={codec} is encoded by the writer (workers encode {', '.join(WORKER_CODECS)})"
    if options.get("INTERLEAVE", "PIXEL").upper() != "PIXEL":
        return "INTERLEAVE=BAND is written by the writer"
    tx, ty = tile_size(options)
    full = raster_size or (1 << 62, 1 << 62)
    if (window_size[0] % tx and window_size[0] < full[0]) or (window_size[1] % ty and window_size[1] < full[1]):
        return f"windows of {window_size[0]} x {window_size[1]} are not whole {tx} x {ty} tiles"
    return None


class TileEncoder:
    """Encodes a window of whole tiles of ``layout`` (the output or one overview ``level`` of it) with GDAL, in
    memory; returns each tile's :data:`TileEntry`."""

    def __init__(self, options: Mapping[str, str], layout: TileLayout, bands: int, level: int = 0):
        self.options = as_gdal_list({k: v for k, v in options.items() if k not in ("BIGTIFF",)})
        self.layout = layout
        self.bands = bands
        self.level = level
        self.path = f"/vsimem/mpi_s2_tiles_{os.getpid()}_{next(_counter)}.tif"
        self.raw = options.get("COMPRESS", "NONE").upper() == "NONE"

    def encode(self, window: Window, block: np.ndarray) -> list[TileEntry]:
        if self.raw:
            return self._interleave(window, block)
        tx0, ty0 = window.col_off // self.layout.tile[0], window.row_off // self.layout.tile[1]
        ds = gdal.GetDriverByName("GTiff").Create(self.path, window.width, window.height, self.bands,
                                                  gdal.GDT_Byte, options=self.options)
        ds.WriteRaster(0, 0, window.width, window.height, block.data, buf_type=gdal.GDT_Byte,
                       band_list=list(range(1, self.bands + 1)))
        ds = None  # flushes every tile
        ds = gdal.Open(self.path)
        band = ds.GetRasterBand(1)
        across = -(-window.width // self.layout.tile[0])
        down = -(-window.height // self.layout.tile[1])
        tiles: list[TileEntry] = []
        fh = gdal.VSIFOpenL(self.path, "rb")
        try:
            for ty in range(down):
                for tx in range(across):
                    offset = int(band.GetMetadataItem(f"BLOCK_OFFSET_{tx}_{ty}", "TIFF") or 0)
                    size = int(band.GetMetadataItem(f"BLOCK_SIZE_{tx}_{ty}", "TIFF") or 0)
                    gdal.VSIFSeekL(fh, offset, 0)
                    data = bytes(gdal.VSIFReadL(1, size, fh)) if size else b""
                    tiles.append((self.level, self.layout.index(tx0 + tx, ty0 + ty), data))
        finally:
            gdal.VSIFCloseL(fh)
            ds = None
            gdal.Unlink(self.path)
        return tiles

    def _interleave(self, window: Window, block: np.ndarray) -> list[TileEntry]:
        """COMPRESS=NONE: a tile is its pixels, interleaved, edge tiles padded with 0 to the full tile (as GDAL
        stores them); numpy does it in one copy, without a round trip through GDAL."""
        tw, th = self.layout.tile
        tx0, ty0 = window.col_off // tw, window.row_off // th
        tiles: list[TileEntry] = []
        for ty in range(-(-window.height // th)):
            for tx in range(-(-window.width // tw)):
                part = block[:, ty * th: (ty + 1) * th, tx * tw: (tx + 1) * tw]
                whole = part.shape[1:] == (th, tw)
                tile = (np.empty if whole else np.zeros)((th, tw, self.bands), dtype=np.uint8)
                for b in range(self.bands):  # band by band: 3-4x faster than a transposing copy
                    tile[: part.shape[1], : part.shape[2], b] = part[b]
                tiles.append((self.level, self.layout.index(tx0 + tx, ty0 + ty), tile))
        return tiles




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


