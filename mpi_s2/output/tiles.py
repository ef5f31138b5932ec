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
from dataclasses import dataclass

import numpy as np
from osgeo import gdal

from mpi_s2.output.profiles import as_gdal_list
from mpi_s2.planning.windows import Window

gdal.UseExceptions()

#: Codecs a worker may encode: their tiles need nothing from the file but the tile (JPEG, for one, does).
WORKER_CODECS = ("NONE", "DEFLATE", "LZW", "ZSTD")
#: Classic TIFF addresses 4 GiB; what may pass it (pixels, plus the worst case of a codec's expansion and the
#: tile index) is written as BigTIFF.
CLASSIC_TIFF_LIMIT = 1 << 32

#: The tile number of a raw (not encoded) piece of a coarse overview level, placed by the writer.
RAW_PIECE = -1

#: One entry of a window's message: (overview level, 0 for full resolution; tile number or RAW_PIECE; bytes).
TileEntry = tuple[int, int, "bytes | np.ndarray"]

_counter = itertools.count()


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
        tiles = []
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


def pack_tiles(tiles: list[TileEntry], header_bytes: int = 0) -> np.ndarray:
    """A window's tiles as one uint8 message: ``header_bytes`` left for the caller, an int64 index
    ``[count, (level, tile number, size)...]``, then the bytes; each tile is copied once."""
    views = [memoryview(data).cast("B") for _, _, data in tiles]
    index_bytes = 8 * (1 + 3 * len(tiles))
    message = np.empty(header_bytes + index_bytes + sum(len(v) for v in views), dtype=np.uint8)
    index = message[header_bytes: header_bytes + index_bytes].view(np.int64)
    index[0] = len(tiles)
    pos = header_bytes + index_bytes
    for k, ((level, number, _), view) in enumerate(zip(tiles, views)):
        index[1 + 3 * k: 4 + 3 * k] = (level, number, len(view))
        message[pos: pos + len(view)] = np.frombuffer(view, dtype=np.uint8)
        pos += len(view)
    return message


def unpack_tiles(message: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """Inverse of :func:`pack_tiles` for a message holding the index then the bytes (after any header); the
    bytes are views into ``message``."""
    count = int(message[:8].view(np.int64)[0])
    index = message[8: 8 + 24 * count].view(np.int64).reshape(count, 3)
    out, pos = [], 8 + 24 * count
    for level, number, size in index.tolist():
        out.append((level, number, message[pos: pos + size]))
        pos += size
    return out
