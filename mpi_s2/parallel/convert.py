"""The HDF5 backend's job, and HDF5 -> GeoTIFF/COG conversion (in the same job, or ``mpi-s2 convert``).

Conversion is the writer backend with another source of pixels: rank 0 schedules the windows and places the
encoded tiles; workers read their windows from the HDF5 file (independent reads) and encode whole tiles, COG
overviews included, with the output stage of :mod:`mpi_s2.parallel.pipeline`. The result is the writer
backend's file, pixel for pixel and in its georeferencing and metadata.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

import numpy as np
from mpi4py import MPI

from mpi_s2.config import ComposeConfig
from mpi_s2.errors import MpiS2Error, OutputError
from mpi_s2.inputs.bands import Grid
from mpi_s2.inputs.decoding import DecodeCounter
from mpi_s2.output.hdf5_store import WindowReader, h5_path, read_attrs
from mpi_s2.output.profiles import creation_options as profile_options
from mpi_s2.output.tiles import workers_can_compress
from mpi_s2.output.free_space import full_disk_error
from mpi_s2.output.writer import OutputSpec, check_output_path, remove_partial, validate_creation_options
from mpi_s2.parallel import termination
from mpi_s2.parallel.leftovers import forget_note
from mpi_s2.parallel.hdf5_backend import prepare_store, run_hdf5_worker, worker_comm
from mpi_s2.parallel.pipeline import (LocalFeed, MpiFeed, batch_table, make_scheduler, open_output,
                                      receive_windows, write_output)
from mpi_s2.parallel.roles import PLANNER_RANK, Roles
from mpi_s2.parallel.runtime import CollectiveFailure
from mpi_s2.parallel.transport import scatter_batches
from mpi_s2.planning.plan import Plan, plan_cog
from mpi_s2.planning.scheduling import table_to_items
from mpi_s2.planning.windows import Window, plan_windows
from mpi_s2.progress import Progress
from mpi_s2.report import RankStats, build_report, write_report
from mpi_s2.text import plural

log = logging.getLogger("mpi_s2")


def compose_to_store(comm: MPI.Comm, roles: Roles, plan: Plan, luts: np.ndarray, stats: RankStats,
                     counter: DecodeCounter) -> list[int]:
    """Compose the windows not yet in the HDF5 file and write them collectively; return those computed."""
    done = prepare_store(comm, roles, plan)
    if roles.is_planner:
        forget_note(plan.config.output)  # this attempt starts: its failure is noted again
    todo = [i for i in range(len(plan.windows)) if i not in done] if roles.is_planner else []
    wcomm = worker_comm(comm, roles)
    if roles.serial:
        scheduler = make_scheduler(plan, roles, todo)
        first = table_to_items(batch_table(plan, scheduler.first_batches()[0]))
        run_hdf5_worker(wcomm, plan, luts, first, LocalFeed(plan, scheduler), stats, counter)
        return todo
    scheduler = make_scheduler(plan, roles, todo) if roles.is_planner else None
    first = scheduler.first_batches() if scheduler else {}
    mine = scatter_batches(comm, PLANNER_RANK,
                           {r: batch_table(plan, b) for r, b in first.items()} if scheduler else None)
    if roles.is_planner:
        assert scheduler is not None
        for _ in receive_windows(comm, plan, scheduler, stats, Progress(0, enabled=False), expected=0):
            pass  # rank 0 only schedules: no window comes here
    else:
        run_hdf5_worker(wcomm, plan, luts, table_to_items(mine), MpiFeed(comm), stats, counter)
        wcomm.Free()
    with stats.timer("wait"):
        comm.Barrier()  # the file is closed by every writer before anyone reads it back
    return todo


def conversion_plan(plan: Plan) -> Plan:
    """The compose plan, with the HDF5 file as the only source: no staging, every window ready, no journal."""
    return dataclasses.replace(plan, sources=(), staged=(), stage_units=(),
                               independent=(True,) * len(plan.windows), fingerprint=None,
                               config=dataclasses.replace(plan.config, resume=False))


def convert_store(comm: MPI.Comm, roles: Roles, plan: Plan, path: str, stats: RankStats) -> None:
    """Write ``plan``'s output from the HDF5 file at ``path``: workers read and encode, rank 0 places."""
    assembler = open_output(comm, roles, plan)
    reader = WindowReader(path) if roles.is_worker else None
    try:
        luts = np.empty((0, 3, 0), dtype=np.uint8)  # unused: pixels come from the file
        write_output(comm, roles, plan, luts, stats, DecodeCounter(), assembler, list(range(len(plan.windows))),
                     renderer=reader)
    finally:
        if reader is not None:
            reader.close()


