"""Per-rank accounting (where the time went) and the ``--report`` JSON file."""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from mpi_s2.inputs.block_counts import DecodeCounter

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

    def finish(self, counter: DecodeCounter | None = None) -> dict[str, Any]:
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


def saturation_point(ranks: list[dict[str, Any]]) -> dict[str, float] | None:
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
        "output_stage": saturation_point(ranks),
        "hosts": sorted({r["host"] for r in ranks}),
        "ranks": ranks,
    }


def write_report(path: str, report: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
        fh.write("\n")
