"""Fault injection for tests: make one rank fail or die after it has handled K windows.

``MPI_S2_TEST_FAULT=RANK:K:fail`` raises an error on rank RANK after its K-th window; ``RANK:K:kill`` sends
it SIGKILL (after half a second, so that what it sent has arrived and been journaled, as a real crash of a
busy rank would find it); ``RANK:K:stall`` says so on stderr and sleeps, so that a test can signal a job
caught in the middle. ``MPI_S2_TEST_FAULT_ATTEMPT=N`` restricts the fault to attempt N of a Slurm job that is
requeued (``SLURM_RESTART_COUNT``, 0 or unset the first time). A fourth field names the pass whose windows
count: ``windows`` (the default: the windows written) or ``counted`` (the counting pass of a percentile stretch).
Unset, :func:`window_done` costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from mpi_s2.errors import MpiS2Error

_SPEC = os.environ.get("MPI_S2_TEST_FAULT")
if _SPEC and os.environ.get("MPI_S2_TEST_FAULT_ATTEMPT", os.environ.get("SLURM_RESTART_COUNT", "0")) != \
        os.environ.get("SLURM_RESTART_COUNT", "0"):
    _SPEC = None  # another attempt of the requeued job


def window_done(rank: int, count: int, phase: str = "windows") -> None:
    """Called by a rank each time it has handled a window (``count`` so far in ``phase``)."""
    if not _SPEC:
        return
    target, after, action, *where = _SPEC.split(":")
    if int(target) != rank or count != int(after) or (where[0] if where else "windows") != phase:
        return
    if action == "stall":
        sys.stderr.write(f"mpi_s2: test fault: rank {rank} stalls after {count} windows\n")
        sys.stderr.flush()
        time.sleep(600)
    if action == "kill":
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
    raise MpiS2Error(f"test fault: rank {rank} fails after {count} windows (MPI_S2_TEST_FAULT)")


def pause_at(point: str) -> None:
    """``MPI_S2_TEST_PAUSE=POINT``: a test's way to catch a command at ``point`` (it says so on stderr and sleeps
    until killed), e.g. ``campaign submit`` between sbatch and recording the job id."""
    if os.environ.get("MPI_S2_TEST_PAUSE") == point:
        print(f"mpi_s2: test pause at {point}", file=sys.stderr, flush=True)
        time.sleep(3600)
