"""``compose --backend hdf5``: every worker writes the windows it composed into one HDF5 file, collectively.

1. Rank 0 plans (the same plan, radiometry and schedules as the writer backend) and creates the file (or, with
   ``--resume``, checks the partial run's fingerprint and reads which windows are written).
2. Workers take work from rank 0 exactly as with the writer backend (rank 0 only schedules here) and write in
   *rounds*: each composes up to :data:`ROUND_WINDOWS` windows, then all workers make the same number of
   collective writes (padding with empty ones), flush, and mark the round's windows written. Rank 0 is not in
   the file's communicator: it stays free to answer requests while the workers are inside a collective call.
3. The file is converted to the GeoTIFF/COG by the output stage (:func:`mpi_s2.parallel.convert.convert_store`),
   in the same job: workers read windows back and encode tiles, rank 0 places them.

Rank 0 shows three phases of progress: ``"staging"`` and ``"composing"`` (windows composed into the file) from
the counts the workers send with their requests and before each round, then ``"windows"`` (windows converted).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from mpi4py import MPI

from mpi_s2 import faults
from mpi_s2.errors import MpiS2Error, OutputError
from mpi_s2.output.fingerprint import describe_mismatch
from mpi_s2.output.hdf5_store import create_store, h5_path, read_attrs
from mpi_s2.parallel import termination
from mpi_s2.parallel.collective_rounds import CollectiveWindowWriter
from mpi_s2.parallel.convert import convert_store
from mpi_s2.parallel.leftovers import forget_note
from mpi_s2.parallel.output_stage import LocalFeed, MpiFeed, WorkFeed, receive_windows
from mpi_s2.parallel.progress import Progress
from mpi_s2.parallel.roles import PLANNER_RANK, Roles
from mpi_s2.parallel.runtime import fail_together
from mpi_s2.parallel.transport import scatter_batches
from mpi_s2.planning.plan import Plan
from mpi_s2.planning.scheduling import WorkPlan, table_to_items
from mpi_s2.report import RankStats
from mpi_s2.windows import Window
from mpi_s2.worker.items import ItemWorker

ROUND_WINDOWS = 4


def store_attributes(plan: Plan) -> dict:
    """What the file keeps to georeference and reproduce the output."""
    config = plan.config
    return {
        "crs_wkt": plan.grid.crs_wkt,
        "geotransform": list(plan.grid.geotransform),
        "band_count": plan.output.band_count,
        "nodata_meaning": ("band 4 is alpha: 0 where no input has data, else 255" if config.alpha else
                           "no alpha: 0 in all bands where no input has data; valid pixels are >= 1"),
        "gdal_metadata": dict(plan.output.spec.metadata),
        "creation_options": dict(plan.output.spec.creation_options),
        "inputs": [{"input": s.label, "files": list(s.files), "scl": s.scl, "radiometry": s.radiometry_note}
                   for s in plan.sources],
        "plan": {"window_size": list(plan.window_size), "cog": config.cog, "schedule": config.schedule},
        "fingerprint": plan.output.fingerprint,
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
                if not os.path.exists(path):
                    raise OutputError(f"{plan.config.output}: --resume: no partial run to resume (no {path}); "
                                      f"run without --resume")
                attrs = read_attrs(path)
                mismatch = describe_mismatch(attrs.get("fingerprint") or {}, plan.output.fingerprint or {})
                if mismatch:
                    raise OutputError(f"{path}: --resume: {mismatch}; the partial run is left as it is")
                done = set(np.flatnonzero(attrs["window_status"]).tolist())
            else:
                create_store(path, size=plan.grid.size, bands=plan.output.band_count, windows=list(plan.windows),
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


def run_hdf5_worker(wcomm: MPI.Comm, plan: Plan, work: ItemWorker, first, feed: WorkFeed,
                    stats: RankStats) -> None:
    """Do batches of work; write composed windows in collective rounds until no worker has any left."""
    bands = plan.output.band_count
    buffers = [np.empty(bands * plan.output.max_pixels, dtype=np.uint8) for _ in range(ROUND_WINDOWS)]
    queue = deque(first)
    writer = CollectiveWindowWriter(wcomm, h5_path(plan.config.output), len(plan.windows))
    # a stop marks this rank's windows of finished rounds written (outside HDF5 and MPI), so --resume reuses them
    def mark_on_stop(signum: int) -> None:
        writer.mark_written_on_stop()

    forget_marks = termination.on_signal(mark_on_stop)
    # no try/finally around the close: closing the file is collective, and a rank that failed must not wait in
    # it for the others (the job is aborted; what the status marks written is on disk); alone, a worker closes it
    try:
        _write_rounds(wcomm, plan, work, feed, writer, queue, buffers, stats)
    except BaseException:
        forget_marks()
        if wcomm.size == 1:
            writer.close_quietly()
        raise
    forget_marks()
    writer.close()


def _write_rounds(wcomm, plan, work, feed, writer, queue, buffers, stats) -> None:
    bands = plan.output.band_count
    exhausted = False
    written = 0
    while True:
        pending: list[tuple[int, Window, np.ndarray]] = []
        while len(pending) < ROUND_WINDOWS and not exhausted:
            if not queue:
                with stats.timer("wait"):
                    batch = feed.next(work.done())
                if not batch:
                    exhausted = True
                    break
                queue.extend(batch)
            item, what = queue.popleft()
            if not queue:
                feed.ask(work.done())
            if work.take(item.kind, what) is None:
                continue
            assert isinstance(what, Window)
            block = buffers[len(pending)][: bands * what.size].reshape(bands, *what.shape)
            work.fill(what, block)
            pending.append((item.index, what, block))
        feed.report(work.done())
        with stats.timer("write"):
            more = writer.write_round(pending)
        for _ in pending:
            written += 1
            faults.window_done(stats.rank, written)
        if not more:
            break


def compose_to_store(comm: MPI.Comm, roles: Roles, plan: Plan, worker: ItemWorker | None, stats: RankStats,
                     todo: list[int], progress: Progress) -> None:
    """Compose the windows ``todo`` (known on rank 0) and write them collectively into the HDF5 file."""
    wcomm = worker_comm(comm, roles)
    work = plan.work
    if roles.serial:
        assert worker is not None
        feed = LocalFeed(work, work.scheduler((0,), todo), progress, composed="composing")
        run_hdf5_worker(wcomm, plan, worker, feed.first(), feed, stats)
        return
    scheduler = work.scheduler(roles.worker_ranks, todo) if roles.is_planner else None
    first = scheduler.first_batches() if scheduler else {}
    mine = scatter_batches(comm, PLANNER_RANK, {r: work.table(b) for r, b in first.items()} if scheduler else None)
    if roles.is_planner:
        assert scheduler is not None
        for _ in receive_windows(comm, plan.output, work, scheduler, stats, progress, expected=0,
                                 composed="composing"):
            pass  # rank 0 only schedules: no window comes here, the workers' counts do
    else:
        assert worker is not None
        run_hdf5_worker(wcomm, plan, worker, table_to_items(mine), MpiFeed(comm), stats)
        wcomm.Free()
    with stats.timer("wait"):
        comm.Barrier()  # the file is closed by every writer before anyone reads it back


def compose_via_hdf5(comm: MPI.Comm, roles: Roles, plan: Plan, worker: ItemWorker | None, stats: RankStats,
                     open_progress: Callable[[Mapping[str, int]], Progress],
                     info: dict[str, Any]) -> tuple[list[int], tuple[int, int] | None]:
    """The HDF5 backend: windows written collectively to the file, then converted in the same job.

    ``open_progress(phases)`` makes the progress reporter once the windows to compute are known.
    Returns the windows computed and, on the writer rank, the quicklook's size (if one was asked for)."""
    path = h5_path(plan.config.output)
    start = time.perf_counter()
    done = prepare_store(comm, roles, plan)
    if roles.is_planner:
        forget_note(plan.config.output)  # this attempt starts: its failure is noted again
    todo = [i for i in range(len(plan.windows)) if i not in done] if roles.is_planner else []
    progress = open_progress({"staging": plan.work.stage_count(todo), "composing": len(todo),
                              "windows": len(plan.windows)})
    compose_to_store(comm, roles, plan, worker, stats, todo, progress)
    info.update(path=path, write_phase_s=round(time.perf_counter() - start, 3))
    start = time.perf_counter()
    convert_stats = RankStats(comm.rank, roles.describe())
    out = dataclasses.replace(plan.output, resume=False, fingerprint=None)  # converted whole, never resumed
    work = WorkPlan(plan.windows, schedule=plan.config.schedule)
    preview = convert_store(comm, roles, out, work, path, convert_stats, progress)
    ranks = comm.gather(convert_stats.finish(), root=PLANNER_RANK)
    info.update(convert_s=round(time.perf_counter() - start, 3), kept=plan.config.keep_h5)
    if roles.is_planner:
        assert ranks is not None
        info["convert_ranks"] = [{"rank": r["rank"], "role": r["role"], "seconds": r["seconds"],
                                  "cpu_s": r.get("cpu_s"), "quicklook_s": r["quicklook_s"]} for r in ranks]
        if not plan.config.keep_h5:
            os.unlink(path)
    return todo, preview
