"""GDAL process settings, passed explicitly instead of living in hidden global state."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Mapping

from osgeo import gdal

gdal.UseExceptions()

#: Per-process block cache in MB. GDAL's default (5% of RAM) would let a writer hold >1 GB of dirty tiles;
#: windows are aligned with blocks, so a small cache loses nothing.
DEFAULT_CACHE_MB = 64


@contextlib.contextmanager
def config_options(options: Mapping[str, str]) -> Iterator[None]:
    """Set GDAL configuration options for the duration of the block, restoring the previous values."""
    previous = {key: gdal.GetConfigOption(key) for key in options}
    try:
        for key, value in options.items():
            gdal.SetConfigOption(key, str(value))
        yield
    finally:
        for key, value in previous.items():
            gdal.SetConfigOption(key, value)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which Slurm and mpirun bindings restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def decoder_threads(comm, roles) -> tuple[int, int]:
    """GDAL decoder threads for this rank, so that decoding ranks x threads does not exceed the node's cores;
    and the number of nodes the job spans.

    Counted per node (ranks sharing memory): the writer decodes nothing, so with one worker and the writer on
    2 cores the worker gets 2 threads; with two workers, 1 each.
    """
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        workers_here = node.allreduce(1 if roles.is_worker else 0)
        cores = node.allreduce(available_cores(), op=MPI.MAX)
        nodes = comm.allreduce(1 if node.rank == 0 else 0)
    finally:
        node.Free()
    return max(1, cores // max(1, workers_here)), nodes


def rank_options(decoder_threads: int = 1, cache_mb: int = DEFAULT_CACHE_MB) -> dict[str, str]:
    """GDAL options for one rank: a bounded block cache and a fixed number of decoder threads.

    With one rank per core, decoder threads must be 1 or ranks x threads oversubscribes the cores.
    """
    return {
        "GDAL_CACHEMAX": str(cache_mb),
        "GDAL_NUM_THREADS": str(decoder_threads),
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        # staged raw copies: read each line's window directly instead of whole lines through the block cache
        # (GDAL does that on its own only for lines over 50 kB; a 10980 px uint16 line is 22 kB, and a 1024
        # px window would read 10x the bytes it needs)
        "GDAL_ONE_BIG_READ": "YES",
    }
