"""Progress of a run, as the writer rank sees it: a bar on a terminal, timestamped lines in a log, JSON lines in a file.

A run has one or more *phases*, each counting its items up to a total known at the start: ``"staging"``
(decoding each misaligned source once, in staging units), then ``"windows"`` (output windows written into the
output file). The HDF5 backend has ``"composing"`` between them (windows composed and written into the HDF5
file; its ``"windows"`` are then the windows converted). Phases may overlap in time. The caller reports each
phase's count with :meth:`Progress.update` and ends with :meth:`Progress.close`, or uses the object as a context
manager::

    with Progress({"staging": n_units, "windows": n_windows}, progress_file=path) as progress:
        progress.update(units_done, "staging")
        progress.update(windows_done)  # phase "windows"

Outputs:

* The stream (stderr by default; nothing when ``enabled`` is false), silent until ``delay_s`` has passed
  since the start, so that a short run prints nothing. The default delay, 2 s, can be changed with the
  environment variable ``MPI_S2_PROGRESS_DELAY_S`` (the tests set it to 0).

  - On a terminal (``stream.isatty()``), one tqdm bar per phase: count, total, rate and ETA. While bars are
    shown, the root logger's console handlers write through ``tqdm.write`` (``logging_redirect_tqdm``), so that
    log lines do not break the bars.
  - Otherwise (a Slurm log, a pipe), lines such as
    ``mpi_s2: 2026-12-02T04:40:00Z windows 12/120 (10.0%) 3.2/s ETA 34 s``: one for each new 10 % step
    (the first once the delay has passed), plus a heartbeat when a minute has passed without a line. That is
    at most 11 lines per phase plus one per minute, and never a carriage return.

* The progress file (``progress_file``), written whatever ``enabled`` and the stream are, to be followed
  with ``tail -f`` from another node. It gets JSON lines, appended and flushed one by one::

    {"time": "2026-12-02T04:40:00Z", "phase": "windows", "done": 12, "total": 120, "eta_s": 34.1}

  Each phase gets one line at the start (``done`` 0), then at most one a second, and one as soon as it is
  complete (``done`` == ``total``). :meth:`Progress.close` writes a phase's last count if no line has it
  yet (a run that stops short). ``eta_s`` is null while it is unknown.

A count never goes back: ``update`` keeps the largest count seen, at most the total. A phase whose total is 0
is not reported. A phase's rate (and so its ETA) is measured from its first update, so start-up time does
not count. :meth:`Progress.counts` gives each phase's count and total (for a run report).

``update`` and ``close`` may be called from different threads (``close`` from a signal's cleanup, see
:mod:`mpi_s2.parallel.termination`): a lock keeps a line from being cut.

:func:`timestamp` and :class:`LogFormatter` (format :data:`LOG_FORMAT`) give other log lines the same look:
``mpi_s2: <time> <message>``.

This module does not use MPI.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from mpi_s2.text import timestamp

LOG_FORMAT = "mpi_s2: %(asctime)s %(message)s"
"""Log lines in the progress lines' style; :class:`LogFormatter` writes the time as :func:`timestamp` does."""

HEARTBEAT_S = 60.0
"""Longest gap between two progress lines of a running phase, when not on a terminal."""

FILE_INTERVAL_S = 1.0
"""Shortest gap between two lines of one phase in the progress file (but for its start and its end)."""

UNITS = {"staging": "unit", "composing": "window", "windows": "window"}
"""What a phase counts, as its bar names it (``"item"`` for any other phase)."""

DELAY_S = 2.0
"""Silence at the start of a run (unless ``MPI_S2_PROGRESS_DELAY_S`` says otherwise)."""

__all__ = ["LOG_FORMAT", "LogFormatter", "Progress", "format_duration", "format_rate", "timestamp"]


def default_delay() -> float:
    """:data:`DELAY_S`, or the seconds ``MPI_S2_PROGRESS_DELAY_S`` gives."""
    try:
        return float(os.environ.get("MPI_S2_PROGRESS_DELAY_S", DELAY_S))
    except ValueError:
        return DELAY_S


class LogFormatter(logging.Formatter):
    """Timestamped log lines, ``mpi_s2: 2026-12-02T04:40:00Z <message>`` (by default :data:`LOG_FORMAT`)."""

    def __init__(self, fmt: str = LOG_FORMAT) -> None:
        super().__init__(fmt)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return timestamp(record.created) if datefmt is None else super().formatTime(record, datefmt)


def format_duration(seconds: float) -> str:
    """``34 s``, ``12 min 05 s``, ``3 h 04 min``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def format_rate(per_s: float) -> str:
    """``3.2/s``; a rate under 0.1/s per minute: ``4.5/min``."""
    return f"{per_s:.1f}/s" if per_s >= 0.1 else f"{per_s * 60:.1f}/min"


@dataclass
class _Phase:
    """One phase's count, and what each output last showed of it."""

    name: str
    total: int
    done: int = 0
    first: tuple[float, int] | None = None  # (clock, done) at the first update: the rate's origin
    step: int = -1  # the last 10 % step printed as a line
    printed_at: float = -math.inf  # clock time of the last line printed
    written_at: float = -math.inf  # clock time of the last line in the progress file
    written_done: int = -1  # its count
    bar: tqdm | None = None

    @property
    def complete(self) -> bool:
        return self.done >= self.total

    def rate(self, now: float) -> float | None:
        """Items a second since the first update; None until time has passed."""
        if self.first is None or now <= self.first[0]:
            return None
        return (self.done - self.first[1]) / (now - self.first[0])

    def eta_s(self, now: float) -> float | None:
        """Seconds left at the current rate; 0 once complete, None while unknown."""
        if self.complete:
            return 0.0
        rate = self.rate(now)
        return (self.total - self.done) / rate if rate else None


