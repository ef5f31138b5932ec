"""The compose pipeline: each rank plays its role(s) on one communicator.

1. The planner (rank 0) inspects inputs and plans; the plan (metadata only) is broadcast and the lookup
   tables are broadcast as one uint8 buffer, so every rank applies the very same tables.
2. The planner scatters each worker's first batch of work definitions (``Scatterv`` of an int64 table):
   staging units (decode a misaligned source's blocks once, into a raw copy), then output windows.
3. Workers do their batch, then ask rank 0 for more (dynamic schedule) or for their next phase (static).
   For a window they read its sources, apply the tables, compose, and send the uint8 block to the writer.
4. The writer (rank 0 again) answers requests, receives blocks, alone writes the GeoTIFF, and renames it
   into place once complete.
A one-rank job runs the same worker loop and hands blocks straight to the writer.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
from mpi4py import MPI

from mpi_s2 import faults
from mpi_s2.config import ComposeConfig
from mpi_s2.errors import MpiS2Error, OutputError
from mpi_s2.inputs.decoding import DecodeCounter, merge_counts
from mpi_s2.output.hdf5_store import h5_path
from mpi_s2.output.quicklook import write_quicklook
from mpi_s2.output.tiff_assembly import TiffAssembler
from mpi_s2.output.tiles import unpack_tiles
from mpi_s2.output.window_encoding import WindowEncoder
from mpi_s2.output.writer import GeoTiffWriter
from mpi_s2.parallel.coarse_levels import encode_strips, encode_strips_here, serve_strips
from mpi_s2.parallel import termination
from mpi_s2.parallel.gdal_env import config_options, decoder_threads, rank_options
from mpi_s2.parallel.leftovers import clean_up, disk_full, forget_note, on_signal_cleanup, resumable
from mpi_s2.parallel.roles import PLANNER_RANK, WRITER_RANK, Roles
from mpi_s2.parallel.runtime import CollectiveFailure, fail_together
from mpi_s2.parallel.work_items import ItemWorker, WindowSource
from mpi_s2.parallel.transport import (BLOCK_TAG, HEADER_BYTES, PROGRESS_TAG, REQUEST_TAG, SLOTS, BlockReceiver,
                                       BlockSender, WorkRequests, message_buffer, pack_block, receive_count, tile_message,
                                       BatchSender, scatter_batches, wait_for_message)
from mpi_s2.pixels.radiometry import LUT_SIZE
from mpi_s2.planning.plan import Plan, make_plan, plan_luts
from mpi_s2.planning.scheduling import Scheduler, WorkItem, items_to_table, table_to_items
from mpi_s2.planning.stage_plan import StageUnit, remove_staging
from mpi_s2.planning.windows import Window
from mpi_s2.progress import Progress
from mpi_s2.report import RankStats, build_report, write_report
from mpi_s2.text import plural

log = logging.getLogger("mpi_s2")

Batch = list[tuple[WorkItem, "StageUnit | Window"]]


class BlockSink(Protocol):
    def acquire(self, slot: int) -> None: ...
    def deliver(self, slot: int, message: np.ndarray, index: int, block: np.ndarray) -> None: ...
    def close(self) -> None: ...


class LocalSink:
    """One-rank job: blocks go straight into the writer, no MPI message."""

    def __init__(self, plan: Plan, writer: GeoTiffWriter, stats: RankStats, progress: Progress):
        self.windows, self.writer, self.stats, self.progress = plan.windows, writer, stats, progress
        self.done = 0

    def acquire(self, slot: int) -> None:
        pass

    def deliver(self, slot: int, message: np.ndarray, index: int, block: np.ndarray) -> None:
        with self.stats.timer("write"):
            self.writer.write(self.windows[index], block)
        self.done += 1
        self.progress.update(self.done)

    def close(self) -> None:
        pass


class AssemblerSink:
    """One-rank job: encoded windows go straight into the assembler."""

    def __init__(self, assembler: TiffAssembler, stats: RankStats, progress: Progress):
        self.assembler, self.stats, self.progress = assembler, stats, progress
        self.done = 0

    def acquire(self, slot: int) -> None:
        pass

    def deliver(self, slot: int, message: np.ndarray, index: int, block: np.ndarray) -> None:
        with self.stats.timer("write"):
            self.assembler.add(index, unpack_tiles(message[HEADER_BYTES:]))
        self.done += 1
        self.progress.update(self.done)

    def close(self) -> None:
        pass


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
    shared = outcome
    if isinstance(outcome, Plan):
        shared = dataclasses.replace(outcome, windows=(), stage_units=(), independent=())
    shared = comm.bcast(shared, root=PLANNER_RANK)
    if isinstance(shared, MpiS2Error):
        raise CollectiveFailure(shared)
    assert isinstance(shared, Plan)
    return outcome if roles.is_planner else shared  # type: ignore[return-value]


def broadcast_luts(comm: MPI.Comm, roles: Roles, plan: Plan) -> np.ndarray:
    """The planner's ``(n_sources, 3, 65536)`` lookup tables on every rank (one ``Bcast`` of a uint8 buffer)."""
    luts = plan_luts(plan) if roles.is_planner else np.empty((len(plan.sources), 3, LUT_SIZE), dtype=np.uint8)
    comm.Bcast([luts, MPI.UINT8_T], root=PLANNER_RANK)
    return luts