def plan_from_store(path: str, output: str, *, cog: bool, overrides: dict[str, str], overwrite: bool,
                    schedule: str, progress: bool, report: str | None) -> Plan:
    """``mpi-s2 convert``: the conversion plan of a complete HDF5 file (rank 0)."""
    if not os.path.isfile(path):
        raise OutputError(f"{path}: no such HDF5 file")
    attrs = read_attrs(path)
    status = attrs["window_status"]
    if not status.all():
        written = f"{int(status.sum())} of {plural(status.size, 'window')} written"
        raise OutputError(f"{path}: incomplete ({written}); finish it "
                          f"with 'compose --backend hdf5 --resume' and the same arguments")
    check_output_path(output, overwrite=overwrite, inputs=(path,))
    bands, height, width = attrs["shape"]
    options = {**attrs["creation_options"], **overrides}
    options = profile_options("raw", options, alpha=bands == 4)  # the stored options, then the user's
    validate_creation_options(output, options, bands)
    grid = Grid(width, height, tuple(attrs["geotransform"]), attrs["crs_wkt"])
    config = ComposeConfig(output=output, alpha=bands == 4, cog=cog, schedule=schedule, creation_options=options,
                           overwrite=overwrite, progress=progress, report=report)
    window_size = tuple(attrs["plan"]["window_size"])
    levels = encoded = 0
    if cog:
        window_size, levels, encoded = plan_cog(config, options, window_size, grid.size)
    written = [Window(*w) for w in attrs["plan"]["windows"]]
    windows = tuple(w for w in plan_windows(grid.size, window_size)
                    if any(_overlap(w, v) for v in written))
    spec = OutputSpec(output, grid, bands, options, attrs["gdal_metadata"])
    return Plan(config, grid, (), window_size, window_size, windows, spec, empty_windows=0,
                independent=(True,) * len(windows), writer_encodes_because=workers_can_compress(
                    options, window_size, grid.size), overview_levels=levels, worker_overview_levels=encoded)


def _overlap(a: Window, b: Window) -> bool:
    return (a.col_off < b.col_off + b.width and b.col_off < a.col_off + a.width
            and a.row_off < b.row_off + b.height and b.row_off < a.row_off + a.height)


def convert(path: str, output: str, comm: MPI.Comm, *, cog: bool = False, overrides: dict[str, str] | None = None,
            overwrite: bool = False, schedule: str = "dynamic", progress: bool = True,
            report: str | None = None) -> dict[str, Any] | None:
    """``mpi-s2 convert RUN.h5 -o OUT.tif``: the report on rank 0, None elsewhere."""
    start = time.perf_counter()
    roles = Roles(comm.rank, comm.size)
    stats = RankStats(comm.rank, roles.describe())
    outcome: Plan | MpiS2Error | None = None
    if roles.is_planner:
        try:
            outcome = plan_from_store(path, output, cog=cog, overrides=overrides or {}, overwrite=overwrite,
                                      schedule=schedule, progress=progress, report=report)
        except MpiS2Error as exc:
            outcome = exc
    shared = outcome if not isinstance(outcome, Plan) else dataclasses.replace(outcome, windows=(), independent=())
    shared = comm.bcast(shared, root=PLANNER_RANK)
    if isinstance(shared, MpiS2Error):
        raise CollectiveFailure(shared)
    plan = outcome if roles.is_planner else shared
    assert isinstance(plan, Plan)
    # a conversion is never resumed (the HDF5 file is the source): a failure or a signal leaves nothing beside it
    forget_cleanup = termination.on_signal(lambda signum: remove_partial(output) if roles.is_writer else None)
    try:
        convert_store(comm, roles, plan, path, stats)
    except BaseException as exc:
        full = full_disk_error(exc, output, [output]) if roles.is_writer else None
        if roles.is_writer:
            remove_partial(output)
        if full:
            raise full from exc
        raise
    finally:
        forget_cleanup()
    ranks = comm.gather(stats.finish(), root=PLANNER_RANK)
    if not roles.is_planner:
        return None
    wall = time.perf_counter() - start
    result = build_report({"output": output, "converted_from": os.path.abspath(path), "size": list(plan.grid.size),
                           "pixels": plan.grid.width * plan.grid.height,
                           "windows": len(plan.windows), "mpi_ranks": comm.size, "cog": cog,
                           "creation_options": dict(plan.output.creation_options)}, ranks, wall)
    if report:
        write_report(report, result)
    log.info("converted %s to %s in %.1f s", path, output, wall)
    return result


def store_path(config: ComposeConfig) -> str:
    return h5_path(config.output)
