"""Moving pixel blocks from workers to the writer as raw numpy buffers (``Isend``/``Recv``, never pickle).

A worker keeps at most two blocks in flight (double buffering: it computes the next window while the previous
one travels); the writer receives into one reusable buffer. Memory stays bounded whatever the raster size.
"""

from __future__ import annotations

import time
from collections import deque
import numpy as np
from mpi4py import MPI

from .errors import MpiS2Error
from .windows import Window

BLOCK_TAG = 11
SLOTS = 2
POLL_MIN_S = 0.0005
POLL_MAX_S = 0.01


class BlockSender:
    """Worker side: send each finished block to ``dest``, reusing :data:`SLOTS` buffers."""

    def __init__(self, comm: MPI.Comm, dest: int):
        self.comm = comm
        self.dest = dest
        self._requests = [MPI.REQUEST_NULL] * SLOTS

    def acquire(self, slot: int) -> None:
        """Wait until buffer ``slot`` has left (call before writing into it)."""
        self._requests[slot].Wait()

    def deliver(self, slot: int, window: Window, block: np.ndarray) -> None:
        self._requests[slot] = self.comm.Isend([block, MPI.UINT8_T], dest=self.dest, tag=BLOCK_TAG)

    def close(self) -> None:
        MPI.Request.Waitall(self._requests)


class BlockReceiver:
    """Writer side: receive blocks in arrival order and tell which window each one is.

    ``queues`` maps each worker rank to its window indices in the order it processes them; MPI does not
    reorder messages between two ranks, so the sender identifies the window.
    """

    def __init__(self, comm: MPI.Comm, queues: dict[int, list[int]], windows: tuple[Window, ...],
                 band_count: int):
        self.comm = comm
        self.windows = windows
        self.band_count = band_count
        self._pending = {rank: deque(q) for rank, q in queues.items() if q}
        self._buffer = np.empty(band_count * max(w.size for w in windows), dtype=np.uint8)
        self._status = MPI.Status()

    def probe(self) -> Window:
        """Wait until some worker's next block arrives; return its window.

        Waits by polling with a short sleep rather than in ``MPI_Probe``: Open MPI waits by spinning on a core,
        and with more ranks than cores (two decoders and the writer on two cores) the spinning writer would
        take a third of the CPU the decoders need. A window takes far longer to produce than the sleep.
        """
        delay = POLL_MIN_S
        while not self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=BLOCK_TAG, status=self._status):
            time.sleep(delay)
            delay = min(2 * delay, POLL_MAX_S)
        source = self._status.Get_source()
        if source not in self._pending or not self._pending[source]:
            raise MpiS2Error(f"writer: unexpected block from rank {source}")
        return self.windows[self._pending[source][0]]

    def receive(self, window: Window) -> np.ndarray:
        """Receive the block announced by the last :meth:`probe` into the reusable buffer."""
        source = self._status.Get_source()
        block = self._buffer[: self.band_count * window.size].reshape(self.band_count, *window.shape)
        count = self._status.Get_count(MPI.UINT8_T)
        if count != block.size:
            raise MpiS2Error(f"writer: block from rank {source} has {count} bytes, expected {block.size}")
        self.comm.Recv([block, MPI.UINT8_T], source=source, tag=BLOCK_TAG)
        self._pending[source].popleft()
        return block

    @property
    def remaining(self) -> int:
        return sum(len(q) for q in self._pending.values())