def make_scheduler(plan: Plan, roles: Roles, todo: list[int]) -> Scheduler:
    """The scheduler of the windows ``todo``; staging is skipped when none of them reads a staged copy."""
    staging = len(plan.stage_units) if not all(plan.independent[i] for i in todo) else 0
    return Scheduler(staging, plan.independent, roles.worker_ranks, plan.config.schedule, windows=todo)


def batch_table(plan: Plan, items: list[WorkItem]) -> np.ndarray:
    return items_to_table(items, plan.stage_units, plan.windows)


class WorkFeed(Protocol):
    def ask(self, staged_done: int) -> None: ...
    def report(self, staged_done: int) -> None: ...
    def next(self, staged_done: int) -> Batch: ...


class MpiFeed:
    """Batches from rank 0, asked for ahead (see :class:`~mpi_s2.parallel.transport.WorkRequests`)."""

    def __init__(self, comm: MPI.Comm):
        self.requests = WorkRequests(comm, WRITER_RANK)

    def ask(self, staged_done: int) -> None:
        self.requests.ask(staged_done)

    def report(self, staged_done: int) -> None:
        self.requests.report(staged_done)

    def next(self, staged_done: int) -> Batch:
        return table_to_items(self.requests.next(staged_done))


class LocalFeed:
    """One-rank job: batches straight from the scheduler."""

    def __init__(self, plan: Plan, scheduler: Scheduler):
        self.plan, self.scheduler = plan, scheduler

    def ask(self, staged_done: int) -> None:
        pass

    def report(self, staged_done: int) -> None:
        pass

    def next(self, staged_done: int) -> Batch:
        self.scheduler.request(0, staged_done)
        (_, items), = self.scheduler.replies()
        return table_to_items(batch_table(self.plan, items))


def run_worker(plan: Plan, luts: np.ndarray, first: Batch, feed: WorkFeed, sink: BlockSink,
               stats: RankStats, counter: DecodeCounter, encode_tiles: bool = False,
               renderer: WindowSource | None = None) -> None:
    """Do batches of work until told to stop: stage units are decoded and copied, windows rendered and sent.

    The next batch is asked for as the last item of the current one starts; staging units are reported done
    only once their copies are closed (visible to every rank). Buffers are allocated once.
    """
    bands_out = plan.config.band_count
    max_pixels = plan.window_size[0] * plan.window_size[1]
    buffers = [message_buffer(bands_out, max_pixels) for _ in range(SLOTS)]
    messages: list[np.ndarray | None] = [None] * SLOTS  # encoded tiles in flight
    encoder = window_encoder(plan) if encode_tiles and plan.writer_encodes_because is None else None
    work = ItemWorker(plan, luts, stats, counter, renderer)
    sent = 0
    batch = first

    while True:
        for k, (item, what) in enumerate(batch):
            if k == len(batch) - 1:
                feed.ask(work.staged_done())
            if work.take(item.kind, what) is None:
                continue
            assert isinstance(what, Window)
            slot = sent % SLOTS
            with stats.timer("wait"):
                sink.acquire(slot)
            block = pack_block(buffers[slot], item.index, bands_out, what.shape)
            work.fill(what, block)
            if encoder is not None:
                with stats.timer("encode"):
                    messages[slot] = tile_message(item.index, encoder.encode(what, block))
                sink.deliver(slot, messages[slot], item.index, block)
            else:
                sink.deliver(slot, buffers[slot][: HEADER_BYTES + block.size], item.index, block)
            sent += 1
            faults.window_done(stats.rank, sent)
        done = work.staged_done()
        with stats.timer("wait"):
            batch = feed.next(done)
        if not batch:
            break
    with stats.timer("wait"):
        sink.close()


