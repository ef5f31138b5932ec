"""The compose job: each rank plays its role(s) on one communicator.

1. The planner (rank 0) inspects inputs and plans; the plan (metadata only) is broadcast and the lookup
   tables are broadcast as one uint8 buffer, so every rank applies the very same tables.
2. The output stage (:mod:`mpi_s2.parallel.output_stage`) then runs the windows: rank 0 scatters each worker's
   first batch of work definitions (staging units, then output windows), workers compose and encode them, and
   the writer (rank 0 again) places the tiles and renames the file into place once complete. The HDF5 backend
   (:mod:`mpi_s2.parallel.hdf5_backend`) writes the windows collectively to an HDF5 file first, then converts it.
3. Rank 0 gathers every rank's accounting into the run report.
A one-rank job runs the same worker loop and hands work items and windows over directly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
from mpi4py import MPI

from mpi_s2.config import ComposeConfig
from mpi_s2.errors import CollectiveFailure, MpiS2Error, OutputError
from mpi_s2.inputs.bands import epsg_code
from mpi_s2.inputs.block_counts import DecodeCounter, merge_counts
from mpi_s2.output.paths import partial_path
from mpi_s2.output.tiff_assembly import TiffAssembler
from mpi_s2.parallel import termination
from mpi_s2.parallel.gdal_env import (
    DEFAULT_CACHE_MB,
    block_cache,
    config_options,
    decoder_threads,
    rank_options,
    reduce_cache_for_remote,
    worker_cache_mb,
)
from mpi_s2.parallel.hdf5_backend import compose_via_hdf5
from mpi_s2.parallel.leftovers import (
    WRITER_WAIT_S,
    clean_up,
    disk_full,
    forget_note,
    on_signal_cleanup,
    wait_until_gone,
)
from mpi_s2.parallel.output_stage import open_output, write_output
from mpi_s2.parallel.progress import Progress
from mpi_s2.parallel.roles import PLANNER_RANK, WRITER_RANK, Roles
from mpi_s2.parallel.run_report import RunReport
from mpi_s2.parallel.stretch_pass import (
    count_values,
    counting_progress,
    keep_stretch,
    known_limits,
    values_directory,
)
from mpi_s2.pixels.radiometry import LUT_SIZE
from mpi_s2.pixels.stretch import STRETCH_ITEM, StretchLimits, kept_display_luts
from mpi_s2.planning.mistakes import likely_mistakes
from mpi_s2.planning.plan import Plan, make_plan, plan_luts
from mpi_s2.planning.stage_plan import remove_staging
from mpi_s2.report import RankStats, build_report, pixel_fractions, quicklook_seconds
from mpi_s2.text import plural
from mpi_s2.worker.items import ItemWorker, compose_worker
from mpi_s2.worker.kept_values import KeptValuesSource, ValueStore

log = logging.getLogger("mpi_s2")


def broadcast_plan(comm: MPI.Comm, roles: Roles, config: ComposeConfig, single_node: bool = False) -> Plan:
    """Plan on rank 0 and broadcast it without the work lists (workers get their work by scatter and request).

    An input error found while planning is broadcast too, and raised on every rank as a
    :class:`CollectiveFailure`, so the job ends cleanly with one message and no abort.
    """
    outcome: Plan | MpiS2Error | None = None
    if roles.is_planner:
        try:
            outcome = make_plan(config, single_node)
        except MpiS2Error as exc:
            outcome = exc
    shared = comm.bcast(outcome.for_workers() if isinstance(outcome, Plan) else outcome, root=PLANNER_RANK)
    if isinstance(shared, MpiS2Error):
        raise CollectiveFailure(shared)
    assert isinstance(shared, Plan)
    return outcome if roles.is_planner else shared  # type: ignore[return-value]


def broadcast_luts(comm: MPI.Comm, roles: Roles, plan: Plan, limits: StretchLimits | None = None) -> np.ndarray:
    """The planner's ``(n_sources, 3, 65536)`` lookup tables on every rank (one ``Bcast`` of a uint8 buffer):
    the contract's, or those of percentile ``limits``."""
    luts = plan_luts(plan, limits) if roles.is_planner else np.empty((len(plan.sources), 3, LUT_SIZE), dtype=np.uint8)
    comm.Bcast([luts, MPI.UINT8_T], root=PLANNER_RANK)
    return luts


