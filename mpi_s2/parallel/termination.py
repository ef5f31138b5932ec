"""Ending a rank on a signal, within the second a launcher allows, leaving nothing behind.

SIGTERM comes from Slurm (a time limit, ``scancel``: then SIGKILL after ``KillWait``, 30 s by default) and from
``mpirun`` when it tears a job down (the user's Ctrl-C or SIGTERM, or a rank that died or aborted; SIGKILL follows
after ``odls_base_sigkill_timeout``, one second). SIGINT is Ctrl-C without a launcher, SIGHUP a closed terminal.

Python runs signal handlers only in the main thread, between bytecodes: not while a rank waits in a blocking MPI
call or a long GDAL decode. So the handlers do nothing themselves; the C-level handler writes the signal number
to a pipe (:func:`signal.set_wakeup_fd`) and a watcher thread, woken at once, runs the cleanup the pipeline has
registered for this rank (rank 0: remove the partial output, or keep it for ``--resume`` and say so), prints one
line on rank 0, and ends the process with ``os._exit(128 + signum)``, the shell's convention for a signal.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Callable

log = logging.getLogger("mpi_s2")

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
Cleanup = Callable[[int], None]

_active: Termination | None = None


def describe(signum: int) -> str:
    causes: dict[int, str] = {
        signal.SIGTERM: "a time limit, scancel, or mpirun ending the job: Ctrl-C, or another rank failed",
        signal.SIGINT: "Ctrl-C", signal.SIGHUP: "the terminal was closed"}
    name = signal.Signals(signum).name
    return f"{name}: the job was stopped from outside ({causes.get(signum, name)})"


def stopped_line(rank: int, signum: int) -> str:
    """The line rank 0 prints when a signal ends the job (no time: scripts grep for its start)."""
    return f"mpi_s2: stopped (rank {rank}): {describe(signum)}"


class Termination:
    """Signal handling for one rank: install once, register the current cleanup, uninstall at the end."""

    def __init__(self, rank: int, report: bool, stream=None):
        self.rank = rank
        self.report = report  # whether this rank prints the line (rank 0 of the job)
        self.stream = stream or sys.stderr
        self._cleanups: list[Cleanup] = []
        self._lock = threading.Lock()
        self._previous: dict[int, object] = {}
        self._read_fd = self._write_fd = -1
        self._previous_fd = -1

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals can only be handled from the main thread (e.g. under a test runner's worker)
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, _wake_only)
        threading.Thread(target=self._watch, name="mpi_s2-termination", daemon=True).start()

    def uninstall(self) -> None:
        if self._read_fd < 0:
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._write_fd)  # the watcher reads EOF and ends
        self._read_fd = self._write_fd = -1

    def add_cleanup(self, cleanup: Cleanup, last: bool = False) -> None:
        """Run ``cleanup(signum)`` if a signal ends this rank (most recent first; ``last``: after every other
        cleanup, in the order added: slow steps, such as syncing, that the launcher may cut short)."""
        with self._lock:
            if last:
                self._cleanups.append(cleanup)
            else:
                self._cleanups.insert(0, cleanup)

    def remove_cleanup(self, cleanup: Cleanup) -> None:
        with self._lock:
            if cleanup in self._cleanups:
                self._cleanups.remove(cleanup)

    def _watch(self) -> None:
        read_fd = self._read_fd
        while True:
            try:
                data = os.read(read_fd, 1)
            except OSError:
                return
            if not data:
                os.close(read_fd)
                return
            signum = data[0]
            if signum in SIGNALS:
                self._terminate(signum)

    def _terminate(self, signum: int) -> None:
        with self._lock:  # never released: the process ends here
            if self.report:
                _say(self.stream, stopped_line(self.rank, signum))
            for cleanup in self._cleanups:
                try:
                    cleanup(signum)
                except Exception as exc:  # a cleanup that fails must not keep the process alive
                    log.warning("cleanup after %s failed: %s", signal.Signals(signum).name, exc)
            for handler in logging.getLogger().handlers + log.handlers:
                handler.flush()
            _say(self.stream, "")
            os._exit(128 + signum)


def _say(stream, line: str) -> None:
    """Write ``line`` (nothing: just flush) where the launcher may already have stopped reading: a closed pipe
    must not keep the cleanups from running."""
    try:
        if line:
            stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass


def _wake_only(signum, frame) -> None:
    """The Python-level handler: nothing; the watcher thread, woken by the C-level handler, does the work."""


def install(rank: int, report: bool) -> Termination:
    global _active
    _active = Termination(rank, report)
    _active.install()
    return _active


def uninstall() -> None:
    global _active
    if _active is not None:
        _active.uninstall()
    _active = None


def on_signal(cleanup: Cleanup, last: bool = False) -> Callable[[], None]:
    """Register ``cleanup`` with the active handling (if any); return the function that unregisters it."""
    active = _active
    if active is None:
        return lambda: None
    active.add_cleanup(cleanup, last)
    return lambda: active.remove_cleanup(cleanup)