def receive_windows(comm: MPI.Comm, plan: Plan, scheduler: Scheduler, stats: RankStats, progress: Progress,
                    expected: int) -> Iterator[tuple[int, np.ndarray]]:
    """Rank 0's loop: answer workers' requests for work, and yield each window's message as it arrives.

    Ends when every window has arrived and every worker has been told to stop. The message is valid until the
    next one is received.
    """
    receiver = BlockReceiver(comm, message_buffer(plan.config.band_count, plan.window_size[0] * plan.window_size[1]),
                             len(plan.windows))
    status = MPI.Status()
    batches = BatchSender(comm)
    received = 0
    while received < expected or not scheduler.finished:
        with stats.timer("wait"):
            wait_for_message(comm, status)
        if status.Get_tag() in (REQUEST_TAG, PROGRESS_TAG):
            count = receive_count(comm, status)
            if status.Get_tag() == REQUEST_TAG:
                scheduler.request(status.Get_source(), count)
            else:
                scheduler.progress(status.Get_source(), count)
            for worker, items in scheduler.replies():
                batches.send(worker, batch_table(plan, items))
            continue
        if status.Get_tag() != BLOCK_TAG:
            raise MpiS2Error(f"writer: unexpected message (tag {status.Get_tag()}) from rank {status.Get_source()}")
        with stats.timer("wait"):
            index, message = receiver.receive(status)
        received += 1
        yield index, message
        progress.update(received)
    with stats.timer("wait"):
        batches.close()


def window_encoder(plan: Plan) -> WindowEncoder:
    return WindowEncoder(plan.output.creation_options, plan.grid.size, plan.config.band_count,
                         plan.overview_levels, plan.worker_overview_levels)


def open_output(comm: MPI.Comm, roles: Roles, plan: Plan) -> TiffAssembler | None:
    """The writer opens the output (a new run, or ``--resume``'s partial one); an error ends every rank cleanly.

    Returns the assembler on the writer (None where GDAL's writer encodes), None elsewhere.
    """
    assembler: TiffAssembler | None = None
    error: MpiS2Error | None = None
    if roles.is_writer:
        try:
            if resumable(plan):
                assembler = TiffAssembler(plan.output, plan.windows, levels=plan.overview_levels,
                                          encoded_levels=plan.worker_overview_levels, fingerprint=plan.fingerprint,
                                          resume=plan.config.resume)
            elif plan.config.resume:
                raise OutputError(f"{plan.config.output}: --resume needs tiles encoded by the workers, and here "
                                  f"the {plan.writer_encodes_because}")
        except MpiS2Error as exc:
            error = exc
    fail_together(comm, error, WRITER_RANK)
    return assembler


def _finish(assembler: TiffAssembler, stats: RankStats) -> None:
    with stats.timer("write"):
        assembler.write()
        assembler.commit()


