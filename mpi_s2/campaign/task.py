"""One tile of a campaign, as a job runs it: compose the tile under the job's launcher, then write its marker.

Run by ``jobs/campaign-tile.sbatch`` as one task of a Slurm job array (``python -m mpi_s2.campaign.task DIR
TOKEN``: the task id comes from ``SLURM_ARRAY_TASK_ID``), or by ``campaign submit --local`` under ``mpirun``. It
never touches the status database: it writes ``DIR/tiles/T/marker.json`` atomically when it ends, and the campaign
command ingests it (:mod:`mpi_s2.campaign.reconcile`).

- Done: ``mpi-s2 compose`` exited 0 and its output exists; the marker holds its size and SHA-256.
- Failed: the compose's ``mpi_s2: error...`` line (or its exit status); a warning before the time limit (SIGUSR1,
  ``--signal=B:USR1@...``) stops the compose, which keeps its partial run for ``--resume``.
- Cancelled: SIGTERM (``scancel``); the marker is written at once, before Slurm's SIGKILL can follow.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Any

from mpi_s2.campaign.layout import CampaignDir, read_json, write_json

CHUNK = 8 << 20


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def compose_arguments(directory: CampaignDir, settings: dict[str, Any], tile: str) -> list[str]:
    """``mpi-s2 compose``'s arguments for ``tile``: its own items, the campaign's area, the tile's CRS and extent
    (exactly its pixels: tiles meet without a gap or an overlap), the campaign's options, and
    ``--resume=auto`` (a partial run of an earlier attempt is finished, a complete one is left as it is)."""
    placed = settings["tiles"][tile]
    return ["compose", "--stac", directory.tile_items(tile), "--aoi", directory.aoi, "--crs", f"EPSG:{placed['epsg']}",
            "--extent", ",".join(f"{v:.10g}" for v in placed["bounds"]), *settings["compose_args"],
            "-o", directory.output(tile),
            "--report", directory.report(tile), "--resume=auto", "-q"]


def srun_launcher() -> list[str]:
    return ["srun", f"--mpi={os.environ.get('MPI_S2_SRUN_MPI', 'pmix')}", "--kill-on-bad-exit=1"]


def run_tile(root: str, token: str, task_id: int, launcher: list[str]) -> int:
    """Compose the tile of task ``task_id`` of submission ``token``; write its marker; 0 when done."""
    directory = CampaignDir(root)
    entry = read_json(directory.submission(token))["tasks"][str(task_id)]
    tile, attempt = entry["tile"], entry["attempt"]
    settings = read_json(directory.settings)
    marker: dict[str, Any] = {
        "tile": tile, "attempt": attempt, "token": token, "job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
        "array_task": task_id, "nodes": os.environ.get("SLURM_JOB_NODELIST"), "started": now(),
        "output": directory.output(tile),
    }
    start = time.monotonic()
    command = [*launcher, sys.executable, "-m", "mpi_s2", *compose_arguments(directory, settings, tile)]
    print(f"mpi_s2 campaign: tile {tile}, attempt {attempt}: {shlex.join(command)}", file=sys.stderr, flush=True)
    child = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, errors="replace", env=_child_env(tile))
    stopped: list[str] = []

    def on_signal(signum: int, _frame: Any) -> None:
        cancel = signum == signal.SIGTERM
        stopped.append("cancelled" if cancel else "failed")
        if cancel:  # Slurm's SIGKILL follows after KillWait: the marker first
            _write(directory, marker, start, "cancelled", "cancelled (scancel or Slurm stopped the job)")
        child.send_signal(signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(signum, on_signal)
    last_error = None
    assert child.stderr is not None
    for line in child.stderr:
        sys.stderr.write(line)
        if line.startswith(("mpi_s2: error", "mpi_s2: stopped")):
            last_error = line.strip().removeprefix("mpi_s2: error: ").removeprefix("mpi_s2: ")
    code = child.wait()
    sys.stderr.flush()
    if stopped:
        state = stopped[0]
        error = ("cancelled (scancel or Slurm stopped the job)" if state == "cancelled" else
                 "stopped before the time limit (SIGUSR1); the partial run is kept for --resume")
    elif code == 0 and os.path.isfile(directory.output(tile)):
        state, error = "done", None
    else:
        state = "failed"
        error = last_error or f"mpi-s2 compose exited with status {code}"
    _write(directory, marker, start, state, error)
    return 0 if state == "done" else 1


def _child_env(tile: str) -> dict[str, str]:
    """The compose's environment: a test's fault (``MPI_S2_TEST_FAULT``, :mod:`mpi_s2.faults`) only reaches the
    tiles ``MPI_S2_TEST_FAULT_TILE`` names (comma-separated), when it names any."""
    env = dict(os.environ)
    if tile not in env.get("MPI_S2_TEST_FAULT_TILE", tile).split(","):
        env.pop("MPI_S2_TEST_FAULT", None)
    return env


def _write(directory: CampaignDir, marker: dict[str, Any], start: float, state: str, error: str | None) -> None:
    tile = marker["tile"]
    done = state == "done"
    output = directory.output(tile)
    marker.update(state=state, error=error, ended=now(), wall_s=round(time.monotonic() - start, 3),
                  cpu_s=_cpu_seconds(directory.report(tile)) if done else None,
                  size=os.path.getsize(output) if done else None, checksum=sha256(output) if done else None)
    write_json(directory.marker(tile), marker)


def _cpu_seconds(report: str) -> float | None:
    """The CPU seconds of every rank of the compose, from its run report."""
    try:
        return round(sum(rank["cpu_s"] for rank in read_json(report)["ranks"]), 3)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print("usage: python -m mpi_s2.campaign.task DIR TOKEN [TASK_ID]   (a campaign's array task; the task id "
              "defaults to SLURM_ARRAY_TASK_ID)", file=sys.stderr)
        return 2
    task_id = int(args[2]) if len(args) == 3 else int(os.environ["SLURM_ARRAY_TASK_ID"])
    launcher = shlex.split(os.environ["MPI_S2_TILE_LAUNCHER"]) if "MPI_S2_TILE_LAUNCHER" in os.environ \
        else srun_launcher()
    return run_tile(args[0], args[1], task_id, launcher)


if __name__ == "__main__":
    sys.exit(main())
