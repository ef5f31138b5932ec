"""Telling a full file system from other write failures, whichever layer reported it.

Python says ``ENOSPC``; GDAL says ``TIFFAppendToStrip: Write error`` or ``_tiffWriteProc: No space left on device``;
HDF5 says ``can't write data``. After any failed write, the file system that was written is checked: with less
than :data:`FULL_BELOW_BYTES` free (or an errno that says so), the error becomes one line naming the directory.
"""

from __future__ import annotations

import errno
import os

from mpi_s2.errors import OutputError

#: below this many free bytes after a failed write, the file system is taken to be full
FULL_BELOW_BYTES = 1 << 20
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
MARK = "no space left on device"


def free_bytes(directory: str) -> int | None:
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def full_disk_error(exc: BaseException, output: str, places: list[str]) -> OutputError | None:
    """The one-line error for ``exc`` if one of ``places`` (files or directories written) is full, else None."""
    if isinstance(exc, OutputError) and MARK in str(exc):
        return exc
    if not isinstance(exc, (OSError, RuntimeError)):
        return None
    said_full = isinstance(exc, OSError) and exc.errno in FULL_ERRNOS or MARK in str(exc).lower()
    for place in dict.fromkeys(os.path.dirname(os.path.abspath(p)) if not os.path.isdir(p) else p
                               for p in places):
        free = free_bytes(place)
        if free is not None and (free < FULL_BELOW_BYTES or said_full):
            return OutputError(f"{place}: {MARK} while writing {output} ({free / 1e6:.1f} MB free); nothing "
                               f"was kept")
    return None


def is_full_disk_error(exc: BaseException) -> bool:
    return isinstance(exc, OutputError) and MARK in str(exc)
