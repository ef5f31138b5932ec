"""``compose --backend hdf5``: every worker writes the windows it composed into one HDF5 file, collectively.

1. Rank 0 plans (the same plan, radiometry and schedules as the writer backend) and creates the file (or, with
   ``--resume``, checks the partial run's fingerprint and reads which windows are written).
2. Workers take work from rank 0 exactly as with the writer backend (rank 0 only schedules here) and write in
   *rounds*: each composes up to :data:`ROUND_WINDOWS` windows, then all workers make the same number of
   collective writes (padding with empty ones), flush, and mark the round's windows written. Rank 0 is not in
   the file's communicator: it stays free to answer requests while the workers are inside a collective call.
3. The file is converted to the GeoTIFF/COG by the output stage (:mod:`mpi_s2.parallel.convert`), in the same
   job: workers read windows back and encode tiles, rank 0 places them.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from mpi4py import MPI

from mpi_s2 import faults
from mpi_s2.errors import MpiS2Error, OutputError
from mpi_s2.inputs.decoding import DecodeCounter
from mpi_s2.output.hdf5_store import CollectiveWindowWriter, create_store, h5_path, read_attrs
from mpi_s2.parallel.roles import PLANNER_RANK, Roles
from mpi_s2.parallel.runtime import fail_together
from mpi_s2.parallel.work_items import ItemWorker
from mpi_s2.planning.fingerprint import describe_mismatch
from mpi_s2.planning.plan import Plan
from mpi_s2.planning.windows import Window
from mpi_s2.report import RankStats

ROUND_WINDOWS = 4


def store_attributes(plan: Plan) -> dict:
    """What the file keeps to georeference and reproduce the output."""
    config = plan.config
    return {
        "crs_wkt": plan.grid.crs_wkt,
        "geotransform": list(plan.grid.geotransform),
        "band_count": config.band_count,
        "nodata_meaning": ("band 4 is alpha: 0 where no input has data, else 255" if config.alpha else
                           "no alpha: 0 in all bands where no input has data; valid pixels are >= 1"),
        "gdal_metadata": dict(plan.output.metadata),
        "creation_options": dict(plan.output.creation_options),
        "inputs": [{"input": s.label, "files": list(s.files), "scl": s.scl, "radiometry": s.radiometry_note}
                   for s in plan.sources],
        "plan": {"window_size": list(plan.window_size), "cog": config.cog, "schedule": config.schedule},
        "fingerprint": plan.fingerprint,
    }


def prepare_store(comm: MPI.Comm, roles: Roles, plan: Plan) -> set[int]:
    """Rank 0 creates the file, or checks a partial run's (``--resume``); returns the windows already written.

    An error ends every rank cleanly (nothing of a partial run is changed when it does not match).
    """
    done: set[int] = set()
    error: MpiS2Error | None = None
    if roles.is_planner:
        path = h5_path(plan.config.output)
        try:
            if plan.config.resume:
                import os

                if not os.path.exists(path):
                    raise OutputError(f"{plan.config.output}: --resume: no partial run to resume (no {path}); "
                                      f"run without --resume")
                attrs = read_attrs(path)
                mismatch = describe_mismatch(attrs.get("fingerprint") or {}, plan.fingerprint or {})
                if mismatch:
                    raise OutputError(f"{path}: --resume: {mismatch}; the partial run is left as it is")
                done = set(np.flatnonzero(attrs["window_status"]).tolist())
            else:
                create_store(path, size=plan.grid.size, bands=plan.config.band_count, windows=list(plan.windows),
                             attrs=store_attributes(plan))
        except MpiS2Error as exc:
            error = exc
    fail_together(comm, error, PLANNER_RANK)
    return done


def worker_comm(comm: MPI.Comm, roles: Roles) -> MPI.Comm:
    """The workers' communicator (the file's); COMM_NULL on rank 0 of a multi-rank job."""
    if roles.serial:
        return comm
    return comm.Split(0 if roles.is_worker else MPI.UNDEFINED, comm.rank)


def run_hdf5_worker(wcomm: MPI.Comm, plan: Plan, luts: np.ndarray, first, feed, stats: RankStats,
                    counter: DecodeCounter) -> None:
    """Do batches of work; write composed windows in collective rounds until no worker has any left."""
    bands = plan.config.band_count
    max_pixels = plan.window_size[0] * plan.window_size[1]
    buffers = [np.empty(bands * max_pixels, dtype=np.uint8) for _ in range(ROUND_WINDOWS)]
    work = ItemWorker(plan, luts, stats, counter)
    queue = deque(first)
    writer = CollectiveWindowWriter(wcomm, h5_path(plan.config.output), len(plan.windows))
    # no try/finally: closing the file is collective, and a rank that failed must not wait in it for the others
    # (the job is aborted; what the status marks written is on disk); alone, a worker closes it
    try:
        _write_rounds(wcomm, plan, work, feed, writer, queue, buffers, stats)
    except BaseException:
        if wcomm.size == 1:
            writer.close_quietly()
        raise
    writer.close()


def _write_rounds(wcomm, plan, work, feed, writer, queue, buffers, stats) -> None:
    bands = plan.config.band_count
    exhausted = False
    written = 0
    while True:
        pending: list[tuple[int, Window, np.ndarray]] = []
        while len(pending) < ROUND_WINDOWS and not exhausted:
            if not queue:
                with stats.timer("wait"):
                    batch = feed.next(work.staged_done())
                if not batch:
                    exhausted = True
                    break
                queue.extend(batch)
            item, what = queue.popleft()
            if not queue:
                feed.ask(work.staged_done())
            if work.take(item.kind, what) is None:
                continue
            assert isinstance(what, Window)
            block = buffers[len(pending)][: bands * what.size].reshape(bands, *what.shape)
            work.fill(what, block)
            pending.append((item.index, what, block))
        feed.report(work.staged_done())
        with stats.timer("write"):
            more = writer.write_round(pending)
        for _ in pending:
            written += 1
            faults.window_done(stats.rank, written)
        if not more:
            break
