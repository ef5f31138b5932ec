"""``--cog``'s last step: the coarse overview levels, assembled by the writer, are encoded by the workers.

Once every window has arrived, the writer holds the coarse levels' pixels (window shares smaller than a tile).
It hands out strips of one tile row each, one at a time per worker, and a worker sends back the strip's
encoded tiles; the next strip goes to whichever worker answers first. A strip message is a 24-byte int64
header ``(level, row_off, rows)`` and the pixels; a header with level -1 means: no more strips. Every worker
gets exactly one such stop. The writer holds at most one strip per worker in flight, so its memory stays
bounded whatever the mosaic size.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from mpi4py import MPI

from mpi_s2.errors import MpiS2Error
from mpi_s2.output.tiff_assembly import TiffAssembler
from mpi_s2.output.tile_encoding import WindowEncoder
from mpi_s2.output.tile_messages import HEADER_BYTES, tile_message, unpack_tiles
from mpi_s2.parallel.roles import WRITER_RANK
from mpi_s2.parallel.transport import wait_for_message
from mpi_s2.report import RankStats

STRIP_TAG = 15
STRIP_TILES_TAG = 16
STRIP_HEADER_BYTES = 24


def _strip_message(level: int, row: int, rows: int, pixels: np.ndarray | None) -> np.ndarray:
    size = 0 if pixels is None else pixels.size
    message = np.empty(STRIP_HEADER_BYTES + size, dtype=np.uint8)
    message[:STRIP_HEADER_BYTES].view(np.int64)[:] = (level, row, rows)
    if pixels is not None:
        message[STRIP_HEADER_BYTES:] = pixels.reshape(-1)
    return message


def serve_strips(comm: MPI.Comm, assembler: TiffAssembler, workers: tuple[int, ...], stats: RankStats) -> None:
    """Writer: have ``workers`` encode every coarse strip; the tiles go into ``assembler``."""
    strips = deque(assembler.coarse_strips())
    in_flight: dict[int, tuple[MPI.Request, np.ndarray]] = {}

    def send_next(worker: int) -> None:
        if worker in in_flight:
            in_flight.pop(worker)[0].Wait()
        if strips:
            level, row, rows = strips.popleft()
            with stats.timer("write"):
                message = _strip_message(level, row, rows, assembler.strip_pixels(level, row, rows))
        else:
            message = _strip_message(-1, 0, 0, None)
        in_flight[worker] = (comm.Isend([message, MPI.UINT8_T], dest=worker, tag=STRIP_TAG), message)

    pending = len(strips)
    for worker in workers:
        send_next(worker)
    status = MPI.Status()
    while pending:
        with stats.timer("wait"):
            wait_for_message(comm, status, tag=STRIP_TILES_TAG)
            message = np.empty(status.Get_count(MPI.UINT8_T), dtype=np.uint8)
            comm.Recv([message, MPI.UINT8_T], source=status.Get_source(), tag=STRIP_TILES_TAG)
        with stats.timer("write"):
            for level, number, data in unpack_tiles(message[HEADER_BYTES:]):
                assembler.add_tile(level, number, data)
        pending -= 1
        send_next(status.Get_source())
    with stats.timer("wait"):
        MPI.Request.Waitall([request for request, _ in in_flight.values()])


def encode_strips(comm: MPI.Comm, encoder: WindowEncoder, stats: RankStats) -> None:
    """Worker: encode the strips the writer sends until it says stop."""
    status = MPI.Status()
    while True:
        with stats.timer("wait"):
            wait_for_message(comm, status, source=WRITER_RANK, tag=STRIP_TAG)
            message = np.empty(status.Get_count(MPI.UINT8_T), dtype=np.uint8)
            comm.Recv([message, MPI.UINT8_T], source=WRITER_RANK, tag=STRIP_TAG)
        level, row, rows = message[:STRIP_HEADER_BYTES].view(np.int64).tolist()
        if level < 0:
            return
        if not 0 < level <= encoder.levels:
            raise MpiS2Error(f"worker: strip of overview level {level} from the writer, expected 1 .. "
                             f"{encoder.levels}")
        width = encoder.sizes[level][0]
        with stats.timer("encode"):
            block = message[STRIP_HEADER_BYTES:].reshape(-1, rows, width)
            reply = tile_message(0, encoder.encode_strip(level, row, block))
        with stats.timer("wait"):
            comm.Send([reply, MPI.UINT8_T], dest=WRITER_RANK, tag=STRIP_TILES_TAG)


def encode_strips_here(assembler: TiffAssembler, encoder: WindowEncoder, stats: RankStats) -> None:
    """One-rank job: encode every coarse strip in this process."""
    for level, row, rows in assembler.coarse_strips():
        with stats.timer("encode"):
            entries = encoder.encode_strip(level, row, assembler.strip_pixels(level, row, rows))
        with stats.timer("write"):
            for entry_level, number, data in entries:
                assembler.add_tile(entry_level, number, data)
