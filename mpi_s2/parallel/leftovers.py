"""What a failed or stopped run leaves behind: nothing, or the partial run ``--resume`` continues (and a note).

* Bad input or a full disk: everything goes (resuming cannot help; a kept partial file would hold the space).
* Any other failure or a signal: a run that keeps a journal (the writer backend with tiles encoded by the workers)
  or an HDF5 file keeps it beside the output, and says so; anything else is removed.
* A full disk is recognised whatever reported it (``ENOSPC`` from Python, ``TIFFAppendToStrip: Write error``
  from GDAL, a failed ``H5Dwrite``): after a failed write, the file system of the output, the HDF5 file or the
  staging copies is checked for free space, and the error becomes one line naming that directory.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from mpi_s2.errors import InputError, OutputError, Stopped
from mpi_s2.output.free_space import full_disk_error, is_full_disk_error
from mpi_s2.output.hdf5_store import h5_path
from mpi_s2.output.paths import partial_run_exists, remove_partial, spool_path
from mpi_s2.planning.plan import Plan
from mpi_s2.planning.stage_plan import remove_staging

log = logging.getLogger("mpi_s2")

def disk_full(plan: Plan, exc: BaseException) -> OutputError | None:
    """The error to report instead of ``exc`` when it comes from a full file system, else None."""
    if isinstance(exc, (InputError, Stopped)):
        return None
    config = plan.config
    places = [config.output]
    if config.backend == "hdf5":
        places.append(h5_path(config.output))
    if plan.staging_directory:
        places.append(os.path.dirname(os.path.abspath(plan.staging_directory)))
    return full_disk_error(exc, config.output, places)


def clean_up(plan: Plan, exc: BaseException) -> None:
    """After a failure or a signal: keep what ``--resume`` can continue (and say so), remove everything else."""
    config = plan.config
    remove_staging(plan.staging_directory)
    hdf5 = config.backend == "hdf5"
    if hdf5:
        remove_partial(config.output, keep=("kept", "stretch"))  # the conversion's file: redone from the HDF5 file
    state = h5_path(config.output) if hdf5 else None
    hopeless = isinstance(exc, InputError) or is_full_disk_error(exc)
    if hopeless or not (hdf5 or plan.output.resumable):
        remove_partial(config.output)
        if hopeless and state and os.path.exists(state):
            os.unlink(state)
        return
    if not (os.path.exists(state) if state else partial_run_exists(config.output)):
        remove_partial(config.output)  # killed before anything was durably recorded: nothing to resume
        return
    if _first_to_say(config.output):
        log.warning("the partial run is kept beside %s%s: rerun with --resume to finish it, or without --resume "
                    "to start over", config.output, f" ({state})" if state else "")


def _first_to_say(output: str) -> bool:
    """True for the first rank that claims the note (several ranks of a failing job may clean up)."""
    try:
        os.close(os.open(spool_path(output, "kept"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    except OSError:
        return True
    return True


def forget_note(output: str) -> None:
    """A new attempt starts: a failure of this one is noted again."""
    try:
        os.unlink(spool_path(output, "kept"))
    except OSError:
        pass


def process_gone(host: str, pid: int) -> bool:
    """Whether process ``pid`` on ``host`` has ended (a zombie counts); False when it cannot be told from here."""
    if host != socket.gethostname():
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except (OSError, IndexError):
        return False


#: How long a stopped worker waits for the writer to finish its own stop (sync, journal, note, report) before it
#: exits; on another node, where the writer's end cannot be seen, it waits :data:`REMOTE_WRITER_WAIT_S`.
WRITER_WAIT_S = 5.0
REMOTE_WRITER_WAIT_S = 1.0


def wait_until_gone(host: str, pid: int, timeout: float) -> bool:
    """Wait until process ``pid`` on ``host`` has ended, at most ``timeout`` seconds (on another host, which cannot
    be watched from here, :data:`REMOTE_WRITER_WAIT_S` at most); True once it has."""
    if host != socket.gethostname():
        time.sleep(min(timeout, REMOTE_WRITER_WAIT_S))
        return False
    deadline = time.monotonic() + timeout
    while not process_gone(host, pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def on_signal_cleanup(plan: Plan, is_writer: bool, first_worker: bool, writer: tuple[str, int]):
    """The cleanup :mod:`termination` runs if a signal ends this rank.

    The writer cleans up. A worker first lets the writer finish its stop: mpirun ends every rank at once when one
    of them exits, so a worker that exited at once would kill the writer in the middle of journalling what it has
    placed. If the writer itself was killed (SIGKILL: it could not clean up), the first worker, on the writer's
    host, does it instead. Whoever keeps a partial run first says so, once (:func:`_first_to_say`).
    """
    def cleanup(signum: int) -> None:
        if is_writer:
            clean_up(plan, Stopped(signum))
            return
        gone = wait_until_gone(*writer, timeout=WRITER_WAIT_S)
        if first_worker and gone:  # killed before it could clean up (or it did: no-op)
            clean_up(plan, Stopped(signum))
    return cleanup
