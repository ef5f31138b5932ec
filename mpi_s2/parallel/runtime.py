"""Running a function on every rank so that a failure anywhere ends the whole job, never hangs it.

* An error every rank knows about at once (an input error found while planning, broadcast to all) ends the
  job cleanly: rank 0 prints one line, every rank exits with the error's code.
* Any other exception, on any rank, is reported once by that rank and the communicator is aborted, so the
  other ranks, possibly blocked in a receive or a collective, are killed instead of waiting forever.
* A signal (SIGTERM from Slurm or mpirun, Ctrl-C) ends each rank at once through :mod:`termination`, after the
  cleanup the pipeline registered: rank 0 prints one line.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import traceback
from collections.abc import Mapping
from typing import Any, Callable

from mpi_s2.errors import CollectiveFailure, LaunchError, MpiS2Error
from mpi_s2.parallel import termination


def fail_together(comm, error: MpiS2Error | None, root: int = 0) -> None:
    """Broadcast ``root``'s outcome of a step only it did; on an error, every rank raises :class:`CollectiveFailure`
    (the job ends cleanly with one message, without an abort)."""
    error = comm.bcast(error, root=root) if comm.size > 1 else error
    if error is not None:
        raise CollectiveFailure(error)


def launcher_rank() -> int:
    """This process's rank as the launcher announced it (before MPI starts); 0 when not launched by one."""
    for key in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"):
        if key in os.environ:
            try:
                return int(os.environ[key])
            except ValueError:
                pass
    return 0


def launcher_size(environ: dict[str, str] | os._Environ = os.environ) -> int:
    """How many processes the launcher started (before MPI starts); 1 when not launched by one."""
    for key in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"):
        if key in environ:
            try:
                return int(environ[key])
            except ValueError:
                pass
    return 1


def start_together(failure: MpiS2Error | None, comm=None) -> int:
    """Agree, before a job starts, on whether every rank could read its command line: 0 if so, else the exit code.

    Each rank parses the command line and checks its options before MPI work starts. A rank that fails must not
    just exit: mpirun ends the job at the first non-zero exit, and rank 0, maybe still importing, would be killed
    before printing its line (seen under load). So the ranks gather their outcomes; rank 0 prints the first
    failing rank's line (without a rank when every rank failed alike), and all return its code after a barrier.
    Without a launcher the failure is reported here, without starting MPI."""
    code = 0 if failure is None else failure.exit_code
    if comm is None:
        if failure is not None and launcher_size() <= 1:
            report_error(str(failure))
            return code
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
    if comm.size == 1:  # alone, or one of N singletons (check_launch names that): launcher rank 0 speaks
        if failure is not None and launcher_rank() == 0:
            report_error(str(failure))
        return code
    outcomes = comm.allgather(None if failure is None else (code, str(failure)))
    failed = [(rank, outcome) for rank, outcome in enumerate(outcomes) if outcome is not None]
    if not failed:
        return 0
    rank, (code, message) = failed[0]
    if comm.rank == 0:
        alike = len(failed) == comm.size and len({outcome for _, outcome in failed}) == 1
        report_error(message, None if alike else rank)
    comm.Barrier()  # the line is written before any rank exits
    return code


def error_line(message: str, rank: int | None = None) -> str:
    """The one line an error is: ``mpi_s2: error (rank N): message`` (no time: scripts grep for its start)."""
    where = f" (rank {rank})" if rank is not None else ""
    return f"mpi_s2: error{where}: {message}"


def report_error(message: str, rank: int | None = None) -> None:
    sys.stderr.write(error_line(message, rank) + "\n")
    sys.stderr.flush()


