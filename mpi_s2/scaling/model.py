"""A projection to cluster scale: wall time of a compose job from per-window costs measured on a few ranks.

Pure logic (no MPI, no GDAL). The model follows the program's structure, one window at a time:

* a worker spends ``decode + compose + encode`` seconds on a window (its share: ``ceil(windows / workers)``);
* the writer backend's rank 0 spends ``place`` seconds per window (receive, place, index), plus the transfer of
  the encoded bytes over its node's link for the windows computed on other nodes; the job takes the slower of
  the two pipelines: that is the writer's saturation point N* = worker cost / writer cost;
* the HDF5 backend's workers compose (``decode + compose``), then write raw pixels collectively to the parallel
  file system, whose aggregate bandwidth is that of the file system or of the nodes' links, whichever is
  smaller; the conversion reads the pixels back, encodes them on the workers and has rank 0 place them, so it
  meets the same writer limit (``hdf5-array``: the composing alone, when the conversion is left to a later,
  smaller job or the array itself is the product);
* a fixed ``setup`` (start-up, planning, opening and closing files), taken from the calibration run.

Everything the measurement cannot know (ranks per node, link and file-system bandwidth) is an explicit
:class:`Cluster` assumption, printed next to every projection.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from mpi_s2.errors import InputError

#: writer: the default backend; hdf5: collective HDF5, converted in the same job; hdf5-array: the HDF5 backend's
#: composing alone (``--keep-h5``, the conversion left to a later, smaller job or not needed)
BACKENDS = ("writer", "hdf5", "hdf5-array")


@dataclass(frozen=True)
class WindowCosts:
    """Seconds per window on one core, and bytes per window, from a run report (see ``study.calibrate``)."""

    decode: float
    compose: float
    encode: float
    place: float
    encoded_bytes: float
    raw_bytes: float
    setup: float = 0.0

    @property
    def worker(self) -> float:
        return self.decode + self.compose + self.encode

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 6) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Cluster:
    """What a cluster adds that one machine cannot measure: node size and bandwidths (bytes per second)."""

    ranks_per_node: int = 16
    link_bytes_per_s: float = 1.25e9  # 10 Gb/s Ethernet; InfiniBand HDR is about 20x more
    fs_bytes_per_s: float = 10e9  # a parallel file system's aggregate write/read bandwidth

    def nodes(self, ranks: int) -> int:
        return max(1, math.ceil(ranks / self.ranks_per_node))

    def describe(self) -> str:
        return (f"{self.ranks_per_node} ranks per node, links {self.link_bytes_per_s / 1e9:.2f} GB/s, "
                f"parallel file system {self.fs_bytes_per_s / 1e9:.0f} GB/s")


DEFAULT_CLUSTER = Cluster()


def workers(ranks: int) -> int:
    """Ranks that compute windows: all but rank 0, except in a one-rank job, where one process does everything."""
    if ranks < 1:
        raise InputError(f"ranks must be >= 1, got {ranks}")
    return 1 if ranks == 1 else ranks - 1


def remote_fraction(ranks: int, cluster: Cluster) -> float:
    """Share of the workers that sit on another node than rank 0 (their tiles cross rank 0's link)."""
    p = workers(ranks)
    local = min(p, cluster.ranks_per_node - 1)
    return 0.0 if ranks == 1 else (p - local) / p


def predict_wall(costs: WindowCosts, windows: int, ranks: int, backend: str = "writer",
                 cluster: Cluster = DEFAULT_CLUSTER) -> float:
    """Projected wall seconds of a job of ``windows`` windows on ``ranks`` ranks."""
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if windows < 1:
        raise InputError(f"windows must be >= 1, got {windows}")
    p = workers(ranks)
    share = math.ceil(windows / p)
    link = remote_fraction(ranks, cluster) * costs.encoded_bytes / cluster.link_bytes_per_s
    writer_per_window = costs.place + link
    if ranks == 1:  # one process: every step of every window in turn, nothing to overlap, nothing to transfer
        if backend == "writer":
            return costs.setup + windows * (costs.worker + costs.place)
        fs = costs.raw_bytes / cluster.fs_bytes_per_s
        if backend == "hdf5-array":
            return costs.setup + windows * (costs.decode + costs.compose + fs)
        return costs.setup + windows * (costs.worker + costs.place + 2 * fs)
    if backend == "writer":
        return costs.setup + max(share * costs.worker, windows * writer_per_window)
    fs = min(cluster.fs_bytes_per_s, cluster.nodes(ranks) * cluster.link_bytes_per_s)
    compose = share * (costs.decode + costs.compose) + windows * costs.raw_bytes / fs
    if backend == "hdf5-array":
        return costs.setup + compose
    convert = max(share * costs.encode + windows * costs.raw_bytes / fs, windows * writer_per_window)
    return costs.setup + compose + convert


def writer_saturation(costs: WindowCosts, ranks: int, cluster: Cluster = DEFAULT_CLUSTER) -> float:
    """N*: workers one writer can serve at this job size (its link included once tiles come from other nodes)."""
    link = remote_fraction(ranks, cluster) * costs.encoded_bytes / cluster.link_bytes_per_s
    return costs.worker / (costs.place + link) if costs.place + link > 0 else math.inf


def strong_speedup(costs: WindowCosts, windows: int, ranks: list[int], backend: str = "writer",
                   cluster: Cluster = DEFAULT_CLUSTER) -> list[float]:
    """Speed-up over one rank of a fixed job of ``windows`` windows."""
    base = predict_wall(costs, windows, 1, backend, cluster)
    return [base / predict_wall(costs, windows, n, backend, cluster) for n in ranks]


def weak_speedup(costs: WindowCosts, windows_per_rank: int, ranks: list[int], backend: str = "writer",
                 cluster: Cluster = DEFAULT_CLUSTER) -> list[float]:
    """Scaled speed-up ``n T(1) / T(n)`` of a job that grows to ``n * windows_per_rank`` windows on ``n`` ranks."""
    base = predict_wall(costs, windows_per_rank, 1, backend, cluster)
    return [n * base / predict_wall(costs, n * windows_per_rank, n, backend, cluster) for n in ranks]


def projection_ranks(limit: int = 1024) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, 16, ... up to ``limit``: dense enough for a smooth curve on a log axis."""
    ranks = {1, 2, 3}
    power = 4
    while power <= limit:
        ranks.update({power, min(limit, power * 3 // 2)})
        power *= 2
    return sorted(r for r in ranks if r <= limit)


def add_ratios(kind: str, rows: list[dict[str, Any]]) -> None:
    """Speed-up and efficiency against the one-rank row (or the smallest rank count measured)."""
    base = min(rows, key=lambda r: int(r["ranks"]))
    t1, n1 = float(base["wall_s"]), int(base["ranks"])
    for row in rows:
        n, tn = int(row["ranks"]), float(row["wall_s"])
        if kind == "strong":
            speedup = t1 / tn * n1
            efficiency = speedup / n
        else:
            efficiency = t1 / tn
            speedup = efficiency * n
        row["speedup"], row["efficiency"] = round(speedup, 3), round(efficiency, 3)


def calibration_row(rows: list[dict[str, str]]) -> dict[str, str]:
    """The run whose per-window costs stand for one core: the most workers that still had a core each
    (oversubscribed runs inflate every phase), or the smallest run if none qualifies."""
    def fits(row: dict[str, str]) -> bool:
        per_node = int(row["workers"]) / max(1, int(row["nodes"]))
        return per_node <= int(row["cores_per_node"])
    fitting = [r for r in rows if fits(r)]
    if fitting:
        return max(fitting, key=lambda r: (int(r["workers"]), -int(r["ranks"])))
    return min(rows, key=lambda r: int(r["ranks"]))


def calibrate(row: dict[str, str]) -> WindowCosts:
    """Per-window costs from one CSV row (its means per worker times the workers, over the windows)."""
    windows = max(1, int(row["windows"]))
    n_workers = int(row["workers"])
    per_window = n_workers / windows
    decode = float(row["read_s"]) * per_window
    compose = float(row["compute_s"]) * per_window
    encode = float(row["encode_s"]) * per_window
    place = float(row["writer_write_s"]) / windows
    raw = 4.0 * int(row["width"]) * int(row["height"]) / windows
    encoded = float(row["output_bytes"]) / windows if row.get("output_bytes") else raw
    ranks = int(row["ranks"])
    share = -(-windows // workers(ranks))
    busy = windows * (decode + compose + encode + place) if ranks == 1 else max(
        share * (decode + compose + encode), windows * place)
    setup = max(0.0, float(row["wall_s"]) - busy)
    return WindowCosts(decode, compose, encode, place, encoded, raw, setup)


