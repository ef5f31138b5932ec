"""The compose pipeline: each rank plays its role(s) on one communicator.

1. The planner (rank 0) inspects inputs and plans; the plan (metadata only) is broadcast and the lookup
   tables are broadcast as one uint8 buffer, so every rank applies the very same tables.
2. The planner scatters the window table (``Scatterv``): each worker learns only its own windows.
3. Workers read their windows with GDAL, apply the tables and send uint8 blocks to the writer.
4. The writer (rank 0 again) receives blocks and alone writes the GeoTIFF, then renames it into place.
A one-rank job runs the same worker loop and hands blocks straight to the writer.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Protocol

import numpy as np
from mpi4py import MPI

from .cloudmask import invalid_class_lut
from .config import ComposeConfig
from .errors import MpiS2Error
from .gdal_env import config_options, decoder_threads, rank_options
from .mpi_runtime import CollectiveFailure
from .plan import Plan, make_plan, plan_luts
from .progress import Progress
from .radiometry import LUT_SIZE
from .render import WindowRenderer
from .report import RankStats, build_report, write_report
from .roles import PLANNER_RANK, WRITER_RANK, Roles
from .scheduling import scatter_windows
from .transport import SLOTS, BlockReceiver, BlockSender
from .windows import Window, table_to_windows
from .writer import GeoTiffWriter, remove_partial

log = logging.getLogger("mpi_s2")


class BlockSink(Protocol):
    def acquire(self, slot: int) -> None: ...
    def deliver(self, slot: int, window: Window, block: np.ndarray) -> None: ...
    def close(self) -> None: ...


class LocalSink:
    """One-rank job: blocks go straight into the writer, no MPI message."""

    def __init__(self, writer: GeoTiffWriter, stats: RankStats, progress: Progress):
        self.writer, self.stats, self.progress = writer, stats, progress
        self.done = 0

    def acquire(self, slot: int) -> None:
        pass

    def deliver(self, slot: int, window: Window, block: np.ndarray) -> None:
        with self.stats.timer("write"):
            self.writer.write(window, block)
        self.done += 1
        self.progress.update(self.done)

    def close(self) -> None:
        pass


def broadcast_plan(comm: MPI.Comm, roles: Roles, config: ComposeConfig) -> Plan:
    """Plan on rank 0 and broadcast it without the window list (workers get theirs by scatter).

    An input error found while planning is broadcast too, and raised on every rank as a
    :class:`CollectiveFailure`, so the job ends cleanly with one message and no abort.
    """
    outcome: Plan | MpiS2Error | None = None
    if roles.is_planner:
        try:
            outcome = make_plan(config, roles.worker_ranks)
        except MpiS2Error as exc:
            outcome = exc
    shared = outcome
    if isinstance(outcome, Plan):
        shared = dataclasses.replace(outcome, windows=(), queues={})
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


def run_worker(plan: Plan, luts: np.ndarray, windows: list[Window], sink: BlockSink, stats: RankStats) -> None:
    """Read, transform and hand over each of ``windows``; buffers are allocated once."""
    if not windows:
        return
    bands_out = plan.config.band_count
    max_pixels = max(w.size for w in windows)
    mask_lut = invalid_class_lut(plan.config.mask_classes) if plan.config.cloud_mask else None
    renderer = WindowRenderer(plan.sources, luts, alpha=plan.config.alpha, mask_lut=mask_lut,
                              max_pixels=max_pixels)
    out_bufs = [np.empty(bands_out * max_pixels, dtype=np.uint8) for _ in range(SLOTS)]
    for k, window in enumerate(windows):
        slot = k % SLOTS
        with stats.timer("wait"):
            sink.acquire(slot)
        block = out_bufs[slot][: bands_out * window.size].reshape(bands_out, *window.shape)
        renderer.render(window, block, stats)
        sink.deliver(slot, window, block)
        stats.windows += 1
        stats.pixels += window.size
    with stats.timer("wait"):
        sink.close()


def run_writer(comm: MPI.Comm, plan: Plan, stats: RankStats, progress: Progress) -> None:
    """Receive every window from the workers and write it; commit the file when all have arrived."""
    writer = GeoTiffWriter(plan.output)
    try:
        receiver = BlockReceiver(comm, plan.queues, plan.windows, plan.config.band_count)
        for done in range(1, len(plan.windows) + 1):
            with stats.timer("wait"):
                window = receiver.probe()
                block = receiver.receive(window)
            with stats.timer("write"):
                writer.write(window, block)
            progress.update(done)
        with stats.timer("write"):
            writer.commit()
    except BaseException:
        writer.discard()
        raise


def run_serial(plan: Plan, luts, stats: RankStats, progress: Progress) -> None:
    writer = GeoTiffWriter(plan.output)
    try:
        run_worker(plan, luts, list(plan.windows), LocalSink(writer, stats, progress), stats)
        with stats.timer("write"):
            writer.commit()
    except BaseException:
        writer.discard()
        raise


def _describe_source(source) -> dict[str, Any]:
    return {
        "input": source.label,
        "files": {"red": source.files[0], "green": source.files[1], "blue": source.files[2], "scl": source.scl},
        "placement": dataclasses.asdict(source.placement),
        "reprojected": source.reprojected,
        "radiometry": {band: {"offset": s.offset, "quantification": s.scale}
                       for band, s in zip(("B04", "B03", "B02"), source.stretches)},
        "radiometry_note": source.radiometry_note,
    }


def compose(config: ComposeConfig, comm: MPI.Comm) -> dict[str, Any] | None:
    """Run the compose pipeline on ``comm``. Returns the run report on rank 0, ``None`` elsewhere."""
    start = time.perf_counter()
    roles = Roles(comm.rank, comm.size)
    stats = RankStats(comm.rank, roles.describe())
    threads = decoder_threads(comm, roles)
    stats.decoder_threads = threads
    with config_options(rank_options(threads)):
        plan = broadcast_plan(comm, roles, config)
        try:
            luts = broadcast_luts(comm, roles, plan)
            my_rows = scatter_windows(
                comm, PLANNER_RANK, plan.queues if roles.is_planner else None,
                plan.windows if roles.is_planner else None,
            )
            progress = Progress(len(plan.windows), enabled=config.progress and roles.is_writer)
            if roles.serial:
                run_serial(plan, luts, stats, progress)
            elif roles.is_writer:
                run_writer(comm, plan, stats, progress)
            else:
                windows = [w for _, w in table_to_windows(my_rows)]
                run_worker(plan, luts, windows, BlockSender(comm, WRITER_RANK), stats)
        except BaseException:
            remove_partial(config.output)
            raise
    ranks = comm.gather(stats.finish(), root=PLANNER_RANK)
    if not roles.is_planner:
        return None
    wall = time.perf_counter() - start
    summary = {
        "output": config.output,
        "inputs": [_describe_source(s) for s in plan.sources],
        "size": list(plan.grid.size),
        "geotransform": list(plan.grid.geotransform),
        "window_size": list(plan.window_size),
        "block_size": list(plan.block_size),
        "windows": len(plan.windows),
        "empty_windows_skipped": plan.empty_windows,
        "pixels": plan.grid.width * plan.grid.height,
        "mpi_ranks": comm.size,
        "max_reflectance": config.max_reflectance,
        "gamma": config.gamma,
        "cloud_mask_classes": list(config.mask_classes) if config.cloud_mask else None,
        "resampling": config.resampling if any(s.reprojected for s in plan.sources) else None,
        "overlap_rule": "first valid pixel in input order",
        "alpha": config.alpha,
        "creation_options": dict(plan.output.creation_options),
    }
    report = build_report(summary, ranks, wall)
    if config.report:
        write_report(config.report, report)
    log.info("wrote %s (%d x %d, %d windows, %d ranks) in %.1f s",
             config.output, plan.grid.width, plan.grid.height, len(plan.windows), comm.size, wall)
    return report