def failure_line(exc: BaseException, rank: int, size: int) -> str:
    """The error line the job prints when ``exc`` ends it on rank ``rank`` of ``size`` (see :func:`run_job`):
    an error every rank learned is printed once, without a rank."""
    if isinstance(exc, CollectiveFailure):
        return error_line(str(exc.error))
    where = rank if size > 1 else None
    if isinstance(exc, MpiS2Error):
        return error_line(str(exc), where)
    if isinstance(exc, KeyboardInterrupt):
        return error_line("interrupted", where)
    return error_line(f"internal error: {type(exc).__name__}: {exc}", where)


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def check_launch(comm_size: int, environ: dict[str, str] | os._Environ = os.environ) -> None:
    """Detect a launcher starting N singletons: every rank then sees a world of size 1 (srun without PMIx, or an
    mpirun of another MPI than the one mpi4py was built with)."""
    if "OMPI_COMM_WORLD_SIZE" in environ:  # started by Open MPI's mpirun: the world must be what it says
        try:
            started = int(environ["OMPI_COMM_WORLD_SIZE"])
        except ValueError:
            return
        if started != comm_size:
            raise LaunchError(
                f"mpirun started {started} processes but MPI sees a world of {comm_size} rank(s): mpi4py's MPI "
                f"library is not the one of this mpirun; use the mpirun of the MPI mpi4py was built with "
                f"(python -c 'import mpi4py; print(mpi4py.get_config())')"
            )
        return
    if "SLURM_PROCID" not in environ or "SLURM_STEP_NUM_TASKS" not in environ:
        return
    tasks = int(environ["SLURM_STEP_NUM_TASKS"])
    if tasks != comm_size:
        raise LaunchError(
            f"srun started {tasks} tasks but MPI sees a world of {comm_size} rank(s): the MPI library did "
            f"not get the job layout from Slurm; launch with 'srun --mpi=pmix' (or mpirun inside the job)"
        )


def run_job(main: Callable[[Any], object], comm=None) -> int:
    """Run ``main(comm)`` on every rank and return the process exit code (or abort the job)."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD if comm is None else comm
    termination.install(comm.rank, report=comm.rank == 0)
    try:
        return _run(main, comm)
    finally:
        termination.uninstall()


def _run(main: Callable[[Any], object], comm) -> int:
    try:
        check_launch(comm.size)
    except LaunchError as exc:
        if launcher_rank() == 0:
            report_error(str(exc))
        return exc.exit_code
    try:
        main(comm)
        return 0
    except CollectiveFailure as failure:
        if comm.rank == 0:
            _say(failure_line(failure, comm.rank, comm.size))
        return failure.error.exit_code
    # Abort inside the except clauses: the exception's frames still hold the buffers of messages in flight, which
    # must not be freed (and reused) while another rank may still be receiving them.
    except MpiS2Error as exc:
        if first_failure_here(comm.size):
            _say(failure_line(exc, comm.rank, comm.size))
        return _abort(comm, exc.exit_code)
    except KeyboardInterrupt as exc:
        if first_failure_here(comm.size):
            _say(failure_line(exc, comm.rank, comm.size))
        return _abort(comm, 130)
    except BaseException as exc:  # a bug: keep the traceback, but still end the job
        traceback.print_exc()
        if first_failure_here(comm.size):
            _say(failure_line(exc, comm.rank, comm.size))
        return _abort(comm, 1)


_ELECTED: list[socket.socket] = []  # held until the process ends (the abort)
_HOLDERS: list[subprocess.Popen] = []  # referenced, so that no warning says they still run

#: Seconds the claim outlives the rank that made it. That rank's abort ends it at once, and mpirun stops the others
#: a moment later: a rank failing in between found the name free (CI: the second reader of a source failing for
#: good, its GDAL retries ending later, printed a second line).
CLAIM_OUTLIVES_S = 10.0


def first_failure_here(size: int, environ: Mapping[str, str] = os.environ,
                       outlive_s: float = CLAIM_OUTLIVES_S) -> bool:
    """Whether this rank is the first of its job on this node to fail: only that one prints the job's error line.

    Two workers that read the same broken source fail within moments of each other, and both would print before
    the abort of the first ends the other. The first binds an abstract unix socket named after the job (PMIx's
    namespace, which mpirun and srun both set), and hands it to a ``sleep`` of ``outlive_s`` seconds, which keeps
    the name bound after this rank's abort while mpirun stops the others. Linux frees the name when the last
    holder ends, so nothing is left behind and nothing can hang. Ranks on other nodes are not told: one line per
    node at most."""
    job = environ.get("PMIX_NAMESPACE") or environ.get("OMPI_MCA_ess_base_jobid")
    if size < 2 or not job or not sys.platform.startswith("linux"):
        return True
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        claim.bind(f"\0mpi_s2-failed-{job}")
    except OSError:
        claim.close()
        return False
    _ELECTED.append(claim)
    if outlive_s > 0:
        try:
            _HOLDERS.append(subprocess.Popen(
                ["sleep", f"{outlive_s:g}"], pass_fds=(claim.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        except OSError:
            pass  # this rank's own life still covers ranks failing at the same moment
    return True


def _abort(comm, code: int) -> int:
    """End every rank of a multi-rank job at once; a one-rank job just returns its exit code."""
    if comm.size > 1:
        comm.Abort(code)
    return code
