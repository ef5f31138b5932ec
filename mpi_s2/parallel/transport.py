"""Messages between ranks: pixel blocks, requests for work and batches of work, all as raw numpy buffers.

* A pixel block travels as one uint8 message: an 8-byte header holding the window's index, then the block.
  The writer learns from the message itself which window it holds, whatever schedule produced it.
* A worker keeps at most two blocks in flight (it computes the next window while the previous one travels);
  the writer receives into one reusable buffer, so its memory is bounded whatever the mosaic size.
* A worker asks for its next batch as it starts the last item of the current one (two int64: staging units and
  windows finished so far, a :class:`~mpi_s2.planning.scheduling.Done`), and gets rows of the int64 work table
  (an empty batch means: stop). Progress messages carry the same two counts.
Waiting is done by polling with short sleeps, never by spinning in ``MPI_Probe``/``Recv``: Open MPI waits by
spinning on a core, and with more ranks than cores (the writer and two decoders on two cores) a spinning rank
takes CPU the decoders need. A window takes far longer to produce than the sleep.
"""

from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

from mpi_s2.errors import MpiS2Error
from mpi_s2.output.tile_messages import HEADER_BYTES
from mpi_s2.planning.scheduling import ITEM_COLUMNS, Done

BLOCK_TAG = 11
REQUEST_TAG = 12
BATCH_TAG = 13
PROGRESS_TAG = 14
SLOTS = 2
POLL_MIN_S = 0.0005
POLL_MAX_S = 0.01


def wait_for_message(comm: MPI.Comm, status: MPI.Status, source: int = MPI.ANY_SOURCE,
                     tag: int = MPI.ANY_TAG) -> None:
    """Block until a matching message can be received (``status`` describes it), sleeping between polls."""
    delay = POLL_MIN_S
    while not comm.Iprobe(source=source, tag=tag, status=status):
        time.sleep(delay)
        delay = min(2 * delay, POLL_MAX_S)


class BlockSender:
    """Worker side: send each finished block to ``dest``, reusing :data:`SLOTS` buffers."""

    def __init__(self, comm: MPI.Comm, dest: int):
        self.comm = comm
        self.dest = dest
        self._requests = [MPI.REQUEST_NULL] * SLOTS

    def acquire(self, slot: int) -> None:
        """Wait until buffer ``slot`` has left (call before writing into it)."""
        self._requests[slot].Wait()

    def deliver(self, slot: int, message: np.ndarray, index: int, block: np.ndarray) -> None:
        self._requests[slot] = self.comm.Isend([message, MPI.UINT8_T], dest=self.dest, tag=BLOCK_TAG)

    def close(self) -> None:
        MPI.Request.Waitall(self._requests)


class BlockReceiver:
    """Writer side: receive the message a probe announced into a reusable buffer; return (index, message).

    Raw blocks fit the buffer made for the largest window; encoded tiles can be a little larger than raw
    pixels (incompressible data), and the buffer grows for them.
    """

    def __init__(self, comm: MPI.Comm, buffer: np.ndarray, windows: int):
        self.comm = comm
        self._buffer = buffer
        self.windows = windows

    def receive(self, status: MPI.Status) -> tuple[int, np.ndarray]:
        source, count = status.Get_source(), status.Get_count(MPI.UINT8_T)
        if count < HEADER_BYTES:
            raise MpiS2Error(f"writer: message from rank {source} has {count} bytes, less than a header")
        if count > self._buffer.size:
            self._buffer = np.empty(count, dtype=np.uint8)
        message = self._buffer[:count]
        self.comm.Recv([message, MPI.UINT8_T], source=source, tag=BLOCK_TAG)
        index = int(message[:HEADER_BYTES].view(np.int64)[0])
        if not 0 <= index < self.windows:
            raise MpiS2Error(f"writer: message from rank {source} names window {index}, not one of the plan's "
                             f"{self.windows}")
        return index, message


