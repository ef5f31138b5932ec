"""Decide each submitted or running tile's new state from what its job left and what Slurm says: pure, no Slurm.

Jobs never write the status database: each array task writes an atomic marker (``tiles/<tile>/marker.json``) when
it ends, and the campaign command calls :func:`reconcile` with the database rows, squeue, the markers and Slurm's
records (sacct, or sacct -c), then stores the :class:`Change` s it returns.

Ordering: the caller must read the queue BEFORE the markers. A task writes its marker before it exits, so a task
that ended between the two reads has its marker; a task missing from the queue and without a marker has then
really ended without one (read the other way round, a task that ends in between would look lost).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mpi_s2.campaign.slurm import Accounting, QueueEntry

#: Row states reconcile looks at (with a job id); the others are left alone.
ACTIVE_STATES = ("submitted", "running")
#: The fields a marker carries into the database.
MARKER_FIELDS = ("error", "nodes", "started", "ended", "wall_s", "cpu_s", "output", "size", "checksum")
MARKER_STATES = ("done", "failed", "cancelled")
#: squeue states of a task that waits to run (again).
QUEUED_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD"}
#: squeue states of a task that holds its nodes.
RUNNING_STATES = {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING"}

ERROR_CANCELLED = "cancelled (scancel or Slurm)"
ERROR_NOT_VERIFIED = "output not verified (the marker says done but gives no size or checksum)"
ERROR_NO_MARKER = "job ended without writing its marker"
ERROR_TIME_LIMIT = "time limit"
ERROR_OUT_OF_MEMORY = "out of memory"
ERROR_NO_RECORD = ("the job left the queue without a marker, and Slurm keeps no record of it: node failure or "
                   "cancel")


class Row(Protocol):
    """What reconcile reads of a status database row (read-only, so any row type with these attributes fits)."""

    @property
    def tile(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def attempts(self) -> int: ...
    @property
    def job_id(self) -> str | None: ...
    @property
    def array_task(self) -> int | None: ...


@dataclass(frozen=True)
class Change:
    """The fields to store for one tile: state, error, nodes, started, ended, wall_s, cpu_s, output, size,
    checksum (only those that change)."""

    tile: str
    fields: dict[str, Any]


def _key(job_id: Any, array_task: Any) -> tuple[str, int | None]:
    return str(job_id), None if array_task is None else int(array_task)


def _marker_matches(row: Row, marker: Mapping[str, Any]) -> bool:
    """The marker was written by this row's current attempt (not a stale one from an earlier submission)."""
    try:
        return (_key(marker.get("job_id"), marker.get("array_task")) == _key(row.job_id, row.array_task)
                and marker.get("attempt") is not None and int(marker["attempt"]) == int(row.attempts))
    except (TypeError, ValueError):
        return False


def from_marker(marker: Mapping[str, Any], now: str) -> dict[str, Any]:
    """The fields a matching marker decides (rule 1)."""
    fields: dict[str, Any] = {name: marker.get(name) for name in MARKER_FIELDS}
    state = marker.get("state")
    if state not in MARKER_STATES:
        fields["state"] = "failed"
        fields["error"] = f"the marker has an unknown state {state!r}"
    elif state == "done" and (not marker.get("checksum") or marker.get("size") is None):
        fields["state"] = "failed"
        fields["error"] = ERROR_NOT_VERIFIED
    else:
        fields["state"] = state
        if state == "done":
            fields["error"] = None
    if not fields.get("ended"):
        fields["ended"] = now
    return {"state": fields.pop("state"), **fields}


def from_queue(row: Row, entry: QueueEntry) -> dict[str, Any] | None:
    """The fields a queue entry decides (rule 2); None when the row already says so."""
    if entry.state in RUNNING_STATES:
        if row.state == "running":
            return None
        return {"state": "running", "nodes": entry.nodes or None, "started": entry.start}
    if row.state == "submitted":
        return None
    return {"state": "submitted"}  # requeued (node failure, preemption): waits again


def from_accounting(record: Accounting | None, now: str) -> dict[str, Any]:
    """The fields of a task gone from the queue without a marker (rule 3)."""
    if record is None:
        return {"state": "failed", "error": ERROR_NO_RECORD, "ended": now}
    state = record.state
    if state == "CANCELLED":
        new, error = "cancelled", ERROR_CANCELLED
    elif state in {"NODE_FAIL", "BOOT_FAIL"}:
        new, error = "failed", f"node failure: Slurm state {state}"
    elif state == "TIMEOUT":
        new, error = "failed", ERROR_TIME_LIMIT
    elif state == "OUT_OF_MEMORY":
        new, error = "failed", ERROR_OUT_OF_MEMORY
    elif state == "FAILED":
        new, error = "failed", f"job failed, exit code {record.exit_code}" + (
            f", signal {record.signal}" if record.signal else "") + ", no marker"
    elif state == "COMPLETED":
        new, error = "failed", ERROR_NO_MARKER
    else:  # PREEMPTED, DEADLINE..., or a record still PENDING/RUNNING (accounting lags): gone all the same
        new, error = "failed", f"the job left the queue without a marker (Slurm state {state or 'unknown'})"
    return {"state": new, "error": error, "nodes": record.nodes or None, "started": record.start,
            "ended": record.end or now, "wall_s": record.elapsed_s, "cpu_s": record.cpu_s}


def _record(records: Mapping[tuple[str, int | None], Accounting], key: tuple[str, int | None]) -> Accounting | None:
    """The task's record; for an array task without one, the array's record without a task if that never ran
    (the job completion log keeps one record for all the tasks cancelled before they started)."""
    record = records.get(key)
    if record is None and key[1] is not None:
        rest = records.get((key[0], None))
        if rest is not None and not rest.nodes:
            return rest
    return record


def reconcile(rows: Iterable[Row], queue: Sequence[QueueEntry], accounting: Sequence[Accounting] | None,
              markers: Mapping[str, Mapping[str, Any]], now: str) -> list[Change]:
    """The changes to store for the rows in state submitted or running with a job id; the others are left alone.

    ``queue``: squeue now; ``markers``: the markers found, by tile; ``accounting``: Slurm's records (None when it
    keeps none); ``now``: the time to store as ``ended`` when nothing else says it. Read the queue BEFORE the
    markers (see the module's docstring). For each row, the first rule that applies decides:

    1. a marker of this attempt (same job id, array task and attempt): its state and fields; "done" without size or
       checksum counts as failed (output not verified);
    2. the task is in the queue: pending -> submitted, running -> running with its nodes and start (no change when
       the row says so already);
    3. gone without a marker: Slurm's record says why (cancelled, node failure, time limit, out of memory, failed
       with its exit code, completed without a marker); without a record: failed, node failure or cancel.
    """
    in_queue = {_key(e.job_id, e.array_task): e for e in queue}
    records: dict[tuple[str, int | None], Accounting] = {}
    for record in accounting or ():
        records[_key(record.job_id, record.array_task)] = record  # the last one wins (a requeued job's latest)
    changes: list[Change] = []
    for row in rows:
        if row.state not in ACTIVE_STATES or not row.job_id:
            continue
        key = _key(row.job_id, row.array_task)
        marker = markers.get(row.tile)
        fields: dict[str, Any] | None
        if marker is not None and _marker_matches(row, marker):
            fields = from_marker(marker, now)
        elif key in in_queue and in_queue[key].state in QUEUED_STATES | RUNNING_STATES:
            fields = from_queue(row, in_queue[key])
        else:
            fields = from_accounting(_record(records, key), now)
        if fields is not None:
            changes.append(Change(row.tile, fields))
    return changes
