"""The output stage both backends and ``mpi-s2 convert`` share: windows scheduled by rank 0, filled by the
workers (composed from the inputs, or read back from an HDF5 file), encoded into whole output tiles by the
workers, and placed into the file by the writer rank, which renames it into place once complete.

It is driven by one explicit :class:`~mpi_s2.output.plan.OutputPlan` (the file, windows, COG levels, quicklook,
resume) and a :class:`~mpi_s2.planning.scheduling.WorkPlan`; it never reads the user's configuration.

* Multi-rank: rank 0 scatters each worker's first batch, then answers requests for more while it receives the
  windows' messages (:func:`receive_windows`) and places them (:func:`run_writer`). The requests carry the
  staging units each worker has finished: rank 0 shows them as the ``"staging"`` phase of its progress, and the
  windows it has placed as the ``"windows"`` phase. Workers run
  :func:`run_worker`. For ``--cog``, the coarse overview levels are encoded by the workers at the end
  (:mod:`mpi_s2.parallel.coarse_strips`).
* One rank: the same worker loop and scheduler, with work items and windows handed over directly (no MPI).
* Outputs whose tiles the workers cannot encode (JPEG, untiled, band-interleaved) travel raw and GDAL's writer
  encodes them on the writer rank (:class:`~mpi_s2.output.gdal_writer.GeoTiffWriter`); such runs keep no journal.
* ``--quicklook``: a worker that encodes a window adds its quicklook cell sums to the window's message
  (:data:`~mpi_s2.output.tile_messages.QUICKLOOK_PIECE`); where blocks travel raw, and in a one-rank job, the sums
  are taken where the block is. The writer only adds them up (:class:`~mpi_s2.output.quicklook.QuicklookSums`);
  after ``--resume`` it reads the reused windows back from the finished file, one at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
from mpi4py import MPI

from mpi_s2 import faults
from mpi_s2.errors import MpiS2Error, OutputError
from mpi_s2.output.gdal_writer import GeoTiffWriter
from mpi_s2.output.plan import OutputPlan
from mpi_s2.output.quicklook import QuicklookSums, cell_sums
from mpi_s2.output.tiff_assembly import TiffAssembler
from mpi_s2.output.tile_encoding import WindowEncoder
from mpi_s2.output.tile_messages import (
    HEADER_BYTES,
    QUICKLOOK_PIECE,
    TileEntry,
    message_buffer,
    pack_block,
    split_quicklook,
    tile_message,
    unpack_tiles,
)
from mpi_s2.parallel.coarse_strips import encode_strips, encode_strips_here, serve_strips
from mpi_s2.parallel.progress import Progress
from mpi_s2.parallel.roles import PLANNER_RANK, WRITER_RANK, Roles
from mpi_s2.parallel.runtime import fail_together
from mpi_s2.parallel.transport import (
    BLOCK_TAG,
    PROGRESS_TAG,
    REQUEST_TAG,
    SLOTS,
    BatchSender,
    BlockReceiver,
    BlockSender,
    WorkRequests,
    receive_count,
    scatter_batches,
    wait_for_message,
)
from mpi_s2.planning.scheduling import KIND_STAGE, Done, Scheduler, WorkItem, WorkPlan, table_to_items
from mpi_s2.planning.stage_plan import StageUnit
from mpi_s2.report import QUICKLOOK, RankStats
from mpi_s2.windows import Window
from mpi_s2.worker.items import ItemWorker

Batch = list[tuple[WorkItem, "StageUnit | Window"]]


class BlockSink(Protocol):
    """Where a worker's windows go: to the writer rank (:class:`~mpi_s2.parallel.transport.BlockSender`), or
    straight into the file in a one-rank job."""

    def acquire(self, slot: int) -> None: ...
    def deliver(self, slot: int, message: np.ndarray, index: int, block: np.ndarray) -> None: ...
    def close(self) -> None: ...


def place_raw(writer: GeoTiffWriter, quicklook: QuicklookSums | None, window: Window, block: np.ndarray,
              stats: RankStats) -> None:
    """A raw block into GDAL's writer, and its cell sums into the quicklook (taken here: the block is here)."""
    with stats.timer("write"):
        writer.write(window, block)
    if quicklook is not None:
        with stats.timer(QUICKLOOK):
            quicklook.add_block(window, block)


