"""Counting decoded source blocks: the evidence that every block of every source is decoded once per run.

A read of a window of a compressed file decodes every block the window touches (JPEG 2000 and GeoTIFF
decoders work block by block). Each rank records, per source, how many blocks its reads touched and which
ones; rank 0 adds the counts and unites the sets. ``decoded == distinct`` means no block was decoded twice.
"""

from __future__ import annotations

from collections import defaultdict

from mpi_s2.windows import Window


def blocks_of(window: Window, block_size: tuple[int, int]) -> list[tuple[int, int]]:
    """Block indices ``(bx, by)`` that ``window`` (file pixel coordinates) touches."""
    bw, bh = block_size
    return [(bx, by)
            for by in range(window.row_off // bh, (window.row_off + window.height - 1) // bh + 1)
            for bx in range(window.col_off // bw, (window.col_off + window.width - 1) // bw + 1)]


def block_count(size: tuple[int, int], block_size: tuple[int, int]) -> int:
    """Blocks of a ``size`` (width, height) raster."""
    return -(-size[0] // block_size[0]) * -(-size[1] // block_size[1])


class DecodeCounter:
    """Blocks decoded by this rank, per source: a count and the set of ``(file, bx, by)`` touched."""

    def __init__(self) -> None:
        self.decoded: dict[int, int] = defaultdict(int)
        self.touched: dict[int, set[tuple[str, int, int]]] = defaultdict(set)

    def record(self, source: int, file: str, window: Window, block_size: tuple[int, int]) -> None:
        blocks = blocks_of(window, block_size)
        self.decoded[source] += len(blocks)
        self.touched[source].update((file, bx, by) for bx, by in blocks)

    def as_dict(self) -> dict[int, dict]:
        """Plain data for ``comm.gather``."""
        return {s: {"decoded": self.decoded[s], "touched": sorted(self.touched[s])} for s in self.decoded}


def merge_counts(per_rank: list[dict[int, dict]]) -> dict[int, dict[str, int]]:
    """Per source: blocks decoded by all ranks together, and distinct blocks touched."""
    decoded: dict[int, int] = defaultdict(int)
    touched: dict[int, set] = defaultdict(set)
    for rank in per_rank:
        for source, data in rank.items():
            decoded[source] += data["decoded"]
            touched[source].update(tuple(t) for t in data["touched"])
    return {s: {"decoded": decoded[s], "distinct": len(touched[s])} for s in decoded}
