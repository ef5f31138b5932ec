"""The counting pass of a percentile stretch: every window composed once into kept values and counted, one
``Allreduce`` of the per-band histograms, the limits derived on rank 0 and broadcast.

Scheduling is the run's own (the same staging units and windows, dynamic or static): rank 0 hands out work and
counts what the workers report, the workers compose, count and keep their windows' values (in the staging
directory; :mod:`mpi_s2.worker.kept_values`). The rendering pass then reads those values back.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from mpi4py import MPI

from mpi_s2.errors import MpiS2Error
from mpi_s2.inputs.block_counts import DecodeCounter
from mpi_s2.inputs.cloudmask import invalid_class_lut
from mpi_s2.output.paths import spool_path
from mpi_s2.parallel.output_stage import LocalFeed, MpiFeed, receive_windows, run_worker
from mpi_s2.parallel.progress import Progress
from mpi_s2.parallel.roles import PLANNER_RANK, Roles
from mpi_s2.parallel.runtime import fail_together
from mpi_s2.parallel.transport import scatter_batches
from mpi_s2.pixels.stretch import (
    HIST_SIZE,
    StretchLimits,
    ValueHistogram,
    ValueTables,
    limits_from_dict,
    parse_stretch,
    percentile_limits,
    read_limits,
)
from mpi_s2.planning.plan import Plan
from mpi_s2.planning.scheduling import table_to_items
from mpi_s2.report import RankStats
from mpi_s2.worker.compose import WindowComposer
from mpi_s2.worker.items import ItemWorker
from mpi_s2.worker.kept_values import CountingSource, ValueStore

log = logging.getLogger("mpi_s2")

COUNTED = "counted"  # the progress phase of the counting pass


class NoSink:
    """The counting pass sends no window anywhere."""

    def acquire(self, slot: int) -> None:
        pass

    def deliver(self, slot: int, message: np.ndarray, index: int, block: np.ndarray) -> None:
        pass

    def close(self) -> None:
        pass


def values_directory(plan: Plan) -> str:
    """Where the counting pass keeps its values: in the run's staging directory."""
    assert plan.staging_directory
    return os.path.join(plan.staging_directory, "values")


def count_values(comm: MPI.Comm, roles: Roles, plan: Plan, stats: RankStats, counter: DecodeCounter,
                 progress: Progress, keep: bool) -> StretchLimits:
    """The counting pass over every window of ``plan``: the limits of its ``--stretch``, on every rank.
    ``keep``: keep the composed values for the rendering pass."""
    config = plan.config
    request = parse_stretch(config.stretch, config.stretch_bands)
    store = None
    if keep:
        store = ValueStore(values_directory(plan))
        if roles.is_planner:
            os.makedirs(store.directory, exist_ok=True)
        comm.Barrier()
    source: CountingSource | None = None
    worker: ItemWorker | None = None
    if roles.is_worker:
        tables = ValueTables([tuple(st.offset for st in s.stretches) for s in plan.sources])
        composer = WindowComposer(plan.sources, tables, alpha=False, max_pixels=plan.output.max_pixels,
                                  mask_lut=invalid_class_lut(config.mask_classes) if config.cloud_mask else None,
                                  counter=counter, composite=config.composite, keep_values=True,
                                  aoi=plan.aoi)
        source = CountingSource(composer, plan.output.max_pixels, store)
        worker = ItemWorker(source, stats, counter, plan.staged)
    todo = list(range(len(plan.windows)))
    work = plan.work
    if roles.serial:
        assert worker is not None
        feed = LocalFeed(work, work.scheduler((0,), todo), progress, composed=COUNTED)
        run_worker(plan.output, worker, feed.first(), feed, NoSink(), stats, phase=COUNTED)
    else:
        scheduler = work.scheduler(roles.worker_ranks, todo) if roles.is_planner else None
        first = scheduler.first_batches() if scheduler else {}
        mine = scatter_batches(comm, PLANNER_RANK,
                               {r: work.table(b) for r, b in first.items()} if scheduler else None)
        if roles.is_planner:
            assert scheduler is not None
            for _ in receive_windows(comm, plan.output, work, scheduler, stats, progress, expected=0,
                                     composed=COUNTED):
                pass  # rank 0 only schedules; the workers report their counts
        else:
            assert worker is not None
            run_worker(plan.output, worker, table_to_items(mine), MpiFeed(comm), NoSink(), stats,
                       phase=COUNTED)
    mine_counts = source.histogram.counts if source is not None else np.zeros((3, HIST_SIZE), dtype=np.int64)
    total = np.zeros_like(mine_counts) if roles.is_planner else None
    with stats.timer("wait"):
        comm.Reduce([mine_counts, MPI.INT64_T], [total, MPI.INT64_T] if total is not None else None,
                    op=MPI.SUM, root=PLANNER_RANK)
    found: dict[str, Any] | None = None
    error: MpiS2Error | None = None
    if roles.is_planner:
        assert total is not None
        try:
            found = percentile_limits(ValueHistogram(total), request).as_dict()
        except MpiS2Error as exc:
            error = exc
    fail_together(comm, error, PLANNER_RANK)  # every rank raises it, rank 0 reports it once
    limits = limits_from_dict(comm.bcast(found, root=PLANNER_RANK), "the counting pass")
    stats.windows, stats.pixels = 0, 0  # the rendering pass places every window once more
    return limits


def stretch_file(output: str) -> str:
    """The partial run's stretch, beside its journal: a resumed run applies it instead of counting again."""
    return spool_path(output, "stretch")


def stored_stretch(output: str) -> StretchLimits | None:
    """The limits a partial run of ``output`` applied, or None."""
    path = stretch_file(output)
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return limits_from_dict(json.load(fh), path)


def keep_stretch(output: str, limits: StretchLimits) -> None:
    """Rank 0: record the limits of this run beside its partial output, atomically."""
    path = stretch_file(output)
    with open(path + ".tmp", "w") as fh:
        json.dump(limits.as_dict(), fh)
    os.replace(path + ".tmp", path)


def known_limits(comm: MPI.Comm, roles: Roles, plan: Plan) -> StretchLimits | None:
    """The limits a run applies without counting, on every rank: ``--stretch-from``, or those of the partial run
    it resumes; None when it counts (or the stretch is fixed)."""
    config = plan.config
    found: dict[str, Any] | None = None
    error: MpiS2Error | None = None
    if roles.is_planner:
        try:
            if config.stretch_from:
                found = read_limits(config.stretch_from).as_dict()
            elif (config.resume or config.resume_auto) and config.stretch != "fixed" and not config.stretch_only:
                stored = stored_stretch(config.output)
                found = stored.as_dict() if stored else None
        except MpiS2Error as exc:
            error = exc
    fail_together(comm, error, PLANNER_RANK)
    found = comm.bcast(found, root=PLANNER_RANK)
    return limits_from_dict(found, "--stretch-from") if found is not None else None


def counting_progress(open_progress: Callable[[Mapping[str, int]], Progress], plan: Plan) -> Progress:
    todo = list(range(len(plan.windows)))
    return open_progress({"staging": plan.work.stage_count(todo), COUNTED: len(todo)})
