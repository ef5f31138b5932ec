"""One live run per output: a run holds a lock on its partial run for as long as it lives.

A stopped run (``scancel``, a time limit) still commits its journal for a moment after Slurm has recorded the
job as ended, and a resubmitted job (``--resume=auto``) may start at once: it must not read the partial run, nor
start it over, before the old run has let go of it. So the live run holds ``flock`` on the file a resume starts
from (the writer's journal, or the HDF5 file: every worker holds it shared), and the next run's planner waits
until nothing holds it: :data:`WAIT_S` at most (Slurm's ``KillWait`` is 30 s by default; ``MPI_S2_LOCK_WAIT``
overrides it), then stops with one line. The lock goes with the process (a SIGKILLed run holds nothing), and it
is an ``flock`` on a file the run has anyway, so nothing extra is left beside the output.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time

from mpi_s2.errors import OutputError

log = logging.getLogger("mpi_s2")

WAIT_S = 60.0


def wait_seconds() -> float:
    text = os.environ.get("MPI_S2_LOCK_WAIT")
    return float(text) if text else WAIT_S


def hold(fd: int, path: str, shared: bool = False) -> None:
    """Lock ``path`` (open as ``fd``) for this run; another live run holding it is an error."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OutputError(f"{path}: another mpi_s2 run is writing this partial run") from None


def wait_until_free(path: str, output: str, timeout: float | None = None) -> None:
    """Return once no live run holds ``path`` (or it is not there); after ``timeout`` seconds, an error."""
    timeout = wait_seconds() if timeout is None else timeout
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        deadline, said = time.monotonic() + timeout, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise OutputError(f"{output}: another mpi_s2 run is still writing it (it holds "
                                      f"{os.path.basename(path)}); waited {timeout:g} s") from None
                if not said:
                    log.warning("%s: waiting for the previous run, which still holds %s, to end (at most %g s)",
                                output, os.path.basename(path), timeout)
                    said = True
                time.sleep(0.1)
    finally:
        os.close(fd)  # releases the probe's own lock
