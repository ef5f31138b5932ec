"""Rank 0's ``--report``, written once whatever the outcome: ``ok``, ``failed`` or ``stopped``.

A job uses one :class:`RunReport` on every rank, as a context manager around all it does::

    with RunReport(config.report, comm.rank, comm.size) as run:
        run.learn(output=..., crs_epsg=...)     # run-level fields, as they become known
        run.progress = progress                 # its counts go into a report written before the end
        ...
        run.ok(report)                          # rank 0, at the end: the full report

* **ok**: the full report (per-rank accounting and all), after the run's context (:func:`mpi_s2.report.run_context`)
  and ``status``.
* **failed**: an exception leaves the context on rank 0 (its own error, or one every rank learned): rank 0 writes
  what it knows: the context, the fields learned so far, the progress counts, ``status: "failed"`` and ``error``,
  the error line the user saw. A worker whose failure aborts the job cannot tell rank 0 by MPI: it leaves its
  error line in a note beside the report (:func:`mpi_s2.report.leave_failure_note`) before the job is aborted;
  rank 0, stopped by the launcher, finds it and writes ``"failed"`` with that line.
* **stopped**: a signal ends rank 0 (:mod:`mpi_s2.parallel.termination` runs :meth:`RunReport.stopped`):
  ``status: "stopped"``, ``signal`` (e.g. ``"SIGTERM"``) and ``error``, the stopped line. The progress file gets
  its last counts first.

The first outcome written wins: a signal during the final write, or the launcher's SIGTERM after rank 0's own
failure, changes nothing. Writing is best effort: a report that cannot be written is a warning, never a second
error. This module does not use MPI.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import TracebackType
from typing import Any, Self

from mpi_s2.errors import CollectiveFailure, PathError
from mpi_s2.parallel import termination
from mpi_s2.parallel.progress import Progress
from mpi_s2.parallel.runtime import failure_line
from mpi_s2.report import leave_failure_note, run_context, take_failure_note, write_report
from mpi_s2.text import timestamp

log = logging.getLogger("mpi_s2")


class RunReport:
    """The report of one job at ``path`` (None: no report), seen from rank ``rank`` of ``size``."""

    def __init__(self, path: str | None, rank: int, size: int):
        self.path, self.rank, self.size = path, rank, size
        self.context = run_context(time.time())
        self.known: dict[str, Any] = {"mpi_ranks": size}
        self.progress: Progress | None = None
        self._lock = threading.Lock()
        self._written = False
        self._forget = lambda: None

    @property
    def writes(self) -> bool:
        """Whether this rank writes the report (rank 0, when one was asked for)."""
        return self.path is not None and self.rank == 0

    def __enter__(self) -> Self:
        if self.writes:
            assert self.path is not None
            take_failure_note(self.path)  # an earlier job's note is not this job's
            self._forget = termination.on_signal(self.stopped)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._forget()
        if exc is None or self.path is None:
            return
        line = failure_line(exc, self.rank, self.size)
        if self.rank == 0 and not self._is_bad_path(exc):
            self._write("failed", line, None, {})
        elif not isinstance(exc, CollectiveFailure):  # this rank aborts the job: rank 0 learns why from the note
            leave_failure_note(self.path, line)

    def _is_bad_path(self, exc: BaseException) -> bool:
        """Whether ``exc`` says the report's own path must not be written (a directory, an input, another
        option's file): the failed report is not written there either."""
        error = exc.error if isinstance(exc, CollectiveFailure) else exc
        return (isinstance(error, PathError) and self.path is not None
                and os.path.realpath(error.path) == os.path.realpath(self.path))

    def learn(self, **fields: Any) -> None:
        """Run-level fields known so far (written whatever the outcome)."""
        self.known.update(fields)

    def ok(self, report: dict[str, Any]) -> dict[str, Any]:
        """Rank 0 at the end: write ``report`` with the run's context and ``status: "ok"``; return it whole."""
        return self._write("ok", None, None, report)

    def stopped(self, signum: int) -> None:
        """A signal ends rank 0: ``"stopped"``, or ``"failed"`` when a failing worker left its error line."""
        if not self.writes:
            return
        assert self.path is not None
        note = take_failure_note(self.path)
        name = signal.Signals(signum).name
        if note:
            self._write("failed", note, name, {})
        else:
            self._write("stopped", termination.stopped_line(self.rank, signum), name, {})

    def _write(self, status: str, error: str | None, signame: str | None, body: dict[str, Any]) -> dict[str, Any]:
        if self.progress is not None and status != "ok":
            self.progress.close()  # the progress file ends with the last counts too
        report = {"status": status, "error": error, "signal": signame, **self.context, "end": timestamp(),
                  **self.known}
        if self.progress is not None:
            report["progress"] = self.progress.counts()
        report.update(body)
        if not self.writes:
            return report
        assert self.path is not None
        with self._lock:
            if self._written:
                return report
            self._written = True
            try:
                write_report(self.path, report)
            except OSError as exc:
                if os.path.isdir(os.path.dirname(os.path.abspath(self.path))):  # else the error line said so
                    log.warning("%s: the run report could not be written: %s", self.path, exc)
        return report
