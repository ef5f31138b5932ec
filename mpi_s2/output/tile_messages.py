"""The wire format of a window on its way to the writer rank, as one uint8 buffer (pure numpy, no MPI).

* A raw block: an 8-byte header holding the window's index, then the ``(bands, rows, cols)`` pixels.
* Encoded tiles: the same header, then an int64 index of ``(level, tile number, size)`` and the tiles' bytes
  (:func:`pack_tiles`); coarse overview levels may travel as raw pieces (:data:`RAW_PIECE`), and the window's
  quicklook sums as one more piece (:data:`QUICKLOOK_PIECE`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: The tile number of a raw (not encoded) piece of a coarse overview level, placed by the writer.
RAW_PIECE = -1
#: The tile number of a window's quicklook sums (level 0): uint64 ``(4, rows, cols)`` over the quicklook cells the
#: window touches, which the writer derives from the window (:func:`mpi_s2.output.quicklook.cell_sums`).
QUICKLOOK_PIECE = -2


#: One entry of a window's message: (overview level, 0 for full resolution; tile number or RAW_PIECE; bytes).
TileEntry = tuple[int, int, "bytes | np.ndarray"]


def pack_tiles(tiles: list[TileEntry], header_bytes: int = 0) -> np.ndarray:
    """A window's tiles as one uint8 message: ``header_bytes`` left for the caller, an int64 index
    ``[count, (level, tile number, size)...]``, then the bytes; each tile is copied once."""
    views = [data.data.cast("B") if isinstance(data, np.ndarray) else memoryview(data) for _, _, data in tiles]
    index_bytes = 8 * (1 + 3 * len(tiles))
    message = np.empty(header_bytes + index_bytes + sum(len(v) for v in views), dtype=np.uint8)
    index = message[header_bytes: header_bytes + index_bytes].view(np.int64)
    index[0] = len(tiles)
    pos = header_bytes + index_bytes
    for k, ((level, number, _), view) in enumerate(zip(tiles, views, strict=True)):
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


def split_quicklook(entries: Sequence[TileEntry]) -> tuple[list[TileEntry], bytes | np.ndarray | None]:
    """A window's entries without its :data:`QUICKLOOK_PIECE`, and that piece's data (None when it has none)."""
    rest, piece = [], None
    for entry in entries:
        if entry[1] == QUICKLOOK_PIECE:
            piece = entry[2]
        else:
            rest.append(entry)
    return rest, piece


HEADER_BYTES = 8


def message_buffer(band_count: int, max_pixels: int) -> np.ndarray:
    """A send/receive buffer for the largest block: header plus pixels."""
    return np.empty(HEADER_BYTES + band_count * max_pixels, dtype=np.uint8)


def pack_block(buffer: np.ndarray, index: int, band_count: int, shape: tuple[int, int]) -> np.ndarray:
    """Write ``index`` into ``buffer``'s header; return the view the block's pixels go into."""
    buffer[:HEADER_BYTES].view(np.int64)[0] = index
    return buffer[HEADER_BYTES: HEADER_BYTES + band_count * shape[0] * shape[1]].reshape(band_count, *shape)


def tile_message(index: int, tiles: list[TileEntry]) -> np.ndarray:
    """A window's encoded tiles as one uint8 message: the window index, then :func:`pack_tiles`' layout."""
    message = pack_tiles(tiles, HEADER_BYTES)
    message[:HEADER_BYTES].view(np.int64)[0] = index
    return message


