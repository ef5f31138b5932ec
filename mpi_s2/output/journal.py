"""The writer backend's journal: which windows' tiles are durably written, so that a killed run can resume.

An append-only text file beside the output (``.NAME.partial.journal``). Its first line is a JSON header: the
run's fingerprint (inputs and every parameter that changes a pixel or a byte, see
:mod:`mpi_s2.output.fingerprint`) and where the tile data starts. Then one JSON line per window:
``{"w": window index, "t": [[level, tile number, offset, size], ...]}``.

A line is appended only after the tile data it names has reached the disk (``fdatasync`` of the data file),
and the journal itself is synced after it, so after any crash the journal never names bytes that are not there.
Syncing writes back everything the file has in the page cache, which takes seconds for large uncompressed
outputs, so windows are committed in groups, at most every :data:`COMMIT_INTERVAL_S` seconds
(``MPI_S2_COMMIT_INTERVAL`` overrides it; a crash loses at most that much work), and by a background thread:
the writer keeps placing tiles meanwhile (``fdatasync`` releases the GIL). The finished file is not synced
(as GDAL does not sync it either). A torn last line (the crash came while appending) is ignored.

A stop (SIGTERM, SIGINT, SIGHUP) must not lose the windows placed since the last group commit: the signal
watcher (:mod:`mpi_s2.parallel.termination`) calls :meth:`Journal.commit_now` from its own thread, which waits
for a commit in flight, then syncs and journals everything recorded so far. Records are taken and commits
serialised under locks, so the writer's thread may go on recording meanwhile.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from mpi_s2.errors import OutputError

COMMIT_INTERVAL_S = 30.0
FORMAT = 1

Record = tuple[int, list[list[int]]]  # window index, [[level, number, offset, size], ...]


def commit_interval() -> float:
    text = os.environ.get("MPI_S2_COMMIT_INTERVAL")
    return float(text) if text else COMMIT_INTERVAL_S


class Journal:
    """Append-only, group-committed record of finished windows."""

    def __init__(self, path: str, handle, header: dict[str, Any]):
        self.path = path
        self.header = header
        self._fh = handle
        self._pending: list[str] = []
        self._last_commit = time.monotonic()
        self.interval = commit_interval()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._records_lock = threading.Lock()  # _pending: appended by the writer, taken by a commit
        self._commit_lock = threading.Lock()  # one commit at a time (group commit, or a stop's commit_now)

    @classmethod
    def create(cls, path: str, fingerprint: dict[str, Any], data_start: int) -> Journal:
        header = {"format": FORMAT, "fingerprint": fingerprint, "data_start": data_start}
        fh = open(path, "w", encoding="utf-8")
        fh.write(json.dumps(header, sort_keys=True) + "\n")
        fh.flush()
        os.fdatasync(fh.fileno())
        return cls(path, fh, header)

    @staticmethod
    def read(path: str) -> tuple[dict[str, Any], list[Record]]:
        """An existing journal's header and complete records (read only: nothing is changed)."""
        header, records, _ = _parse(path)
        return header, records

    @classmethod
    def reopen(cls, path: str, header: dict[str, Any]) -> Journal:
        """Continue an existing journal: drop a torn last line, then append."""
        _, _, good = _parse(path)
        fh = open(path, "r+", encoding="utf-8")
        fh.truncate(good)
        fh.seek(good)
        return cls(path, fh, header)

    def record(self, window: int, tiles: list[list[int]]) -> None:
        """``window``'s tiles are written (not yet synced): journal them at the next commit."""
        line = json.dumps({"w": window, "t": tiles}, separators=(",", ":"))
        with self._records_lock:
            self._pending.append(line)

    def _take(self) -> list[str]:
        with self._records_lock:
            lines, self._pending = self._pending, []
        return lines

    def maybe_commit(self, sync_data: Callable[[], None]) -> None:
        """Commit the pending windows in the background if the interval has passed and none is in flight."""
        self._raise_background_error()
        if not self._pending or time.monotonic() - self._last_commit < self.interval:
            return
        if self._thread is not None and self._thread.is_alive():
            return
        lines = self._take()
        self._last_commit = time.monotonic()
        if self.interval <= 0:  # tests: every window at once, in this thread
            self._commit(sync_data, lines)
            return
        self._thread = threading.Thread(target=self._commit_in_background, args=(sync_data, lines), daemon=True)
        self._thread.start()

    def _commit_in_background(self, sync_data: Callable[[], None], lines: list[str]) -> None:
        try:
            self._commit(sync_data, lines)
        except BaseException as exc:  # reported by the writer's next call
            self._error = exc

    def _commit(self, sync_data: Callable[[], None], lines: list[str]) -> None:
        """Sync the data, then append and sync ``lines``."""
        with self._commit_lock:
            if self._fh.closed:
                return
            sync_data()
            self._fh.write("\n".join(lines) + "\n")
            self._fh.flush()
            os.fdatasync(self._fh.fileno())

    def commit_now(self, sync_data: Callable[[], None]) -> int:
        """Commit every window recorded so far, now, in the calling thread (a stop: the signal watcher).

        Waits for a group commit in flight (the commit lock), then syncs the data and journals the rest. Returns
        the number of windows journalled by this call."""
        lines = self._take()
        if lines:
            self._commit(sync_data, lines)
        return len(lines)

    def _raise_background_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def wait(self) -> None:
        """Let a commit in flight finish (before the data file is closed or renamed)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._raise_background_error()

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._commit_lock:
            if self._fh is not None and not self._fh.closed:
                self._fh.close()


def _parse(path: str) -> tuple[dict[str, Any], list[Record], int]:
    """Header, complete records and the length of the good part of the journal at ``path``."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().split("\n")
    except OSError as exc:
        raise OutputError(f"{path}: cannot read the journal of the partial run: {exc.strerror}") from None
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:
        raise OutputError(f"{path}: not a journal of mpi_s2 (unreadable header)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise OutputError(f"{path}: not a journal of this mpi_s2 version (format {FORMAT})")
    records: list[Record] = []
    for line in lines[1:]:
        try:
            entry = json.loads(line)
            records.append((int(entry["w"]), [list(map(int, t)) for t in entry["t"]]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            break  # the torn last line of a crash, or the empty string after the last newline
    good = len(lines[0]) + 1 + sum(len(line) + 1 for line in lines[1: 1 + len(records)])
    return header, records, good
