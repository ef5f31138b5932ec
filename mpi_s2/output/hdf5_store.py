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
from typing import Any

import numpy as np

from mpi_s2.errors import OutputError
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
