"""``make scaling-report``: the studies' CSV files as Markdown tables, with the projection's key figures."""

from __future__ import annotations

from mpi_s2.scaling.model import DEFAULT_CLUSTER, Cluster, writer_saturation
from mpi_s2.scaling.plot import projections

HEADERS = [("ranks", "ranks"), ("workers", "workers"), ("nodes", "nodes"), ("size", "input px"),
           ("windows", "windows"), ("wall_s", "wall s"), ("read_s", "read s/worker"),
           ("compute_s", "compute s/worker"), ("encode_s", "encode s/worker"), ("worker_wait_s", "wait s/worker"),
           ("writer_write_s", "writer write s"), ("speedup", "speed-up"), ("efficiency", "efficiency"),
           ("n_star", "N*")]
MILESTONES = (16, 64, 256, 1024)


def _cell(row: dict[str, str], key: str) -> str:
    if key == "size":
        return f"{row['width']} x {row['height']}"
    value = row.get(key, "")
    return value if value != "" else "-"


def study_section(rows: list[dict[str, str]], cluster: Cluster) -> str:
    kind = rows[0]["study"]
    lines = [f"## {kind.capitalize()} scaling ({rows[0]['backend']} backend, {rows[0]['input']} input, "
             f"median of {rows[0]['repeats']} run(s) per rank count)", ""]
    lines.append("| " + " | ".join(title for _, title in HEADERS) + " |")
    lines.append("|" + "---|" * len(HEADERS))
    for row in sorted(rows, key=lambda r: int(r["ranks"])):
        lines.append("| " + " | ".join(_cell(row, key) for key, _ in HEADERS) + " |")
    proj = projections(rows, cluster)
    costs = proj["costs"]
    lines += ["", f"Per-window costs from the {proj['calibrated_on']}-rank run: decode {costs.decode:.4f} s, compose "
              f"{costs.compose:.4f} s, encode {costs.encode:.4f} s (workers), place {costs.place:.5f} s (writer), "
              f"{costs.encoded_bytes / 1e6:.2f} MB encoded / {costs.raw_bytes / 1e6:.2f} MB raw per window, "
              f"set-up {costs.setup:.2f} s. Writer saturation N* = {writer_saturation(costs, 2, cluster):.0f} "
              f"workers on one node, {writer_saturation(costs, 1024, cluster):.0f} with tiles arriving over "
              f"the link. Assumed: {cluster.describe()}.", ""]
    ranks = proj["ranks"]
    lines.append("| projection | " + " | ".join(f"{n} ranks" for n in MILESTONES) + " |")
    lines.append("|---|" + "---|" * len(MILESTONES))
    for label, values in proj["curves"].items():
        cells = [f"{values[ranks.index(n)]:.1f}x ({values[ranks.index(n)] / n:.0%})" for n in MILESTONES]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report(sections: list[list[dict[str, str]]], cluster: Cluster = DEFAULT_CLUSTER) -> str:
    """The whole report: one section per study, speed-up and (efficiency) in the projection tables."""
    body = "\n".join(study_section(rows, cluster) for rows in sections)
    return ("# mpi_s2 scaling report\n\nWall time from launch to exit; per-phase seconds are means per worker from "
            "the median run's report. Projections: speed-up (efficiency).\n\n" + body)
