"""A progress line on the writer rank, shown only for runs that take more than a couple of seconds."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, *, enabled: bool = True, stream: TextIO | None = None,
                 delay_s: float = 2.0, interval_s: float = 0.5):
        self.total = total
        self.enabled = enabled and total > 0
        self.stream = stream if stream is not None else sys.stderr
        self.delay_s = delay_s
        self.interval_s = interval_s
        self._start = time.monotonic()
        self._last = 0.0
        self._shown = False
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_decile = -1

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        elapsed = now - self._start
        if elapsed < self.delay_s and done < self.total:
            return
        if not self._shown and done >= self.total:
            return  # finished before the delay: stay quiet
        if self._tty:
            if now - self._last < self.interval_s and done < self.total:
                return
            self._last = now
            end = "\n" if done >= self.total else ""
            self.stream.write(f"\r{self._line(done, elapsed)}{end}")
        else:
            decile = 10 * done // self.total
            if decile == self._last_decile:
                return
            self._last_decile = decile
            self.stream.write(self._line(done, elapsed) + "\n")
        self._shown = True
        self.stream.flush()

    def _line(self, done: int, elapsed: float) -> str:
        pct = 100.0 * done / self.total
        return f"mpi_s2: {done}/{self.total} windows ({pct:5.1f}%) in {elapsed:6.1f} s"
