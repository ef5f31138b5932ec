"""The campaign commands after ``plan``: submit, status, retry and the reconciliation each of them starts with.

Every command first brings the status database up to date (:func:`refresh`):

1. A submission that a killed command left half done (rows ``submitted`` without a job id) is resolved: the array
   job it had named is found in the queue (``squeue -n``), or through its tasks' markers; or no job exists, and
   the rows go back to ``planned``. Nothing is lost and nothing is submitted twice.
2. The queue is read, then the markers the jobs wrote (in that order: a task writes its marker before it leaves
   the queue), then Slurm's record of the tasks that left the queue without one
   (:func:`mpi_s2.campaign.reconcile.reconcile`). A job that vanished (node failure, ``scancel``) ends ``failed``
   or ``cancelled``, never stuck ``running``.
3. A tile counts as done only when its output exists with the size its marker recorded, with a checksum; the
   partial-run files of done tiles are removed.

Each step is one transaction of the database, so a command killed at any point loses nothing: rerun it.
"""

from __future__ import annotations

import datetime
import logging
import os
import shlex
import shutil
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mpi_s2.campaign.layout import CampaignDir, read_json, write_json
from mpi_s2.campaign.reconcile import reconcile
from mpi_s2.campaign.slurm import Slurm
from mpi_s2.campaign.store import Store, TileRow, open_store
from mpi_s2.campaign.task import run_tile
from mpi_s2.errors import InputError
from mpi_s2.faults import pause_at
from mpi_s2.output.paths import partial_path
from mpi_s2.text import plural

log = logging.getLogger("mpi_s2")

HOME = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JOB_SCRIPT = os.path.join(HOME, "jobs", "campaign-tile.sbatch")
#: Fields a new attempt starts without.
FRESH = {"nodes": None, "started": None, "ended": None, "wall_s": None, "cpu_s": None, "size": None,
         "checksum": None, "error": None}
STATE_ORDER = ("planned", "submitted", "running", "done", "failed", "cancelled", "empty")


@dataclass
class Campaign:
    directory: CampaignDir
    settings: dict[str, Any]
    store: Store
    slurm: Slurm

    def close(self) -> None:
        self.store.close()


def open_campaign(root: str, slurm: Slurm | None = None) -> Campaign:
    directory = CampaignDir(os.path.abspath(root))
    if not os.path.isfile(directory.settings):
        raise InputError(f"{root}: not a campaign directory (no campaign.json: make one with mpi-s2 campaign plan)")
    settings = read_json(directory.settings)
    store = open_store(directory.root, settings.get("db"))
    return Campaign(directory, settings, store, slurm or default_slurm())


def default_slurm() -> Slurm:
    """Slurm's commands, behind ``MPI_S2_SLURM_PREFIX`` when set (e.g. ``ssh login1``, or a test cluster's
    runner)."""
    return Slurm(shlex.split(os.environ.get("MPI_S2_SLURM_PREFIX", "")))


def job_name(settings: dict[str, Any], token: str) -> str:
    return f"mpi_s2-{settings['id']}-{token}"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _markers(directory: CampaignDir, tiles: list[str]) -> dict[str, dict[str, Any]]:
    found = {}
    for tile in tiles:
        try:
            found[tile] = read_json(directory.marker(tile))
        except (OSError, ValueError):
            continue
    return found


# ----------------------------------------------------------------------------------------------------- refresh


def refresh(campaign: Campaign, slurm_needed: bool = True) -> None:
    """Bring the database up to date with the queue, the markers and Slurm's records (see the module)."""
    store = campaign.store
    active = store.tiles(states=["submitted", "running"])
    if not active:
        return
    _settle_local(campaign, [r for r in active if r.job_id == "local"])
    slurm_rows = [r for r in active if r.job_id != "local"]
    _recover_submissions(campaign, [r for r in slurm_rows if not r.job_id])
    slurm_rows = store.tiles(states=["submitted", "running"])
    slurm_rows = [r for r in slurm_rows if r.job_id and r.job_id != "local"]
    if not slurm_rows:
        return
    job_ids = sorted({r.job_id for r in slurm_rows if r.job_id})
    queue = campaign.slurm.queue(job_ids)  # before the markers: see the module
    markers = _markers(campaign.directory, [r.tile for r in slurm_rows])
    queued = {(e.job_id, e.array_task) for e in queue}
    gone = [r for r in slurm_rows if (r.job_id, r.array_task) not in queued and not _current(markers.get(r.tile), r)]
    accounting = campaign.slurm.accounting(sorted({r.job_id for r in gone if r.job_id})) if gone else []
    changes = reconcile(slurm_rows, queue, accounting, markers, _now())
    with store.transaction():
        for change in changes:
            _apply(campaign, change.tile, change.fields)