def log_likely_mistakes(config: ComposeConfig, plan: Plan, workers: int) -> None:
    """Rank 0: one warning line for each likely mistake (:mod:`mpi_s2.planning.mistakes`); the run goes on."""
    for line in likely_mistakes(config, len(plan.windows), workers):
        log.warning("warning: %s", line)


def compose(config: ComposeConfig, comm: MPI.Comm) -> dict[str, Any] | None:
    """Run the compose job on ``comm``. Returns the run report on rank 0, ``None`` elsewhere.

    Rank 0 writes the report (``--report``) whatever the outcome: ok, failed or stopped
    (:mod:`mpi_s2.parallel.run_report`)."""
    writer = comm.bcast((socket.gethostname(), os.getpid()), root=WRITER_RANK) if comm.size > 1 else None
    with RunReport(config.report, comm.rank, comm.size) as run, _workers_outwait_the_writer(comm, writer):
        run.learn(output=config.output, backend=config.backend)
        return _compose(config, comm, run, writer)


@contextlib.contextmanager
def _workers_outwait_the_writer(comm: MPI.Comm, writer: tuple[str, int] | None) -> Iterator[None]:
    """While the job runs, a stopped worker (even one whose work is done) lets the writer finish its stop first:
    mpirun ends every rank at once when one of them exits, which would cut the writer's journal, its note and the
    report short."""
    if writer is None or comm.rank == WRITER_RANK:
        yield
        return
    def outwait(signum: int) -> None:
        wait_until_gone(*writer, timeout=WRITER_WAIT_S)

    forget = termination.on_signal(outwait)
    try:
        yield
    finally:
        forget()