def place_tiles(assembler: TiffAssembler, quicklook: QuicklookSums | None, index: int,
                entries: Sequence[TileEntry], stats: RankStats) -> None:
    """A window's encoded tiles into the assembler, and the cell sums that came with them into the quicklook."""
    tiles, sums = split_quicklook(entries)
    if quicklook is not None:
        if sums is None:
            raise MpiS2Error(f"writer: window {index} arrived without its quicklook sums")
        with stats.timer(QUICKLOOK):
            quicklook.add(assembler.windows[index], sums)
    with stats.timer("write"):
        assembler.add(index, tiles)


class GdalSink:
    """One-rank job whose tiles GDAL encodes: blocks go straight into GDAL's writer."""

    def __init__(self, out: OutputPlan, writer: GeoTiffWriter, stats: RankStats, progress: Progress,
                 quicklook: QuicklookSums | None = None):
        self.windows, self.writer, self.stats, self.progress = out.windows, writer, stats, progress
        self.quicklook = quicklook
        self.done = 0

    def acquire(self, slot: int) -> None:
        pass

    def deliver(self, slot: int, message: np.ndarray, index: int, block: np.ndarray) -> None:
        place_raw(self.writer, self.quicklook, self.windows[index], block, self.stats)
        self.done += 1
        self.progress.update(self.done)

    def close(self) -> None:
        pass


class AssemblerSink:
    """One-rank job: encoded windows go straight into the assembler."""

    def __init__(self, assembler: TiffAssembler, stats: RankStats, progress: Progress,
                 quicklook: QuicklookSums | None = None):
        self.assembler, self.stats, self.progress, self.quicklook = assembler, stats, progress, quicklook
        self.done = 0

    def acquire(self, slot: int) -> None:
        pass

    def deliver(self, slot: int, message: np.ndarray, index: int, block: np.ndarray) -> None:
        place_tiles(self.assembler, self.quicklook, index, unpack_tiles(message[HEADER_BYTES:]), self.stats)
        self.done += 1
        self.progress.update(self.done)

    def close(self) -> None:
        pass


class WorkFeed(Protocol):
    """Where a worker's next batch comes from."""

    def ask(self, done: Done) -> None: ...
    def report(self, done: Done) -> None: ...
    def next(self, done: Done) -> Batch: ...


class MpiFeed:
    """Batches from rank 0, asked for ahead (see :class:`~mpi_s2.parallel.transport.WorkRequests`)."""

    def __init__(self, comm: MPI.Comm):
        self.requests = WorkRequests(comm, WRITER_RANK)

    def ask(self, done: Done) -> None:
        self.requests.ask(done)

    def report(self, done: Done) -> None:
        self.requests.report(done)

    def next(self, done: Done) -> Batch:
        return table_to_items(self.requests.next(done))


def show_counts(progress: Progress, scheduler: Scheduler, composed: str | None) -> None:
    """Show the workers' counts the scheduler knows: staging units (if it has any), and (as phase ``composed``, if
    given) windows."""
    if scheduler.n_stage:
        progress.update(scheduler.staged_done_total, "staging")
    if composed is not None:
        progress.update(scheduler.windows_done_total, composed)


class LocalFeed:
    """One-rank job: batches straight from the scheduler, as work items (no table in between); the counts it is
    told go to ``progress`` (see :func:`show_counts`)."""

    def __init__(self, work: WorkPlan, scheduler: Scheduler, progress: Progress, composed: str | None = None):
        self.work, self.scheduler, self.progress, self.composed = work, scheduler, progress, composed

    def first(self) -> Batch:
        return self._resolve(self.scheduler.first_batches()[0])

    def ask(self, done: Done) -> None:
        self.report(done)

    def report(self, done: Done) -> None:
        self.scheduler.progress(0, *done)
        show_counts(self.progress, self.scheduler, self.composed)

    def next(self, done: Done) -> Batch:
        self.scheduler.request(0, *done)
        show_counts(self.progress, self.scheduler, self.composed)
        (_, items), = self.scheduler.replies()
        return self._resolve(items)

    def _resolve(self, items: list[WorkItem]) -> Batch:
        return [(item, self.work.stage_units[item.index] if item.kind == KIND_STAGE else self.work.windows[item.index])
                for item in items]


def window_encoder(out: OutputPlan) -> WindowEncoder:
    return WindowEncoder(out.spec.creation_options, out.spec.grid.size, out.band_count, out.overview_levels,
                         out.worker_overview_levels)


