"""Per-rank accounting (where the time went) and the ``--report`` JSON file.

The report is written whatever the outcome, with its ``status``: ``"ok"``, ``"failed"`` (and the ``error`` line
the user saw) or ``"stopped"`` (and the ``signal``). What every report has, the run's context
(:func:`run_context`): ``start`` and ``end`` (ISO-8601 UTC), ``version``, ``command`` (the command line, shell
quoted) and ``slurm`` (the job, step and array ids; null outside Slurm). A run that ends ok adds per-rank
accounting and, for ``compose``, the output's ``pixel_fractions`` (:func:`pixel_fractions`).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shlex
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Protocol

from mpi_s2 import __version__
from mpi_s2.text import timestamp


class BlockCounts(Protocol):
    """What a rank counted of the source blocks it decoded (:class:`mpi_s2.inputs.block_counts.DecodeCounter`)."""

    decoded: dict[int, int]

    def as_dict(self) -> dict[int, dict]: ...


PHASES = ("read", "compute", "encode", "wait", "write")
#: Timed apart from the phases, in its own field: the quicklook (a worker's cell sums; the writer's accumulation,
#: read-back after a resume and the image).
QUICKLOOK = "quicklook"


@dataclass
class RankStats:
    """Seconds one rank spent in each phase, and the windows and pixels it handled."""

    rank: int
    role: str
    seconds: dict[str, float] = field(default_factory=lambda: {p: 0.0 for p in PHASES})
    windows: int = 0
    pixels: int = 0
    valid_pixels: int = 0  # of the windows composed: some input valid there
    cloud_masked_pixels: int = 0  # some input had data there, but every such input was masked (--cloud-mask)
    stage_units: int = 0
    peak_rss_mb: float = 0.0
    cpu_s: float = 0.0
    host: str = field(default_factory=socket.gethostname)
    decoder_threads: int = 1
    quicklook_s: float = 0.0

    @contextlib.contextmanager
    def timer(self, phase: str) -> Iterator[None]:
        """Add the time spent in the block to ``phase`` (one of :data:`PHASES`, or :data:`QUICKLOOK`)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            if phase == QUICKLOOK:
                self.quicklook_s += time.perf_counter() - start
            else:
                self.seconds[phase] += time.perf_counter() - start

    def finish(self, counter: BlockCounts | None = None) -> dict[str, Any]:
        """Record peak memory and CPU time and return a plain dict (for ``comm.gather``).

        ``cpu_s`` is the process's CPU time, all threads (GDAL decoder threads included). With a ``counter``,
        ``blocks_decoded`` gives this rank's decoded blocks per source, and ``decode`` the data rank 0 merges.
        """
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.peak_rss_mb = usage.ru_maxrss / 1024.0
        self.cpu_s = usage.ru_utime + usage.ru_stime
        data = asdict(self)
        data["seconds"] = {k: round(v, 4) for k, v in self.seconds.items()}
        data["peak_rss_mb"] = round(self.peak_rss_mb, 1)
        data["cpu_s"] = round(self.cpu_s, 3)
        data["quicklook_s"] = round(self.quicklook_s, 4)
        if counter is not None:
            data["blocks_decoded"] = {str(s): n for s, n in sorted(counter.decoded.items())}
            data["decode"] = counter.as_dict()
        return data


def busy_imbalance(ranks: list[dict[str, Any]]) -> float | None:
    """Max over mean of the workers' busy time (read + compute): 1.0 is a perfect balance."""
    busy = [r["seconds"]["read"] + r["seconds"]["compute"] for r in ranks if "worker" in r["role"]]
    mean = sum(busy) / len(busy) if busy else 0.0
    return round(max(busy) / mean, 4) if mean > 0 else None


def output_stage_capacity(ranks: list[dict[str, Any]]) -> dict[str, float] | None:
    """N*: how many workers one writer can serve, (mean worker CPU seconds per window) / (writer's per window).

    The writer's CPU time includes planning; a job with more workers than N* waits for its writer.
    """
    workers = [r for r in ranks if r["role"] == "worker"]
    writers = [r for r in ranks if "writer" in r["role"] and "worker" not in r["role"]]
    windows = sum(r["windows"] for r in workers)
    if not workers or not writers or not windows:
        return None
    per_worker_window = sum(r["cpu_s"] for r in workers) / windows
    per_writer_window = sum(r["cpu_s"] for r in writers) / windows
    return {"worker_cpu_s_per_window": round(per_worker_window, 5),
            "writer_cpu_s_per_window": round(per_writer_window, 5),
            "n_star": round(per_worker_window / per_writer_window, 1) if per_writer_window > 0 else None}