def _compose(config: ComposeConfig, comm: MPI.Comm, run: RunReport,
             writer: tuple[str, int] | None) -> dict[str, Any] | None:
    start = time.perf_counter()
    roles = Roles(comm.rank, comm.size)
    stats = RankStats(comm.rank, roles.describe())
    counter = DecodeCounter()
    threads, nodes = decoder_threads(comm, roles)
    stats.decoder_threads = threads
    preview: tuple[int, int] | None = None
    cache_mb = worker_cache_mb(config.composite) if roles.is_worker else DEFAULT_CACHE_MB
    with config_options(rank_options(threads, cache_mb)), block_cache(cache_mb):
        plan = broadcast_plan(comm, roles, config, single_node=nodes == 1)
        if roles.is_worker:
            reduce_cache_for_remote(f for source in plan.sources for f in source.files)
        if plan.complete:
            return _already_complete(plan, run, comm.size) if roles.is_planner else None
        if roles.is_planner:
            log_likely_mistakes(config, plan, len(roles.worker_ranks))
        if run.writes:
            run.learn(crs_epsg=epsg_code(plan.grid.crs_wkt), size=list(plan.grid.size), windows=len(plan.windows),
                      stage_units=len(plan.stage_units),
                      composite={"mode": config.composite, "order": config.order,
                                 "window": list(plan.window_size), "observations_per_window": plan.observations})
        if roles.is_planner:
            _log_plan(plan, comm.size, threads, nodes)
        hdf5: dict[str, Any] = {}
        first_worker = not roles.is_writer and comm.rank == min(roles.worker_ranks)
        forget_cleanup = termination.on_signal(on_signal_cleanup(plan, roles.is_writer, first_worker,
                                                                 writer or ("", 0)))
        progress: Progress | None = None
        forget_commit: list[Callable[[], None]] = []  # the writer's commit on a stop, once it has an assembler

        def open_progress(phases: Mapping[str, int]) -> Progress:
            """The writer rank's progress (shown unless -q, and in --progress-file); silent elsewhere."""
            nonlocal progress
            progress = Progress(phases, enabled=config.progress and roles.is_writer,
                                progress_file=config.progress_file if roles.is_writer else None)
            run.progress = progress
            return progress

        try:
            limits = known_limits(comm, roles, plan) if config.stretch != "fixed" or config.stretch_from else None
            counted = limits is None and config.stretch != "fixed"
            if counted:  # the counting pass: every window composed once, its values kept for the rendering
                limits = count_values(comm, roles, plan, stats, counter, counting_progress(open_progress, plan),
                                      keep=not config.stretch_only)
                assert progress is not None
                progress.close()
            if limits is not None:
                run.learn(stretch=limits.as_dict())
                if roles.is_planner:
                    log.info("stretch %s (%s): %s, over %s", config.stretch, limits.bands,
                             _describe_limits(limits), plural(limits.pixels, "pixel"))
            if config.stretch_only:
                assert limits is not None
                if roles.is_planner:
                    write_stretch(config.output, limits)
                todo, preview = list[int](), None
            else:
                if limits is not None:
                    plan = with_stretch(plan, limits, rendering_pass=counted)
                luts = broadcast_luts(comm, roles, plan, None if counted else limits)
                worker = None
                if roles.is_worker:
                    worker = (kept_values_worker(plan, limits, stats, counter) if counted and limits is not None
                              else compose_worker(plan, luts, stats, counter, limits))
                todo, preview = _write(comm, roles, plan, worker, stats, open_progress, hdf5, forget_commit,
                                       limits)
        except CollectiveFailure:
            remove_staging(plan.staging_directory)
            raise  # before anything was written (a resume that does not match: nothing touched)
        except BaseException as exc:
            full = disk_full(plan, exc)
            clean_up(plan, full or exc)
            if full:
                raise full from exc
            raise
        finally:
            if progress is not None:
                progress.close()  # a run that stops short ends its progress file with its last counts
            for forget in forget_commit:
                forget()
            forget_cleanup()
    ranks = comm.gather(stats.finish(counter), root=PLANNER_RANK)
    if not roles.is_planner:
        return None
    assert ranks is not None
    remove_staging(plan.staging_directory)
    wall = time.perf_counter() - start
    decodes = merge_counts([rank.pop("decode") for rank in ranks])
    for rank in ranks:
        log.debug("rank %d (%s, %s): %s, %.1f s CPU, peak %.0f MB", rank["rank"], rank["role"], rank["host"],
                  plural(rank["windows"], "window"), rank["cpu_s"], rank["peak_rss_mb"])
    report = build_report(_summary(plan, config, comm.size, decodes), ranks, wall)
    report["windows_reused"] = len(plan.windows) - len(todo)
    report["windows_computed"] = len(todo)
    report["pixel_fractions"] = _pixel_fractions(plan, todo, ranks)
    fractions = report["pixel_fractions"]
    if fractions and fractions["valid"] == 0 and len(todo) == len(plan.windows):
        log.warning("%s: no pixel has a valid observation (%s): the output is all nodata", plan.config.output,
                    "all masked or DN 0" if fractions["cloud_masked"] else "every input is DN 0 there")
    report["backend"] = config.backend
    if hdf5:
        report["hdf5"] = hdf5
    if config.quicklook and preview is not None:
        # its own time: the HDF5 backend makes it while converting, whose ranks are accounted apart
        report["quicklook"] = {"path": config.quicklook, "size": list(preview),
                               **quicklook_seconds(hdf5["convert_ranks"] if hdf5 else ranks or [])}
    report = run.ok(report)
    log.info("wrote %s (%d x %d, %s, %s) in %.1f s", config.output, plan.grid.width, plan.grid.height,
             plural(len(plan.windows), "window"), plural(comm.size, "rank"), wall)
    return report