def run_worker(out: OutputPlan, worker: ItemWorker, first: Batch, feed: WorkFeed, sink: BlockSink,
               stats: RankStats, encode_tiles: bool = False, phase: str = "windows") -> None:
    """Do batches of work until told to stop: stage units are decoded and copied, windows filled and sent.

    The next batch is asked for as the last item of the current one starts; staging units are reported done
    only once their copies are closed (visible to every rank). Buffers are allocated once. A window whose tiles
    are encoded here carries its quicklook cell sums too (first, so that they stay 8-byte aligned). ``phase``:
    what the windows are for (test faults, :mod:`mpi_s2.faults`, count the windows of one phase).
    """
    bands_out = out.band_count
    buffers = [message_buffer(bands_out, out.max_pixels) for _ in range(SLOTS)]
    messages: list[np.ndarray | None] = [None] * SLOTS  # encoded tiles in flight
    encoder = window_encoder(out) if encode_tiles and out.resumable else None
    factor = out.quicklook_factor
    sent = 0
    batch = first

    while True:
        for k, (item, what) in enumerate(batch):
            if k == len(batch) - 1:
                feed.ask(worker.done())
            if worker.take(item.kind, what) is None:
                continue
            assert isinstance(what, Window)
            slot = sent % SLOTS
            with stats.timer("wait"):
                sink.acquire(slot)
            block = pack_block(buffers[slot], item.index, bands_out, what.shape)
            worker.fill(what, block)
            if encoder is not None:
                sums: list[TileEntry] = []
                if factor:
                    with stats.timer(QUICKLOOK):
                        sums = [(0, QUICKLOOK_PIECE, cell_sums(block, what, factor))]
                with stats.timer("encode"):
                    messages[slot] = tile_message(item.index, sums + encoder.encode(what, block))
                sink.deliver(slot, messages[slot], item.index, block)  # type: ignore[arg-type]
            else:
                sink.deliver(slot, buffers[slot][: HEADER_BYTES + block.size], item.index, block)
            sent += 1
            faults.window_done(stats.rank, sent, phase)
        done = worker.done()
        with stats.timer("wait"):
            batch = feed.next(done)
        if not batch:
            break
    with stats.timer("wait"):
        sink.close()


def receive_windows(comm: MPI.Comm, out: OutputPlan, work: WorkPlan, scheduler: Scheduler, stats: RankStats,
                    progress: Progress, expected: int, composed: str | None = None
                    ) -> Iterator[tuple[int, np.ndarray]]:
    """Rank 0's loop: answer workers' requests for work, and yield each window's message as it arrives.

    Ends when ``expected`` windows have arrived, every worker has been told to stop and every window has been
    reported done. The message is valid until the next one is received. ``progress`` shows the staging units
    the workers report, the windows received (phase ``"windows"``) and, as phase ``composed`` if given, the
    windows the workers report done (the HDF5 backend, whose windows do not come here).
    """
    receiver = BlockReceiver(comm, message_buffer(out.band_count, out.max_pixels), len(work.windows))
    status = MPI.Status()
    batches = BatchSender(comm)
    received = 0
    while received < expected or not scheduler.finished or not scheduler.windows_reported:
        with stats.timer("wait"):
            wait_for_message(comm, status)
        if status.Get_tag() in (REQUEST_TAG, PROGRESS_TAG):
            done = receive_count(comm, status)
            if status.Get_tag() == REQUEST_TAG:
                scheduler.request(status.Get_source(), *done)
            else:
                scheduler.progress(status.Get_source(), *done)
            for worker, items in scheduler.replies():
                batches.send(worker, work.table(items))
            show_counts(progress, scheduler, composed)
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


def open_output(comm: MPI.Comm, roles: Roles, out: OutputPlan) -> TiffAssembler | None:
    """The writer opens the output (a new run, or ``--resume``'s partial one); an error ends every rank cleanly.

    Returns the assembler on the writer (None where GDAL's writer encodes), None elsewhere.
    """
    assembler: TiffAssembler | None = None
    error: MpiS2Error | None = None
    if roles.is_writer:
        try:
            if out.resumable:
                assembler = TiffAssembler(out.spec, out.windows, levels=out.overview_levels,
                                          encoded_levels=out.worker_overview_levels, fingerprint=out.fingerprint,
                                          resume=out.resume)
            elif out.resume:
                raise OutputError(f"{out.path}: --resume needs tiles encoded by the workers, and here "
                                  f"the {out.writer_encodes_because}")
        except MpiS2Error as exc:
            error = exc
    fail_together(comm, error, WRITER_RANK)
    return assembler


