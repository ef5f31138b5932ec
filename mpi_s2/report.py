"""Per-rank accounting (where the time went) and the ``--report`` JSON file."""

from __future__ import annotations

import contextlib
import json
import resource
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

PHASES = ("read", "compute", "wait", "write")


@dataclass
class RankStats:
    """Seconds one rank spent in each phase, and the windows and pixels it handled."""

    rank: int
    role: str
    seconds: dict[str, float] = field(default_factory=lambda: {p: 0.0 for p in PHASES})
    windows: int = 0
    pixels: int = 0
    peak_rss_mb: float = 0.0
    decoder_threads: int = 1

    @contextlib.contextmanager
    def timer(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start

    def finish(self) -> dict[str, Any]:
        """Record peak memory and return a plain dict (for ``comm.gather``)."""
        self.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        data = asdict(self)
        data["seconds"] = {k: round(v, 4) for k, v in self.seconds.items()}
        data["peak_rss_mb"] = round(self.peak_rss_mb, 1)
        return data


def build_report(summary: dict[str, Any], ranks: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    pixels = summary["pixels"]
    return {
        **summary,
        "wall_s": round(wall_s, 4),
        "pixels_per_s": round(pixels / wall_s, 1) if wall_s > 0 else None,
        "ranks": ranks,
    }


def write_report(path: str, report: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
        fh.write("\n")
