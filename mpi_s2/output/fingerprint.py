"""What identifies a run's result, so that ``--resume`` only continues a run that would give the same file.

The fingerprint holds every input file (path, size, modification time), the output grid, the windows, the
radiometry and every option that changes a pixel or a byte of the output. Options that do not (rank count,
schedule, staging directory, progress, report) are left out: a run may resume with another rank count.

A finished output keeps the fingerprint's digest (SHA-256 of its canonical JSON) in its GDAL metadata, in the
domain ``MPI_S2`` (so the default domain is unchanged), so that ``--resume=auto`` can tell an output that is
already complete with the same inputs and options.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from osgeo import gdal

from mpi_s2.errors import InputError
from mpi_s2.output.plan import OutputPlan


def file_identity(path: str) -> list[Any]:
    """``[path, size, modification time]``; GDAL's virtual paths (``/vsizip/...``) through GDAL."""
    if path.startswith("/vsi"):
        st = gdal.VSIStatL(path)
        if st is None:
            raise InputError(f"{path}: cannot stat")
        return [path, st.size, st.mtime]
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from None
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def run_fingerprint(files: list[str], output: OutputPlan, radiometry: list[list[list[float]]],
                    options: dict[str, Any]) -> dict[str, Any]:
    """The fingerprint of a run reading ``files`` into ``output``, with per-source ``[offset, scale]`` per band
    and the pixel-changing ``options``; JSON-serialisable."""
    grid = output.spec.grid
    fingerprint = {
        "inputs": [file_identity(path) for path in files],
        "grid": {"size": list(grid.size), "geotransform": list(grid.geotransform), "crs_wkt": grid.crs_wkt},
        "window_size": list(output.window_size),
        "windows": len(output.windows),
        "radiometry": radiometry,
        "options": options,
        "creation_options": dict(sorted(output.spec.creation_options.items())),
    }
    return json.loads(json.dumps(fingerprint))  # plain JSON types, as they read back from a file


#: Where the finished output keeps the fingerprint's digest: GDAL metadata item FINGERPRINT in domain MPI_S2.
DIGEST_DOMAIN, DIGEST_ITEM = "MPI_S2", "FINGERPRINT"


def fingerprint_digest(fingerprint: dict[str, Any]) -> str:
    """The SHA-256 of the fingerprint's canonical JSON (what a finished output keeps)."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def stored_digest(path: str) -> str | None:
    """The fingerprint digest a finished output keeps, or None (not an mpi_s2 output, or an older one)."""
    gdal.UseExceptions()
    try:
        ds = gdal.Open(path)
    except RuntimeError:
        return None
    return ds.GetMetadataItem(DIGEST_ITEM, DIGEST_DOMAIN) if ds is not None else None


def first_difference(stored: Any, current: Any, where: str = "") -> str | None:
    """A short description of the first place where two fingerprints differ, or None when equal."""
    if isinstance(stored, dict) and isinstance(current, dict):
        for key in sorted(set(stored) | set(current)):
            found = first_difference(stored.get(key), current.get(key), f"{where}.{key}" if where else key)
            if found:
                return found
        return None
    if isinstance(stored, list) and isinstance(current, list) and len(stored) == len(current):
        for i, (a, b) in enumerate(zip(stored, current, strict=True)):
            found = first_difference(a, b, f"{where}[{i}]")
            if found:
                return found
        return None
    if stored != current:
        return f"{where}: was {_short(stored)}, now {_short(current)}"
    return None


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def describe_mismatch(stored: dict[str, Any], current: dict[str, Any]) -> str | None:
    """Why a partial run with fingerprint ``stored`` cannot be resumed by a run with ``current``; None if it can."""
    old, new = stored.get("inputs", []), current.get("inputs", [])
    if [f[0] for f in old] != [f[0] for f in new]:
        paths = [f[0] for f in new if f[0] not in {g[0] for g in old}] or [f[0] for f in old]
        return f"the inputs differ from the partial run's (e.g. {paths[0]})"
    for before, now in zip(old, new, strict=True):
        if before != now:
            return f"input {now[0]} changed since the partial run (size or modification time)"
    return first_difference(stored, current)