def _finish(assembler: TiffAssembler, stats: RankStats) -> None:
    with stats.timer("write"):
        assembler.write()
        assembler.commit()


def run_writer(comm: MPI.Comm, out: OutputPlan, work: WorkPlan, scheduler: Scheduler, stats: RankStats,
               progress: Progress, assembler: TiffAssembler | None, expected: int,
               quicklook: QuicklookSums | None = None) -> None:
    """Receive the ``expected`` windows the workers send and write the file: place the tiles they encoded
    (``assembler``), or encode here with GDAL's writer; commit the file at the end. The windows' quicklook sums
    go into ``quicklook``."""
    messages = receive_windows(comm, out, work, scheduler, stats, progress, expected)
    if assembler is not None:
        for count, (index, message) in enumerate(messages, start=1):
            place_tiles(assembler, quicklook, index, unpack_tiles(message[HEADER_BYTES:]), stats)
            faults.window_done(comm.rank, count)
        if out.cog:
            serve_strips(comm, assembler, Roles(comm.rank, comm.size).worker_ranks, stats)
        _finish(assembler, stats)
        return
    writer = GeoTiffWriter(out.spec)
    try:
        for index, message in messages:
            window = out.windows[index]
            place_raw(writer, quicklook, window, pack_block(message, index, out.band_count, window.shape), stats)
        with stats.timer("write"):
            writer.commit()
    except BaseException:
        writer.discard()
        raise


def run_serial(out: OutputPlan, work: WorkPlan, worker: ItemWorker, stats: RankStats, progress: Progress,
               assembler: TiffAssembler | None, todo: list[int], quicklook: QuicklookSums | None = None) -> None:
    """One process holds every role: the same scheduler and worker loop, without messages."""
    feed = LocalFeed(work, work.scheduler((0,), todo), progress)
    if assembler is not None:
        run_worker(out, worker, feed.first(), feed, AssemblerSink(assembler, stats, progress, quicklook), stats,
                   encode_tiles=True)
        encode_strips_here(assembler, window_encoder(out), stats)
        _finish(assembler, stats)
        return
    writer = GeoTiffWriter(out.spec)
    try:
        run_worker(out, worker, feed.first(), feed, GdalSink(out, writer, stats, progress, quicklook), stats)
        with stats.timer("write"):
            writer.commit()
    except BaseException:
        writer.discard()
        raise


def write_output(comm: MPI.Comm, roles: Roles, out: OutputPlan, work: WorkPlan, worker: ItemWorker | None,
                 stats: RankStats, progress: Progress, assembler: TiffAssembler | None,
                 todo: list[int]) -> tuple[int, int] | None:
    """Write ``out``: windows ``todo`` are scheduled by rank 0, filled by ``worker`` (on worker ranks), encoded
    by the workers and placed by the writer rank (``assembler``, or GDAL's writer); then the quicklook, from the
    cell sums that came with the windows (and, for windows not in ``todo``, a resumed run's, read back).

    Returns the quicklook's (width, height) on the writer rank when one was asked for, else None.
    """
    quicklook = QuicklookSums(*out.spec.grid.size, out.quicklook_size) if roles.is_writer and out.quicklook else None
    if roles.serial:
        assert worker is not None
        run_serial(out, work, worker, stats, progress, assembler, todo, quicklook)
    else:
        scheduler = work.scheduler(roles.worker_ranks, todo) if roles.is_planner else None
        first = scheduler.first_batches() if scheduler else {}
        mine = scatter_batches(comm, PLANNER_RANK,
                               {r: work.table(b) for r, b in first.items()} if scheduler else None)
        if roles.is_writer:
            assert scheduler is not None
            run_writer(comm, out, work, scheduler, stats, progress, assembler, len(todo), quicklook)
        else:
            assert worker is not None
            run_worker(out, worker, table_to_items(mine), MpiFeed(comm), BlockSender(comm, WRITER_RANK), stats,
                       encode_tiles=True)
            if out.cog:
                encode_strips(comm, window_encoder(out), stats)
    if quicklook is None:
        return None
    assert out.quicklook
    computed = set(todo)
    with stats.timer(QUICKLOOK):
        quicklook.add_file_windows(out.path, [w for i, w in enumerate(out.windows) if i not in computed])
        return quicklook.write(out.quicklook)