def _write(comm: MPI.Comm, roles: Roles, plan: Plan, worker: ItemWorker | None, stats: RankStats,
           open_progress: Callable[[Mapping[str, int]], Progress], hdf5: dict[str, Any],
           forget_commit: list[Callable[[], None]], limits: StretchLimits | None) -> tuple[list[int], Any]:
    """The output stage of either backend: the windows computed, and the quicklook's size on the writer."""
    config = plan.config
    if config.backend == "hdf5":
        if limits is not None and roles.is_planner:
            keep_stretch(config.output, limits)  # a resumed run applies the same limits
        return compose_via_hdf5(comm, roles, plan, worker, stats, open_progress, hdf5)
    assembler = open_output(comm, roles, plan.output)
    if roles.is_writer:
        forget_note(config.output)  # this attempt starts: its failure is noted again
        if limits is not None and assembler is not None:
            keep_stretch(config.output, limits)  # beside the journal: a resumed run applies the same limits
    if assembler is not None:  # a stop journals what is placed at once, keeps the partial run, and
        # syncs last (mpirun's SIGKILL may cut that: the page cache keeps what was written)
        forget_commit.append(termination.on_signal(lambda signum: commit_on_stop(assembler)))
        forget_commit.append(termination.on_signal(lambda signum: assembler.sync_placed(), last=True))
    todo = [i for i in range(len(plan.windows)) if not (assembler and i in assembler.done)]
    phases = {"staging": plan.work.stage_count(todo), "windows": len(todo)}
    preview = write_output(comm, roles, plan.output, plan.work, worker, stats, open_progress(phases), assembler,
                           todo)
    return todo, preview


def _describe_limits(limits: StretchLimits) -> str:
    pairs = limits.limits if limits.bands == "per-band" else limits.limits[:1]
    return ", ".join(f"{low:g}..{high:g}" for low, high in pairs)


def with_stretch(plan: Plan, limits: StretchLimits, *, rendering_pass: bool) -> Plan:
    """``plan`` writing the stretch into the output's metadata; after a counting pass, its rendering pass: the
    windows only (the staged copies are made, and the windows read the kept values)."""
    spec = plan.output.spec
    metadata = {**spec.metadata, STRETCH_ITEM: limits.metadata()}
    output = dataclasses.replace(plan.output, spec=dataclasses.replace(spec, metadata=metadata))
    plan = dataclasses.replace(plan, output=output)
    return dataclasses.replace(plan, stage_units=(), independent=()) if rendering_pass else plan


def kept_values_worker(plan: Plan, limits: StretchLimits, stats: RankStats, counter: DecodeCounter) -> ItemWorker:
    """The rendering pass's worker: the counting pass's kept values through the limits' display tables."""
    luts = kept_display_luts(limits, plan.config.gamma, reserve_zero=not plan.config.alpha)
    return ItemWorker(KeptValuesSource(ValueStore(values_directory(plan)), luts, plan.config.alpha), stats, counter)


def write_stretch(path: str, limits: StretchLimits) -> None:
    """``mpi-s2 stretch``'s output: the limits as JSON, written whole or not at all."""
    tmp = partial_path(path)
    try:
        with open(tmp, "w") as fh:
            json.dump(limits.as_dict(), fh, indent=1)
            fh.write("\n")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OutputError(f"{path}: cannot write the stretch: {exc.strerror}") from None
    log.info("wrote %s", path)


def _already_complete(plan: Plan, run: RunReport, size: int) -> dict[str, Any]:
    """``--resume=auto`` and the output is complete with this run's fingerprint: one line, a report, exit 0."""
    log.warning("%s is already complete, with the same inputs and options: nothing to do (--resume=auto)",
                plan.config.output)
    n = len(plan.windows)
    return run.ok({"output": plan.config.output, "already_complete": True, "mpi_ranks": size, "windows": n,
                   "windows_reused": n, "windows_computed": 0, "backend": plan.config.backend})


def commit_on_stop(assembler: TiffAssembler) -> None:
    """A signal ends the writer: sync and journal every window it has placed, so that --resume reuses them."""
    start = time.perf_counter()
    committed = assembler.commit_placed()
    log.debug("on the stop: %s journalled in %.3f s, to be synced last (%d placed in all)",
              plural(committed, "window"), time.perf_counter() - start, len(assembler.done))