def _current(marker: dict[str, Any] | None, row: TileRow) -> bool:
    """Whether ``marker`` is of ``row``'s attempt (a retried tile's old marker stays until its new task ends)."""
    return marker is not None and marker.get("attempt") == row.attempts and str(marker.get("job_id")) == str(row.job_id)


MARKER_FIELDS = ("state", "error", "nodes", "started", "ended", "wall_s", "cpu_s", "output", "size", "checksum")


def _settle_local(campaign: Campaign, rows: list[TileRow]) -> None:
    """Tiles a ``submit --local`` left running: that command is gone (it runs its tiles before it returns), so
    each ends as its marker says, or failed."""
    markers = _markers(campaign.directory, [r.tile for r in rows])
    with campaign.store.transaction():
        for row in rows:
            marker = markers.get(row.tile)
            if marker and marker.get("token") == row.submit_token and marker.get("attempt") == row.attempts:
                _apply(campaign, row.tile, {k: marker.get(k) for k in MARKER_FIELDS})
            else:
                campaign.store.update(row.tile, expect=["submitted", "running"], state="failed",
                                      error="interrupted: the campaign command running it locally stopped first")


def _apply(campaign: Campaign, tile: str, fields: dict[str, Any]) -> None:
    """Store one tile's new state; a tile is done only when its output is there as its marker says."""
    if fields.get("state") == "done":
        output = fields.get("output") or campaign.directory.output(tile)
        size = os.path.getsize(output) if os.path.isfile(output) else None
        if size is None or size != fields.get("size") or not fields.get("checksum"):
            fields = {**fields, "state": "failed",
                      "error": f"output {output} is missing or not the size its job recorded"}
        else:
            _remove_leftovers(output)
    campaign.store.update(tile, expect=["submitted", "running"], **fields)


def _remove_leftovers(output: str) -> None:
    """The partial-run files (journal, spools) and staging beside a done tile's output."""
    partial = os.path.basename(partial_path(output))
    folder = os.path.dirname(output)
    for name in os.listdir(folder):
        if name.startswith(partial):
            path = os.path.join(folder, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)


def _recover_submissions(campaign: Campaign, rows: list[TileRow]) -> None:
    """Rows a killed ``submit`` left without a job id: adopt the job their submission started, or plan them
    again when it never started."""
    for token in sorted({r.submit_token for r in rows if r.submit_token}):
        mine = [r for r in rows if r.submit_token == token]
        found = campaign.slurm.jobs_named(job_name(campaign.settings, token))
        if not found:
            markers = _markers(campaign.directory, [r.tile for r in mine])
            found = [m["job_id"] for m in markers.values() if m.get("token") == token and m.get("job_id")]
        with campaign.store.transaction():
            for row in mine:
                if found:
                    campaign.store.update(row.tile, expect="submitted", job_id=str(found[0]))
                else:
                    campaign.store.update(row.tile, expect="submitted", state="planned", job_id=None,
                                          array_task=None, submit_token=None, attempts=max(0, row.attempts - 1))
        log.info("campaign: submission %s %s", token, f"found as job {found[0]}" if found else
                 "never reached Slurm: its tiles are planned again")


# ------------------------------------------------------------------------------------------------------ submit


def submit(root: str, max_running: int | None = None, ranks_per_tile: int = 3, sbatch_options: Sequence[str] = (),
           local: bool = False, launcher: list[str] | None = None, slurm: Slurm | None = None) -> dict[str, Any]:
    """Submit the planned tiles as one Slurm job array (at most ``max_running`` tasks at a time), or with
    ``local`` run them one after another here under ``launcher`` (e.g. ``mpirun -n 3``)."""
    campaign = open_campaign(root, slurm)
    try:
        if not local:
            missing = campaign.slurm.missing()
            if missing:
                raise InputError(missing)
        refresh(campaign)
        rows = campaign.store.tiles(states=["planned"])
        if not rows:
            log.info("campaign: nothing to submit (%s)", _summary(campaign.store.counts()))
            return {"submitted": 0, "job_id": None}
        if local:
            return _run_locally(campaign, rows, launcher or ["mpirun", "-n", str(ranks_per_tile)])
        return _submit_array(campaign, rows, max_running, ranks_per_tile, list(sbatch_options))
    finally:
        campaign.close()