class Progress:
    """Reports the progress of a run's phases (see the module's docstring).

    ``phases`` maps each phase's name to its total, in display order; a plain int is one phase,
    ``"windows"``. ``delay_s`` defaults to :func:`default_delay`. ``clock`` (seconds, monotonic) times the
    delay, rates and throttling; ``wallclock`` (seconds since the epoch) gives the timestamps.
    """

    def __init__(self, phases: Mapping[str, int] | int, *, enabled: bool = True, stream: TextIO | None = None,
                 progress_file: str | None = None, delay_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic, wallclock: Callable[[], float] = time.time):
        totals = {"windows": phases} if isinstance(phases, int) else dict(phases)
        self._names = set(totals)
        self._order = list(totals)
        self._phases = {name: _Phase(name, total) for name, total in totals.items() if total > 0}
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = enabled
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._delay_s = default_delay() if delay_s is None else delay_s
        self._clock, self._wallclock = clock, wallclock
        self._start = clock()
        self._closed = False
        self._lock = threading.Lock()
        self._redirect = contextlib.ExitStack()  # log lines through tqdm.write while bars are shown
        self._file: TextIO | None = None
        if progress_file is not None and self._phases:
            self._file = open(progress_file, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
            for phase in self._phases.values():
                self._write(phase, self._start)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def update(self, done: int, phase: str = "windows") -> None:
        """``phase`` has ``done`` items done in all (a count, not an increment)."""
        if phase not in self._names:
            raise ValueError(f"progress: unknown phase {phase!r}")
        state = self._phases.get(phase)
        if state is None:
            return  # a phase with nothing to do
        with self._lock:
            self._update(state, done)

    def _update(self, state: _Phase, done: int) -> None:
        if self._closed or state.complete:
            return
        now = self._clock()
        state.done = min(max(done, state.done), state.total)
        if state.first is None:
            state.first = (now, state.done)
        if self._file is not None and (state.complete or now - state.written_at >= FILE_INTERVAL_S):
            self._write(state, now)
        if self._enabled and now - self._start >= self._delay_s:
            if self._tty:
                self._show_bar(state)
            else:
                self._print_line(state, now)

    def close(self) -> None:
        """Close the bars (on a terminal) and the progress file, after writing each phase's last count to it.

        Idempotent; later updates are ignored. Called from another thread while an update is under way, it
        waits for that update (at most a second).
        """
        locked = self._lock.acquire(timeout=1.0)
        try:
            if self._closed:
                return
            self._closed = True
            now = self._clock()
            for state in self._phases.values():
                if state.bar is not None:
                    state.bar.close()
                if self._file is not None and state.written_done != state.done:
                    self._write(state, now)
            if self._file is not None:
                self._file.close()
            self._redirect.close()
        finally:
            if locked:
                self._lock.release()

    def counts(self) -> dict[str, dict[str, Any]]:
        """Each phase's ``done`` and ``total`` (phases with nothing to do included, with total 0)."""
        return {name: {"done": state.done if state else 0, "total": state.total if state else 0}
                for name in self._order for state in (self._phases.get(name),)}

    # -- outputs -----------------------------------------------------------------------------------------
    def _show_bar(self, state: _Phase) -> None:
        if state.bar is None:
            if not any(s.bar is not None for s in self._phases.values()):
                self._redirect.enter_context(logging_redirect_tqdm())
            state.bar = tqdm(total=state.total, initial=state.done, desc=state.name,
                             unit=UNITS.get(state.name, "item"), file=self._stream, dynamic_ncols=True,
                             mininterval=0.5)
        else:
            state.bar.update(state.done - state.bar.n)
        if state.complete:
            state.bar.refresh()

    def _print_line(self, state: _Phase, now: float) -> None:
        step = 10 * state.done // state.total
        if step == state.step and now - state.printed_at < HEARTBEAT_S:
            return
        state.step, state.printed_at = step, now
        line = f"mpi_s2: {timestamp(self._wallclock())} {state.name} {state.done}/{state.total} " \
               f"({100 * state.done / state.total:.1f}%)"
        rate, eta = state.rate(now), state.eta_s(now)
        if rate is not None:
            line += f" {format_rate(rate)}"
        if eta is not None and not state.complete:
            line += f" ETA {format_duration(eta)}"
        self._stream.write(line + "\n")
        self._stream.flush()

    def _write(self, state: _Phase, now: float) -> None:
        assert self._file is not None
        eta = state.eta_s(now)
        record = {"time": timestamp(self._wallclock()), "phase": state.name, "done": state.done,
                  "total": state.total, "eta_s": None if eta is None else round(eta, 1)}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        state.written_at, state.written_done = now, state.done