def quicklook_seconds(ranks: list[dict[str, Any]]) -> dict[str, float]:
    """The quicklook's own time: the writer rank's (accumulating, reading reused windows back, writing the image;
    in a one-rank job, everything) and the workers' summed time computing their windows' cell sums."""
    writer = sum(r.get("quicklook_s", 0.0) for r in ranks if "writer" in r["role"])
    workers = sum(r.get("quicklook_s", 0.0) for r in ranks if "writer" not in r["role"])
    return {"seconds": round(writer + workers, 4), "writer_s": round(writer, 4), "workers_s": round(workers, 4)}


def build_report(summary: dict[str, Any], ranks: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    pixels = summary["pixels"]
    return {
        **summary,
        "wall_s": round(wall_s, 4),
        "pixels_per_s": round(pixels / wall_s, 1) if wall_s > 0 else None,
        "worker_busy_imbalance": busy_imbalance(ranks),
        "output_stage": output_stage_capacity(ranks),
        "hosts": sorted({r["host"] for r in ranks}),
        "ranks": ranks,
    }


def write_report(path: str, report: dict[str, Any]) -> None:
    """Write ``report`` to ``path`` as JSON, whole or not at all (a temporary file beside it, renamed)."""
    head, tail = os.path.split(path)
    temporary = os.path.join(head, f".{tail}.partial")
    with open(temporary, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
        fh.write("\n")
    os.replace(temporary, path)


#: The Slurm variables a report names (array ids only where set).
SLURM_IDS = {"job_id": "SLURM_JOB_ID", "step_id": "SLURM_STEP_ID"}
SLURM_ARRAY_IDS = {"array_job_id": "SLURM_ARRAY_JOB_ID", "array_task_id": "SLURM_ARRAY_TASK_ID"}


def _id(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdigit() else value


def slurm_ids(environ: Mapping[str, str] = os.environ) -> dict[str, int | str | None]:
    """The Slurm job and step ids (null outside Slurm), and the array job and task ids when the job is one."""
    ids = {key: _id(environ.get(name)) for key, name in SLURM_IDS.items()}
    if "SLURM_ARRAY_JOB_ID" in environ:
        ids.update({key: _id(environ.get(name)) for key, name in SLURM_ARRAY_IDS.items()})
    return ids


def command_line() -> list[str]:
    """The command line as the user typed it: ``sys.argv``, or for ``python -m mpi_s2`` (whose ``sys.argv[0]``
    is the path of ``__main__.py``) the interpreter's own command line."""
    if sys.argv and sys.argv[0].endswith(os.path.join("mpi_s2", "__main__.py")):
        return list(sys.orig_argv)
    return list(sys.argv)


def run_context(start: float, argv: Sequence[str] | None = None,
                environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """What every report starts with: its ``start`` time (``start``: seconds since the epoch), the mpi_s2
    ``version``, the ``command`` line (``argv``, default :func:`command_line`, as one shell-quoted string) and
    ``slurm``."""
    return {"start": timestamp(start), "end": None, "version": __version__,
            "command": shlex.join(command_line() if argv is None else argv), "slurm": slurm_ids(environ)}


def pixel_fractions(ranks: Sequence[Mapping[str, Any]], pixels: int, over: str) -> dict[str, Any] | None:
    """The fractions of ``pixels`` that are valid, cloud-masked and nodata (they sum to 1), from the ranks'
    counts of valid and cloud-masked pixels; what the fractions cover is said in ``over``. None without pixels.
    """
    if pixels <= 0:
        return None
    valid = sum(r.get("valid_pixels", 0) for r in ranks)
    masked = sum(r.get("cloud_masked_pixels", 0) for r in ranks)
    return {"valid": valid / pixels, "cloud_masked": masked / pixels, "nodata": (pixels - valid - masked) / pixels,
            "pixels": pixels, "over": over}


def failure_note_path(report: str) -> str:
    """Where a failing worker leaves its error line for rank 0's report: ``.NAME.error`` beside the report."""
    head, tail = os.path.split(report)
    return os.path.join(head, f".{tail}.error")


def leave_failure_note(report: str, line: str) -> None:
    """A worker that fails (and aborts the job) leaves its error line for rank 0 (the first failure wins)."""
    try:
        fd = os.open(failure_note_path(report), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except OSError:
        return
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(line)


def take_failure_note(report: str) -> str | None:
    """The error line a failing worker left (removed as it is read), or None."""
    path = failure_note_path(report)
    try:
        with open(path, encoding="utf-8") as fh:
            line = fh.read().strip()
        os.unlink(path)
    except OSError:
        return None
    return line or None