def _pixel_fractions(plan: Plan, todo: list[int], ranks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Valid, cloud-masked and nodata fractions of the output, or of the windows computed in a resumed run."""
    if len(todo) == len(plan.windows):
        return pixel_fractions(ranks, plan.grid.width * plan.grid.height, "the whole output")
    reused = len(plan.windows) - len(todo)
    return pixel_fractions(ranks, sum(plan.windows[i].size for i in todo),
                           f"the {plural(len(todo), 'window')} computed in this run (not the "
                           f"{plural(reused, 'window')} --resume reused)")


def _log_plan(plan: Plan, ranks: int, threads: int, nodes: int) -> None:
    """``-v``: what the planner decided, on rank 0."""
    out = plan.output
    log.debug("plan: %d x %d pixels, windows of %d x %d: %s to compute, %d empty; %s on %s, %s; %s",
              plan.grid.width, plan.grid.height, *out.window_size, len(out.windows), out.empty_windows,
              plural(ranks, "rank"), plural(nodes, "node"), plural(threads, "decoder thread") + " per rank",
              "tiles encoded by the workers" if out.writer_encodes_because is None
              else f"tiles encoded by the writer: {out.writer_encodes_because}")
    if plan.stage_units:
        log.debug("staging: %s of %s in %s", plural(len(plan.stage_units), "unit"),
                  plural(len(plan.staged), "misaligned file"), plan.staging_directory)
    for source in plan.sources:
        log.debug("input %s: %s", source.label, source.radiometry_note)


def _summary(plan: Plan, config: ComposeConfig, size: int, decodes: dict[int, dict[str, int]]) -> dict[str, Any]:
    out = plan.output
    return {
        "output": config.output,
        "inputs": [_describe_source(plan, i, decodes.get(i, {"decoded": 0, "distinct": 0}))
                   for i in range(len(plan.sources))],
        "size": list(plan.grid.size),
        "geotransform": list(plan.grid.geotransform),
        "window_size": list(out.window_size),
        "block_size": list(plan.block_size),
        "windows": len(out.windows),
        "empty_windows_skipped": out.empty_windows,
        "stage_units": len(plan.stage_units),
        "staging_directory": plan.staging_directory,
        "schedule": config.schedule,
        "pixels": plan.grid.width * plan.grid.height,
        "mpi_ranks": size,
        "max_reflectance": config.max_reflectance,
        "gamma": config.gamma,
        "cloud_mask_classes": list(config.mask_classes) if config.cloud_mask else None,
        "resampling": config.resampling if any(s.reprojected for s in plan.sources) else None,
        "overlap_rule": "first valid pixel in input order",
        "alpha": config.alpha,
        "creation_options": dict(out.spec.creation_options),
        "cog": {"overview_levels": out.overview_levels, "levels_encoded_with_windows": out.worker_overview_levels}
        if config.cog else None,
        "tiles_encoded_by": ("workers" if out.writer_encodes_because is None and size > 1
                             else "the one rank" if out.writer_encodes_because is None
                             else f"writer: {out.writer_encodes_because}"),
    }


def _describe_source(plan: Plan, i: int, blocks: dict[str, int]) -> dict[str, Any]:
    source = plan.sources[i]
    return {
        "input": source.label,
        "files": {"red": source.files[0], "green": source.files[1], "blue": source.files[2], "scl": source.scl},
        "placement": dataclasses.asdict(source.placement),
        "reprojected": source.reprojected,
        "staged": [f.original for f in plan.staged if f.original in (*source.files, source.scl)],
        "blocks": {"total": plan.blocks_total[i], **blocks},
        "radiometry": {band: {"offset": s.offset, "quantification": s.scale}
                       for band, s in zip(("B04", "B03", "B02"), source.stretches, strict=True)},
        "radiometry_note": source.radiometry_note,
        **({key: value for key, value in plan.inputs[i].items() if key != "input"} if plan.inputs else {}),
    }
