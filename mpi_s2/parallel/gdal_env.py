"""GDAL process settings, passed explicitly instead of living in hidden global state."""

from __future__ import annotations

import contextlib
import os
from typing import Iterable, Iterator, Mapping

from osgeo import gdal

from mpi_s2.inputs.bands import is_network_path

gdal.UseExceptions()

#: Per-process block cache in MB. GDAL's default (5% of RAM) would let a writer hold >1 GB of dirty tiles;
#: windows are aligned with blocks, so a small cache loses nothing.
DEFAULT_CACHE_MB = 64
#: A worker of a ``--composite median|medoid`` run: its windows' reads each take one block of each of T x 3 band
#: files, none read again, so a cache only holds what is done with. Measured on 6 full-tile dates: a 64 MB cache
#: grows the worker by 81 MB, an 8 MB one by 27 MB, at the same decoding speed.
STACK_CACHE_MB = 16


def worker_cache_mb(composite: str) -> int:
    """The block cache of a worker rank: small where windows stack many dates (see :data:`STACK_CACHE_MB`)."""
    return DEFAULT_CACHE_MB if composite == "first" else STACK_CACHE_MB


@contextlib.contextmanager
def block_cache(mb: int) -> Iterator[None]:
    """GDAL's block cache at ``mb`` MB for the duration of the block, restored after. Set directly: GDAL reads
    ``GDAL_CACHEMAX`` only once per process."""
    previous = gdal.GetCacheMax()
    gdal.SetCacheMax(mb << 20)
    try:
        yield
    finally:
        gdal.SetCacheMax(previous)


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


def affinity() -> list[int]:
    """The cores this process may run on (its CPU affinity, which Slurm and mpirun bindings restrict)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def explicit_threads(environ: Mapping[str, str] = os.environ) -> int | None:
    """``GDAL_NUM_THREADS`` set by the user (a number, or ALL_CPUS): that choice wins over the computed one."""
    value = environ.get("GDAL_NUM_THREADS", "").strip().upper()
    if value == "ALL_CPUS":
        return os.cpu_count() or 1
    return int(value) if value.isdigit() and int(value) > 0 else None


def slurm_cpus_per_task(environ: Mapping[str, str] = os.environ) -> int | None:
    """Slurm's ``--cpus-per-task`` for this task, when a Slurm step launched it."""
    value = environ.get("SLURM_CPUS_PER_TASK", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def node_threads(affinities: list[list[int]], workers_here: int, slurm_cpus: list[int | None],
                 own_cores: int | None = None) -> int:
    """Decoder threads per worker on one node: the node's usable cores shared among its workers, and no more
    than this rank's own affinity (``own_cores``: threads beyond the cores a rank is bound to only queue).

    Usable cores: the union of the ranks' affinities (bound ranks each see only their own cores; unbound ones
    all of the node's), capped by Slurm's allocation (the sum of ``--cpus-per-task`` of the node's tasks) when
    every rank has one: without task binding a job may see cores that belong to other jobs.
    """
    cores = len(set().union(*map(set, affinities))) if affinities else 1
    if slurm_cpus and all(c is not None for c in slurm_cpus):
        cores = min(cores, sum(slurm_cpus))  # type: ignore[arg-type]
    share = cores // max(1, workers_here)
    return max(1, min(share, own_cores) if own_cores else share)


def decoder_threads(comm, roles) -> tuple[int, int]:
    """GDAL decoder threads for this rank, so that decoding ranks x threads does not exceed the node's cores;
    and the number of nodes the job spans.

    Counted per node (ranks sharing memory): the writer decodes nothing, so with one worker and the writer on
    2 cores the worker gets 2 threads; with two workers, 1 each. An explicit ``GDAL_NUM_THREADS`` wins.
    """
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        workers_here = node.allreduce(1 if roles.is_worker else 0)
        affinities = node.allgather(affinity())
        slurm_cpus = node.allgather(slurm_cpus_per_task())
        nodes = comm.allreduce(1 if node.rank == 0 else 0)
    finally:
        node.Free()
    threads = explicit_threads() or node_threads(affinities, workers_here, slurm_cpus, len(affinity()))
    return threads, nodes


#: How ranks read remote files (``/vsicurl/``, ``/vsis3/``), each a default the user's own variable of the same
#: name overrides: consecutive ranges merged into one request (the ranges of one read are requested in parallel,
#: GDAL's default), no directory listing on open, one bounded read of a COG's header, and retries with exponential
#: backoff (GDAL retries HTTP 429, 502, 503 and 504) within time limits, so that a flaky server slows a job down
#: instead of failing it.
REMOTE_DEFAULTS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_INGESTED_BYTES_AT_OPEN": "32768",
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_CONNECTTIMEOUT": "15",
    "GDAL_HTTP_TIMEOUT": "60",
}
#: The block cache of a worker reading remote files: each block arrives once and is decoded once, so a cache only
#: holds what is done with. Measured on make bench's remote tile (-n 3): a 64 MB cache grew the largest rank to
#: 259-336 MB, 16 MB kept it at 201 MB, at the same speed (docs/benchmarks.md).
REMOTE_CACHE_MB = 16


def reduce_cache_for_remote(paths: Iterable[str]) -> None:
    """A worker whose sources include a network path (``/vsicurl/``...): its block cache down to
    :data:`REMOTE_CACHE_MB` (never up), for the rest of the run (:func:`block_cache` restores it)."""
    if any(is_network_path(p) for p in paths) and gdal.GetCacheMax() > REMOTE_CACHE_MB << 20:
        gdal.SetCacheMax(REMOTE_CACHE_MB << 20)


def rank_options(decoder_threads: int = 1, cache_mb: int = DEFAULT_CACHE_MB,
                 environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """GDAL options for one rank: a bounded block cache, a fixed number of decoder threads, and the remote
    reading defaults (:data:`REMOTE_DEFAULTS`, each unless set in ``environ``).

    With one rank per core, decoder threads must be 1 or ranks x threads oversubscribes the cores.
    """
    return {
        "GDAL_CACHEMAX": str(cache_mb),
        "GDAL_NUM_THREADS": str(decoder_threads),
        **{key: value for key, value in REMOTE_DEFAULTS.items() if key not in environ},
        # staged raw copies: read each line's window directly instead of whole lines through the block cache
        # (GDAL does that on its own only for lines over 50 kB; a 10980 px uint16 line is 22 kB, and a 1024
        # px window would read 10x the bytes it needs)
        "GDAL_ONE_BIG_READ": "YES",
    }