def _submit_array(campaign: Campaign, rows: list[TileRow], max_running: int | None, ranks: int,
                  sbatch_options: list[str]) -> dict[str, Any]:
    directory, store = campaign.directory, campaign.store
    token = uuid.uuid4().hex[:12]
    tasks = {str(i): {"tile": r.tile, "attempt": r.attempts + 1} for i, r in enumerate(rows)}
    write_json(directory.submission(token), {"token": token, "tasks": tasks, "created": _now()})
    with store.transaction():  # the intent first: a command killed after sbatch finds its job by name
        for i, row in enumerate(rows):
            store.update(row.tile, expect="planned", state="submitted", job_id=None, array_task=i,
                         submit_token=token, attempts=row.attempts + 1, **FRESH)
    pause_at("before-sbatch")
    job_id = campaign.slurm.submit_array(
        JOB_SCRIPT, [directory.root, token], list(range(len(rows))), max_running, job_name(campaign.settings, token),
        ["--ntasks", str(ranks), *sbatch_options], os.path.join(directory.logs, "tile-%A_%a.out"),
        env={"MPI_S2_HOME": HOME})
    pause_at("after-sbatch")
    with store.transaction():
        for row in rows:
            store.update(row.tile, expect="submitted", job_id=job_id)
    log.info("campaign: submitted %s as job array %s%s", plural(len(rows), "tile"), job_id,
             f" (at most {max_running} at a time)" if max_running else "")
    return {"submitted": len(rows), "job_id": job_id}


def _run_locally(campaign: Campaign, rows: list[TileRow], launcher: list[str]) -> dict[str, Any]:
    """Each planned tile in turn under ``launcher`` (no Slurm), its marker ingested as soon as it ends."""
    directory, store = campaign.directory, campaign.store
    token = uuid.uuid4().hex[:12]
    tasks = {str(i): {"tile": r.tile, "attempt": r.attempts + 1} for i, r in enumerate(rows)}
    write_json(directory.submission(token), {"token": token, "tasks": tasks, "created": _now()})
    for i, row in enumerate(rows):
        store.update(row.tile, expect="planned", state="running", job_id="local", array_task=i, submit_token=token,
                     attempts=row.attempts + 1, **FRESH)
        log.info("campaign: tile %s (%d of %d) under %s", row.tile, i + 1, len(rows), shlex.join(launcher))
        run_tile(directory.root, token, i, launcher)
        marker = read_json(directory.marker(row.tile))
        fields = {k: marker.get(k) for k in MARKER_FIELDS}
        fields["nodes"] = fields["nodes"] or os.uname().nodename
        with store.transaction():
            _apply(campaign, row.tile, fields)
    return {"submitted": len(rows), "job_id": "local"}


# ------------------------------------------------------------------------------------------------------- retry


def retry(root: str, failed: bool = False, tiles: list[str] | None = None, max_attempts: int | None = None,
          slurm: Slurm | None = None, **submit_options: Any) -> dict[str, Any]:
    """Reset the failed and cancelled tiles (``failed``) and/or the ``tiles`` named to planned, then submit them.
    Tiles that already made ``max_attempts`` attempts are left as they are, and named."""
    if not failed and not tiles:
        raise InputError("campaign retry: give --failed and/or --tiles NAME...")
    campaign = open_campaign(root, slurm)
    try:
        if not submit_options.get("local"):
            missing = campaign.slurm.missing()
            if missing:
                raise InputError(missing)
        refresh(campaign)
        known = {r.tile: r for r in campaign.store.tiles()}
        unknown = [t for t in tiles or [] if t not in known]
        if unknown:
            raise InputError(f"campaign retry --tiles: no such tile in {root}: {', '.join(unknown)}")
        chosen = [r for r in known.values() if (failed and r.state in ("failed", "cancelled"))
                  or (tiles and r.tile in tiles)]
        busy = [r.tile for r in chosen if r.state in ("submitted", "running")]
        if busy:
            raise InputError(f"campaign retry: {', '.join(busy)} still queued or running (wait, or scancel them)")
        spent = [r.tile for r in chosen if max_attempts is not None and r.attempts >= max_attempts]
        if spent:
            log.warning("campaign retry: %s made %d attempts already (--max-attempts): left as they are: %s",
                        plural(len(spent), "tile"), max_attempts, ", ".join(spent))
        reset = [r for r in chosen if r.tile not in spent and r.state not in ("empty",)]
        with campaign.store.transaction():
            for row in reset:
                campaign.store.update(row.tile, expect=row.state, state="planned", job_id=None, array_task=None,
                                      submit_token=None)
        log.info("campaign retry: %s planned again", plural(len(reset), "tile"))
    finally:
        campaign.close()
    result = submit(root, slurm=slurm, **submit_options)
    return {**result, "reset": len(reset), "left": spent}