class WorkRequests:
    """Worker side of the work protocol, asking ahead so that the answer is there when the batch ends.

    :meth:`ask` sends a request (once per batch) as the worker starts its last item; :meth:`next` reports
    what was finished since then (a progress message, so that rank 0 never waits for a count the worker has not
    sent, and knows every window done) and waits for the batch. Rank 0 listens until every window is reported
    (:attr:`~mpi_s2.planning.scheduling.Scheduler.windows_reported`), so no count is left behind for a later
    phase to receive.
    """

    def __init__(self, comm: MPI.Comm, dest: int):
        self.comm, self.dest = comm, dest
        self._asked: Done | None = None  # the counts the outstanding request carried
        self._last_sent = Done(0, 0)

    def _send(self, tag: int, done: Done) -> None:
        self._last_sent = done
        self.comm.Send([np.array(done, dtype=np.int64), MPI.INT64_T], dest=self.dest, tag=tag)

    def report(self, done: Done) -> None:
        """Tell rank 0 what was finished since the last message (before a collective call, so that rank 0 never
        waits for a count this worker has not sent while it waits for the others)."""
        if done != self._last_sent:
            self._send(PROGRESS_TAG, done)
            if self._asked is not None:
                self._asked = done

    def ask(self, done: Done) -> None:
        if self._asked is None:
            self._send(REQUEST_TAG, done)
            self._asked = done

    def next(self, done: Done) -> np.ndarray:
        """The next batch (rows of the work table; empty: stop)."""
        if self._asked is None:
            self._send(REQUEST_TAG, done)
        elif done != self._asked:
            self._send(PROGRESS_TAG, done)
        self._asked = None
        status = MPI.Status()
        wait_for_message(self.comm, status, source=self.dest, tag=BATCH_TAG)
        count = status.Get_count(MPI.INT64_T)
        batch = np.empty((count // len(ITEM_COLUMNS), len(ITEM_COLUMNS)), dtype=np.int64)
        self.comm.Recv([batch, MPI.INT64_T], source=self.dest, tag=BATCH_TAG)
        return batch


def receive_count(comm: MPI.Comm, status: MPI.Status) -> Done:
    """Scheduler side: the request or progress message a probe announced (staging units and windows finished)."""
    counts = np.empty(len(Done._fields), dtype=np.int64)
    comm.Recv([counts, MPI.INT64_T], source=status.Get_source(), tag=status.Get_tag())
    return Done(*(int(c) for c in counts))


class BatchSender:
    """Scheduler side: send batches (possibly empty: stop) without waiting for the worker to receive them.

    A worker asks ahead and receives its batch only when it has finished its current item; a blocking
    ``Send`` of more than a few dozen bytes would wait (spinning) until then, taking CPU from the decoders.
    """

    def __init__(self, comm: MPI.Comm):
        self.comm = comm
        self._in_flight: list[tuple[MPI.Request, np.ndarray]] = []

    def send(self, dest: int, table: np.ndarray) -> None:
        buffer = np.ascontiguousarray(table, dtype=np.int64)
        self._in_flight = [(r, b) for r, b in self._in_flight if not r.Test()]
        self._in_flight.append((self.comm.Isend([buffer, MPI.INT64_T], dest=dest, tag=BATCH_TAG), buffer))

    def close(self) -> None:
        MPI.Request.Waitall([r for r, _ in self._in_flight])
        self._in_flight = []


def scatter_batches(comm: MPI.Comm, root: int, tables: dict[int, np.ndarray] | None) -> np.ndarray:
    """Scatter each rank's first batch (``Scatterv`` of the int64 work table); return this rank's rows."""
    width = len(ITEM_COLUMNS)
    if comm.rank == root:
        assert tables is not None
        parts = [tables.get(r, np.empty((0, width), dtype=np.int64)) for r in range(comm.size)]
        counts = [p.size for p in parts]
        displs = [sum(counts[:r]) for r in range(comm.size)]
        table = np.ascontiguousarray(np.concatenate(parts) if parts else np.empty((0, width)), dtype=np.int64)
        sendbuf = [table, counts, displs, MPI.INT64_T]
    else:
        counts, sendbuf = [], None  # not read on the other ranks
    my_count = comm.scatter(counts, root=root)
    mine = np.empty((my_count // width, width), dtype=np.int64)
    comm.Scatterv(sendbuf, [mine, MPI.INT64_T], root=root)
    return mine
