"""The second backend's file: one parallel-HDF5 file every worker writes its windows into, collectively.

Layout (``OUTPUT`` with ``.h5`` instead of its extension, beside it):

* ``/rgb``: uint8 ``(bands, rows, cols)``, contiguous (the fast path of collective MPI-IO), allocated when the
  file is created, never filled (space no window writes reads as 0, which is nodata);
* ``/window_status``: uint8 per planned window, 1 once its pixels are written *and flushed* (group commits,
  as the writer backend's journal), so a killed run knows what it can reuse;
* attributes: ``crs_wkt``, ``geotransform``, ``band_count``, ``nodata_meaning``, ``gdal_metadata`` (the
  GeoTIFF's metadata: radiometry per input, gamma, ...), ``inputs``, ``plan`` (window size and windows),
  ``creation_options``, ``fingerprint`` (see :mod:`mpi_s2.output.fingerprint`) and ``mpi_s2_format``.
  Structured values are JSON strings. Everything needed to georeference and reproduce the output is there.

Debian's h5py loads its MPI build only when it sees ``OMPI_COMM_WORLD_SIZE`` (set by mpirun, not by srun);
:func:`load_h5py` sets ``H5PY_ALWAYS_USE_MPI`` first, and says clearly when h5py has no MPI support.

h5py skips a write whose selection is empty, which would leave the other ranks waiting in a collective call:
:func:`collective_write` goes through the low-level API, so a rank with nothing to write still takes part.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

from mpi_s2.errors import OutputError
from mpi_s2.output.journal import commit_interval
from mpi_s2.windows import Window

FORMAT = 1
STATUS_WRITTEN = 1


def load_h5py():
    """h5py with MPI support, or :class:`OutputError` saying what is missing."""
    os.environ.setdefault("H5PY_ALWAYS_USE_MPI", "1")
    try:
        import h5py
    except ImportError:
        raise OutputError("--backend hdf5 needs h5py built with MPI (Debian: python3-h5py-mpi)") from None
    if not h5py.get_config().mpi:
        raise OutputError("--backend hdf5: this h5py has no MPI support (h5py.get_config().mpi is False); install "
                          "an MPI build (Debian: python3-h5py-mpi, and h5py must be imported with "
                          "H5PY_ALWAYS_USE_MPI=1 or under mpirun)")
    return h5py


def h5_path(output: str) -> str:
    root, _ = os.path.splitext(output)
    return root + ".h5"


def _is_ours(h5py, path: str) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("mpi_s2_format") is not None
    except OSError:
        return False


def create_store(path: str, *, size: tuple[int, int], bands: int, windows: list[Window], attrs: dict[str, Any]
                 ) -> None:
    """Create the file (one process): datasets allocated up front, attributes written."""
    h5py = load_h5py()
    if os.path.exists(path) and not _is_ours(h5py, path):
        raise OutputError(f"{path}: exists and is not an mpi_s2 HDF5 file; move it away or choose another output")
    try:
        with h5py.File(path, "w") as f:
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # parallel HDF5 needs the space allocated
            dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # new file space reads as 0 anyway
            f.create_dataset("rgb", shape=(bands, size[1], size[0]), dtype=np.uint8, dcpl=dcpl)
            f.create_dataset("window_status", data=np.zeros(len(windows), dtype=np.uint8))
            f.attrs["mpi_s2_format"] = FORMAT
            plan = {**attrs.get("plan", {}), "windows": [[w.col_off, w.row_off, w.width, w.height] for w in windows]}
            for key, value in {**attrs, "plan": plan}.items():
                f.attrs[key] = value if isinstance(value, (int, float, str)) else json.dumps(value)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create the HDF5 file: {exc}") from None


def read_attrs(path: str) -> dict[str, Any]:
    """The file's attributes (JSON decoded) and its window status."""
    h5py = load_h5py()
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("mpi_s2_format") != FORMAT:
                raise OutputError(f"{path}: not an mpi_s2 HDF5 file (format {FORMAT})")
            out = {}
            for key, value in f.attrs.items():
                value = value.decode() if isinstance(value, bytes) else value
                try:
                    out[key] = json.loads(value) if isinstance(value, str) and value[:1] in "[{\"" else value
                except json.JSONDecodeError:
                    out[key] = value
            out["window_status"] = f["window_status"][...]
            out["shape"] = f["rgb"].shape
            return out
    except OSError as exc:
        raise OutputError(f"{path}: cannot read the HDF5 file: {exc}") from None


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
        self.rgb = self.file["rgb"]
        self.status = self.file["window_status"]
        self.dxpl = self.h5py.h5p.create(self.h5py.h5p.DATASET_XFER)
        self.dxpl.set_dxpl_mpio(self.h5py.h5fd.MPIO_COLLECTIVE)
        self.done = self.status[...] if comm.rank == 0 else None
        self.n_windows = n_windows
        self.interval = commit_interval()
        self._last_commit = time.monotonic()
        self._unflushed: list[int] = []

    def write_round(self, windows: list[tuple[int, Window, np.ndarray]]) -> bool:
        """Write this rank's ``(index, window, block)`` of the round; False once no rank has anything left."""
        from mpi4py import MPI

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
        if commit:
            self._commit()
        return True

    def _commit(self) -> None:
        """Flush the pixels, then mark their windows written and flush that (collective)."""
        self.file.flush()
        written = self.comm.gather(self._unflushed, root=0)
        if self.comm.rank == 0:
            for indices in written:
                self.done[indices] = STATUS_WRITTEN
            collective_write(self.h5py, self.status, self.dxpl, (0,), self.done)
        else:
            collective_write(self.h5py, self.status, self.dxpl, None, None)
        self.file.flush()
        self._unflushed = []
        self._last_commit = time.monotonic()

    def close(self) -> None:
        self.file.close()

    def close_quietly(self) -> None:
        """After a failed write, alone in the file: drop every handle so that nothing complains at exit."""
        for name in ("rgb", "status", "dxpl"):
            setattr(self, name, None)
        try:
            self.file.close()
        except Exception:  # noqa: BLE001 - the failure being reported is the write's, not this one
            pass


class WindowReader:
    """Conversion: a rank reads windows of the file (independent reads, no MPI driver needed)."""

    def __init__(self, path: str):
        h5py = load_h5py()
        try:
            self.file = h5py.File(path, "r")
        except OSError as exc:
            raise OutputError(f"{path}: cannot open the HDF5 file: {exc}") from None
        self.rgb = self.file["rgb"]

    def render(self, window: Window, block: np.ndarray, stats=None) -> None:
        """Fill ``block`` (``(bands, rows, cols)``) with ``window``'s pixels."""
        rows, cols = window.toslices()
        if stats is not None:
            with stats.timer("read"):
                self.rgb.read_direct(block, np.s_[:, rows, cols])
        else:
            self.rgb.read_direct(block, np.s_[:, rows, cols])

    def close(self) -> None:
        self.file.close()