def run_writer(comm: MPI.Comm, plan: Plan, scheduler: Scheduler, stats: RankStats, progress: Progress,
               assembler: TiffAssembler | None, expected: int) -> None:
    """Receive the ``expected`` windows the workers send and write the file: place the tiles they encoded
    (``assembler``), or encode here with GDAL's writer; commit the file at the end."""
    messages = receive_windows(comm, plan, scheduler, stats, progress, expected)
    if assembler is not None:
        for count, (index, message) in enumerate(messages, start=1):
            with stats.timer("write"):
                assembler.add(index, unpack_tiles(message[HEADER_BYTES:]))
            faults.window_done(comm.rank, count)
        if plan.config.cog:
            serve_strips(comm, assembler, Roles(comm.rank, comm.size).worker_ranks, stats)
        _finish(assembler, stats)
        return
    writer = GeoTiffWriter(plan.output)
    try:
        for index, message in messages:
            window = plan.windows[index]
            with stats.timer("write"):
                writer.write(window, pack_block(message, index, plan.config.band_count, window.shape))
        with stats.timer("write"):
            writer.commit()
    except BaseException:
        writer.discard()
        raise


def run_serial(plan: Plan, luts, stats: RankStats, progress: Progress, counter: DecodeCounter,
               assembler: TiffAssembler | None, todo: list[int], renderer: WindowSource | None = None) -> None:
    """One process holds every role: the same scheduler and worker loop, without messages."""
    scheduler = make_scheduler(plan, Roles(0, 1), todo)
    first = table_to_items(batch_table(plan, scheduler.first_batches()[0]))
    if assembler is not None:
        run_worker(plan, luts, first, LocalFeed(plan, scheduler), AssemblerSink(assembler, stats, progress), stats, counter,
                   encode_tiles=True, renderer=renderer)
        encode_strips_here(assembler, window_encoder(plan), stats)
        _finish(assembler, stats)
        return
    writer = GeoTiffWriter(plan.output)
    try:
        run_worker(plan, luts, first, LocalFeed(plan, scheduler), LocalSink(plan, writer, stats, progress), stats, counter,
                   renderer=renderer)
        with stats.timer("write"):
            writer.commit()
    except BaseException:
        writer.discard()
        raise


def write_output(comm: MPI.Comm, roles: Roles, plan: Plan, luts: np.ndarray, stats: RankStats,
                 counter: DecodeCounter, assembler: TiffAssembler | None, todo: list[int],
                 renderer: WindowSource | None = None) -> None:
    """The writer backend: windows ``todo`` are scheduled, filled (composed, or read by ``renderer``), encoded by
    the workers and written by rank 0 (``assembler``, or GDAL's writer)."""
    scheduler = make_scheduler(plan, roles, todo) if roles.is_planner else None
    progress = Progress(len(todo), enabled=plan.config.progress and roles.is_writer)
    if roles.serial:
        run_serial(plan, luts, stats, progress, counter, assembler, todo, renderer)
        return
    first = scheduler.first_batches() if scheduler else {}
    mine = scatter_batches(comm, PLANNER_RANK,
                           {r: batch_table(plan, b) for r, b in first.items()} if scheduler else None)
    if roles.is_writer:
        assert scheduler is not None
        run_writer(comm, plan, scheduler, stats, progress, assembler, len(todo))
    else:
        run_worker(plan, luts, table_to_items(mine), MpiFeed(comm), BlockSender(comm, WRITER_RANK), stats, counter,
                   encode_tiles=True, renderer=renderer)
        if plan.config.cog:
            encode_strips(comm, window_encoder(plan), stats)


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
                       for band, s in zip(("B04", "B03", "B02"), source.stretches)},
        "radiometry_note": source.radiometry_note,
    }


def compose_via_hdf5(comm: MPI.Comm, roles: Roles, plan: Plan, luts: np.ndarray, stats: RankStats,
                     counter: DecodeCounter, info: dict[str, Any]) -> list[int]:
    """The HDF5 backend: windows written collectively to the file, then converted in the same job."""
    from mpi_s2.parallel.convert import compose_to_store, conversion_plan, convert_store

    path = h5_path(plan.config.output)
    start = time.perf_counter()
    todo = compose_to_store(comm, roles, plan, luts, stats, counter)
    info.update(path=path, write_phase_s=round(time.perf_counter() - start, 3))
    start = time.perf_counter()
    convert_stats = RankStats(comm.rank, roles.describe())
    convert_store(comm, roles, conversion_plan(plan), path, convert_stats)
    ranks = comm.gather(convert_stats.finish(), root=PLANNER_RANK)
    info.update(convert_s=round(time.perf_counter() - start, 3), kept=plan.config.keep_h5)
    if roles.is_planner:
        info["convert_ranks"] = [{"rank": r["rank"], "seconds": r["seconds"], "cpu_s": r.get("cpu_s")}
                                 for r in ranks]
        if not plan.config.keep_h5:
            os.unlink(path)
    return todo


