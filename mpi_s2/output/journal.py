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

A stop (SIGTERM, SIGINT, SIGHUP) must not lose the windows placed since the last group commit, and it has
little time: ``mpirun`` sends SIGKILL one second after SIGTERM, and one ``fdatasync`` on a busy disk takes
longer than that. So a stop works in two steps. :meth:`Journal.stop_record` (the signal watcher's thread, see
:mod:`mpi_s2.parallel.termination`) appends at once, without any sync, a marker line
``{"unsynced": BOOT_ID, "host": HOST}`` and the lines of every window recorded so far (also those a group
commit in flight has taken): written, they are in the page cache, which survives the process. Then, as the
stop's last step, :meth:`Journal.stop_sync` syncs the data and appends ``{"synced": 1}``, synced. A resume
trusts the windows between the two markers when the second is there, or when it runs on the same host and the
same boot (the kernel still holds what was written: nothing was lost unless the machine went down); otherwise
(the stop was cut and the machine rebooted, or the resume runs on another node) it drops them, and those
windows are computed again. Records are taken and lines appended under locks, so the writer's thread may go
on recording meanwhile.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from mpi_s2.errors import OutputError
from mpi_s2.output import run_lock

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
        self._commit_lock = threading.Lock()  # one sync at a time (group commit, or a stop's sync)
        self._append_lock = threading.Lock()  # whole lines, one writer at a time
        self._in_flight: list[str] = []  # taken by a group commit, not yet appended
        self._stopped = False  # a stop has appended everything: group commits append nothing more
        self._unsynced = False  # a stop's lines wait for its sync

    @classmethod
    def create(cls, path: str, fingerprint: dict[str, Any], data_start: int) -> Journal:
        header = {"format": FORMAT, "fingerprint": fingerprint, "data_start": data_start}
        fh = open(path, "w", encoding="utf-8")
        run_lock.hold(fh.fileno(), path)
        fh.write(json.dumps(header, sort_keys=True) + "\n")
        fh.flush()
        os.fdatasync(fh.fileno())
        return cls(path, fh, header)

    @staticmethod
    def read(path: str) -> tuple[dict[str, Any], list[Record]]:
        """An existing journal's header and the records a resume may trust (read only: nothing is changed)."""
        header, records, _, _ = _parse(path)
        return header, records

    @classmethod
    def reopen(cls, path: str, header: dict[str, Any], sync_data: Callable[[], None]) -> Journal:
        """Continue an existing journal: drop a torn last line and a stop's records it does not trust, confirm
        a stop's records it trusts (``sync_data`` first: they are in this machine's page cache), then append."""
        fh = open(path, "r+", encoding="utf-8")
        run_lock.hold(fh.fileno(), path)
        _, _, good, unconfirmed = _parse(path)
        fh.truncate(good)
        fh.seek(good)
        journal = cls(path, fh, header)
        if unconfirmed:
            sync_data()
            journal._append([json.dumps(SYNCED)], sync=True)
        return journal

    def record(self, window: int, tiles: list[list[int]]) -> None:
        """``window``'s tiles are written (not yet synced): journal them at the next commit."""
        line = json.dumps({"w": window, "t": tiles}, separators=(",", ":"))
        with self._records_lock:
            self._pending.append(line)

    def _take(self) -> list[str]:
        with self._records_lock:
            lines, self._pending = self._pending, []
            self._in_flight = lines
        return lines

    def _append(self, lines: list[str], sync: bool) -> None:
        with self._append_lock:
            self._fh.write("\n".join(lines) + "\n")
            self._fh.flush()
        if sync:
            os.fdatasync(self._fh.fileno())

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
            if self._fh.closed or self._stopped:
                return
            sync_data()
            with self._append_lock:
                if self._stopped:  # the stop has appended these lines itself (and syncs them)
                    return
                self._fh.write("\n".join(lines) + "\n")
                self._fh.flush()
                with self._records_lock:
                    self._in_flight = []
            os.fdatasync(self._fh.fileno())

    def stop_record(self) -> int:
        """A stop, step 1 (any thread, at once, no sync): append every window recorded so far after an
        ``unsynced`` marker; group commits append nothing more. Returns the number of windows appended."""
        with self._append_lock:
            if self._fh.closed or self._stopped:
                return 0
            self._stopped = True
            with self._records_lock:
                lines, self._in_flight, self._pending = self._in_flight + self._pending, [], []
            if not lines:
                return 0
            marker = json.dumps({"unsynced": boot_id(), "host": socket.gethostname()}, sort_keys=True)
            self._fh.write("\n".join([marker, *lines]) + "\n")
            self._fh.flush()
            self._unsynced = True
            return len(lines)

    def stop_sync(self, sync_data: Callable[[], None]) -> None:
        """A stop, step 2 (slow; the last thing a stopped writer does): make step 1's windows durable."""
        if not self._unsynced:
            return
        with self._commit_lock:  # a group commit in flight finishes its sync first (and appends nothing)
            if self._fh.closed:
                return
            sync_data()
            self._append([json.dumps(SYNCED)], sync=True)
            self._unsynced = False

    def commit_now(self, sync_data: Callable[[], None]) -> int:
        """Both steps of a stop in the calling thread; returns the number of windows journalled."""
        count = self.stop_record()
        self.stop_sync(sync_data)
        return count

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


SYNCED = {"synced": 1}


def boot_id() -> str:
    """This machine's current boot (Linux): the page cache is the same as long as it is."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return "unknown"


def _parse(path: str) -> tuple[dict[str, Any], list[Record], int, bool]:
    """Header, the records a resume may trust, the length of the journal's part to keep, and whether that part
    ends with a stop's records that are trusted but not confirmed by a sync."""
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
    held: list[Record] = []  # a stop's records, until its "synced" line
    marker: dict[str, Any] | None = None
    good = length = len(lines[0]) + 1
    for line in lines[1:]:
        try:
            entry = json.loads(line)
            if "unsynced" in entry:
                marker, held, before_marker = entry, [], length
            elif "synced" in entry:
                records.extend(held)
                marker, held = None, []
            elif marker is not None:
                held.append((int(entry["w"]), [list(map(int, t)) for t in entry["t"]]))
            else:
                records.append((int(entry["w"]), [list(map(int, t)) for t in entry["t"]]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            break  # the torn last line of a crash, or the empty string after the last newline
        length += len(line) + 1
        if marker is None:
            good = length
    if marker is None:
        return header, records, good, False
    if marker.get("unsynced") == boot_id() and marker.get("host") == socket.gethostname():
        return header, records + held, length, bool(held)
    return header, records, before_marker, False