# ------------------------------------------------------------------------------------------------------ status


def status(root: str, slurm: Slurm | None = None) -> dict[str, Any]:
    """Counts per state, throughput, an ETA, the failed tiles with their last error, the slowest tiles."""
    campaign = open_campaign(root, slurm)
    try:
        active = campaign.store.tiles(states=["submitted", "running"])
        if any(r.job_id != "local" for r in active):
            missing = campaign.slurm.missing()
            if missing:
                raise InputError(missing)
        if active:
            refresh(campaign)
        rows = campaign.store.tiles()
        counts = campaign.store.counts()
    finally:
        campaign.close()
    done = [r for r in rows if r.state == "done"]
    starts = [r.started for r in rows if r.started]
    ends = [r.ended for r in done if r.ended]
    throughput = eta = None
    if done and starts and ends:
        span = (_time(max(ends)) - _time(min(starts))).total_seconds()
        if span > 0:
            throughput = len(done) / span * 3600
            left = sum(counts[s] for s in ("planned", "submitted", "running"))
            eta = left / throughput * 3600 if left else 0.0
    return {
        "campaign": campaign.directory.root, "tiles": len(rows),
        "counts": {s: counts.get(s, 0) for s in STATE_ORDER},
        "tiles_per_hour": round(throughput, 2) if throughput else None,
        "eta_s": round(eta) if eta is not None else None,
        "core_seconds": round(sum(r.cpu_s or 0 for r in done), 1),
        "output_bytes": sum(r.size or 0 for r in done),
        "failed": [{"tile": r.tile, "state": r.state, "attempts": r.attempts, "error": r.error}
                   for r in rows if r.state in ("failed", "cancelled")],
        "empty": [r.tile for r in rows if r.state == "empty"],
        "slowest": [{"tile": r.tile, "wall_s": r.wall_s, "nodes": r.nodes}
                    for r in sorted(done, key=lambda r: -(r.wall_s or 0))[:5]],
        "running": [{"tile": r.tile, "job": f"{r.job_id}_{r.array_task}", "nodes": r.nodes}
                    for r in rows if r.state == "running"],
    }


def _time(text: str) -> datetime.datetime:
    value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)


def _summary(counts: dict[str, int]) -> str:
    return ", ".join(f"{counts[s]} {s}" for s in STATE_ORDER if counts.get(s))


def status_table(report: dict[str, Any]) -> str:
    """``campaign status`` as text."""
    lines = [f"campaign {report['campaign']}: {plural(report['tiles'], 'tile')}", ""]
    lines += [f"  {state:<10} {count:>6}" for state, count in report["counts"].items()]
    rate = report["tiles_per_hour"]
    eta = report["eta_s"]
    lines += ["", f"throughput: {f'{rate:g} tiles/hour' if rate else 'none yet'}; "
                  f"ETA: {_duration(eta) if eta is not None else 'unknown'}; "
                  f"{report['core_seconds']:g} CPU-s and {report['output_bytes'] / 1e6:.1f} MB in done tiles"]
    if report["running"]:
        lines += ["", "running:"] + [f"  {r['tile']:<12} job {r['job']} on {r['nodes']}" for r in report["running"]]
    if report["failed"]:
        lines += ["", "failed or cancelled (mpi-s2 campaign retry DIR --failed):"]
        lines += [f"  {f['tile']:<12} {f['state']:<9} attempt {f['attempts']}: {f['error']}" for f in report["failed"]]
    if report["empty"]:
        lines += ["", f"empty (no item covers them): {', '.join(report['empty'])}"]
    if report["slowest"]:
        lines += ["", "slowest done tiles:"]
        lines += [f"  {s['tile']:<12} {s['wall_s']:.1f} s on {s['nodes']}" for s in report["slowest"]]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def print_status(report: dict[str, Any]) -> None:
    sys.stdout.write(status_table(report) + "\n")