def compose(config: ComposeConfig, comm: MPI.Comm) -> dict[str, Any] | None:
    """Run the compose pipeline on ``comm``. Returns the run report on rank 0, ``None`` elsewhere."""
    start = time.perf_counter()
    roles = Roles(comm.rank, comm.size)
    stats = RankStats(comm.rank, roles.describe())
    counter = DecodeCounter()
    threads, nodes = decoder_threads(comm, roles)
    stats.decoder_threads = threads
    writer = comm.bcast((socket.gethostname(), os.getpid()), root=WRITER_RANK) if comm.size > 1 else None
    with config_options(rank_options(threads)):
        plan = broadcast_plan(comm, roles, config, single_node=nodes == 1)
        hdf5: dict[str, Any] = {}
        first_worker = not roles.is_writer and comm.rank == min(roles.worker_ranks)
        forget_cleanup = termination.on_signal(on_signal_cleanup(plan, roles.is_writer, first_worker,
                                                                 writer or ("", 0)))
        try:
            luts = broadcast_luts(comm, roles, plan)
            if config.backend == "hdf5":
                todo = compose_via_hdf5(comm, roles, plan, luts, stats, counter, hdf5)
            else:
                assembler = open_output(comm, roles, plan)
                if roles.is_writer:
                    forget_note(config.output)  # this attempt starts: its failure is noted again
                todo = [i for i in range(len(plan.windows)) if not (assembler and i in assembler.done)]
                write_output(comm, roles, plan, luts, stats, counter, assembler, todo)
            if roles.is_writer and config.quicklook:
                with stats.timer("write"):
                    preview = write_quicklook(config.output, config.quicklook, config.quicklook_size)
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
            forget_cleanup()
    ranks = comm.gather(stats.finish(counter), root=PLANNER_RANK)
    if not roles.is_planner:
        return None
    remove_staging(plan.staging_directory)
    wall = time.perf_counter() - start
    decodes = merge_counts([rank.pop("decode") for rank in ranks])
    report = build_report(_summary(plan, config, comm.size, decodes), ranks, wall)
    report["windows_reused"] = len(plan.windows) - len(todo)
    report["windows_computed"] = len(todo)
    report["backend"] = config.backend
    if hdf5:
        report["hdf5"] = hdf5
    if config.quicklook:
        report["quicklook"] = {"path": config.quicklook, "size": list(preview)}
    if config.report:
        write_report(config.report, report)
    log.info("wrote %s (%d x %d, %s, %s) in %.1f s", config.output, plan.grid.width, plan.grid.height,
             plural(len(plan.windows), "window"), plural(comm.size, "rank"), wall)
    return report


def _summary(plan: Plan, config: ComposeConfig, size: int, decodes: dict[int, dict[str, int]]) -> dict[str, Any]:
    return {
        "output": config.output,
        "inputs": [_describe_source(plan, i, decodes.get(i, {"decoded": 0, "distinct": 0}))
                   for i in range(len(plan.sources))],
        "size": list(plan.grid.size),
        "geotransform": list(plan.grid.geotransform),
        "window_size": list(plan.window_size),
        "block_size": list(plan.block_size),
        "windows": len(plan.windows),
        "empty_windows_skipped": plan.empty_windows,
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
        "creation_options": dict(plan.output.creation_options),
        "cog": {"overview_levels": plan.overview_levels, "levels_encoded_with_windows": plan.worker_overview_levels}
        if config.cog else None,
        "tiles_encoded_by": ("workers" if plan.writer_encodes_because is None and size > 1
                             else "the one rank" if plan.writer_encodes_because is None
                             else f"writer: {plan.writer_encodes_because}"),
    }
