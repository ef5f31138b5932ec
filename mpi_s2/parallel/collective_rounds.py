"""The HDF5 backend's collective rounds: every worker writes its windows of a round into one parallel-HDF5
file with collective MPI-IO calls, and the windows' status is committed in groups (the file's format is
:mod:`mpi_s2.output.hdf5_store`).

A stop (SIGTERM, SIGINT, SIGHUP) comes while workers are inside collective calls, where nothing collective can
be added. So each worker's signal watcher marks, on its own, the windows *it* wrote in rounds every worker has
finished (:meth:`CollectiveWindowWriter.mark_written_on_stop`): it syncs the file (``fdatasync``: the data of
those rounds, which the collective writes have put in the file, is then on disk), then writes 1 into
``/window_status`` at those windows' bytes with ``pwrite`` (the dataset is contiguous and allocated when the
file is created, so its bytes have a fixed offset), and syncs again. No HDF5 call is made from that thread. A
round counts as finished by every worker once the barrier after its writes has passed: an aggregator of
collective MPI-IO may write another rank's data after that rank's own call has returned.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
from mpi4py import MPI

from mpi_s2.errors import OutputError
from mpi_s2.output import run_lock
from mpi_s2.output.hdf5_store import STATUS_WRITTEN, load_h5py
from mpi_s2.output.journal import commit_interval
from mpi_s2.windows import Window


def collective_write(h5py, dset, dxpl, start: tuple[int, ...] | None, data: np.ndarray | None) -> None:
    """One collective write of ``data`` at ``start`` in ``dset``, or of nothing (``None``): a rank with nothing
    to write still takes part, which h5py's high-level ``dset[...] = ...`` would skip."""
    fspace = dset.id.get_space()
    if data is None:
        fspace.select_none()
        mspace = h5py.h5s.create_simple((1,))
        mspace.select_none()
        data = np.zeros(1, dtype=np.uint8)
    else:
        fspace.select_hyperslab(start, data.shape)
        mspace = h5py.h5s.create_simple(data.shape)
    dset.id.write(mspace, fspace, np.ascontiguousarray(data), dxpl=dxpl)


class CollectiveWindowWriter:
    """The workers' side: rounds of collective writes; the status of the windows written is updated after a
    flush, every :func:`~mpi_s2.output.journal.commit_interval` seconds and at the end.

    Every worker calls :meth:`write_round` the same number of times, with its windows of that round (possibly
    none); inside, the ranks agree on the largest count and pad with empty writes, so every rank makes the
    same number of collective calls whatever the schedule gave it. A flush (``MPI_File_sync``) writes back what
    the page cache holds, so, as the writer backend's journal, it is done in groups: a crash loses at most one
    interval of work.
    """

    def __init__(self, comm, path: str, n_windows: int):
        self.h5py = load_h5py()
        self.comm = comm
        try:
            self.file = self.h5py.File(path, "r+", driver="mpio", comm=comm)
        except OSError as exc:
            raise OutputError(f"{path}: cannot open the HDF5 file for parallel writing: {exc}") from None
        self._lock_fd = os.open(path, os.O_RDONLY)  # the next run waits until every worker let go of the file
        run_lock.hold(self._lock_fd, path, shared=True)
        self.rgb = self.file["rgb"]
        self.status = self.file["window_status"]
        self.dxpl = self.h5py.h5p.create(self.h5py.h5p.DATASET_XFER)
        self.dxpl.set_dxpl_mpio(self.h5py.h5fd.MPIO_COLLECTIVE)
        self.done = self.status[...] if comm.rank == 0 else None
        self.n_windows = n_windows
        self.interval = commit_interval()
        self._last_commit = time.monotonic()
        self._unflushed: list[int] = []
        self.path = path
        offset = self.status.id.get_offset()  # contiguous, allocated: fixed bytes, one per window
        self._status_offset = int(offset) if offset is not None else None
        self._finished: list[int] = []  # this rank's windows of rounds every worker has finished, not committed
        self._finished_lock = threading.Lock()

    def write_round(self, windows: list[tuple[int, Window, np.ndarray]]) -> bool:
        """Write this rank's ``(index, window, block)`` of the round; False once no rank has anything left."""
        mine = np.array([len(windows), time.monotonic() - self._last_commit >= self.interval], dtype=np.int64)
        agreed = np.empty(2, dtype=np.int64)
        self.comm.Allreduce(mine, agreed, op=MPI.MAX)
        count, commit = int(agreed[0]), bool(agreed[1])
        if count == 0:
            self._commit()
            return False
        for k in range(count):
            if k < len(windows):
                _, window, block = windows[k]
                collective_write(self.h5py, self.rgb, self.dxpl, (0, window.row_off, window.col_off), block)
            else:
                collective_write(self.h5py, self.rgb, self.dxpl, None, None)
        self._unflushed += [index for index, _, _ in windows]
        self.comm.Barrier()  # every rank's (and so every aggregator's) writes of this round are in the file
        with self._finished_lock:
            self._finished += [index for index, _, _ in windows]
        if commit:
            self._commit()
        return True

    def _commit(self) -> None:
        """Flush the pixels, then mark their windows written and flush that (collective)."""
        self.file.flush()
        written = self.comm.gather(self._unflushed, root=0)
        if self.comm.rank == 0:
            assert self.done is not None and written is not None
            for indices in written:
                self.done[indices] = STATUS_WRITTEN
            collective_write(self.h5py, self.status, self.dxpl, (0,), self.done)
        else:
            collective_write(self.h5py, self.status, self.dxpl, None, None)
        self.file.flush()
        self._unflushed = []
        with self._finished_lock:
            self._finished = []
        self._last_commit = time.monotonic()

    def mark_written_on_stop(self) -> int:
        """A stop (the signal watcher's thread): mark this rank's windows of finished rounds written, outside
        HDF5 and MPI: sync the file, ``pwrite`` their status bytes, sync again. Returns how many it marked."""
        with self._finished_lock:
            windows = sorted(self._finished)
        if not windows or self._status_offset is None:
            return 0
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.fdatasync(fd)  # the pixels first
            for index in windows:
                os.pwrite(fd, bytes([STATUS_WRITTEN]), self._status_offset + index)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        return len(windows)

    def close(self) -> None:
        self.file.close()
        self._release()

    def _release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def close_quietly(self) -> None:
        """After a failed write, alone in the file: drop every handle so that nothing complains at exit."""
        for name in ("rgb", "status", "dxpl"):
            setattr(self, name, None)
        try:
            self.file.close()
        except Exception:  # noqa: BLE001 - the failure being reported is the write's, not this one
            pass
        self._release()


