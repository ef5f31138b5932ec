"""The scaling plot: measured speed-up and efficiency against ranks, the ideal line and the model's projection."""

from __future__ import annotations

from typing import Any

from mpi_s2.scaling.model import (
    BACKENDS,
    DEFAULT_CLUSTER,
    Cluster,
    calibrate,
    calibration_row,
    projection_ranks,
    strong_speedup,
    weak_speedup,
)

#: the cluster-scale job the projection also draws: a regional mosaic of this many full Sentinel-2 tiles
MOSAIC_TILES = 100
TILE_PX = 10980


def projections(rows: list[dict[str, str]], cluster: Cluster, limit: int = 1024) -> dict[str, Any]:
    """Projected speed-ups for 1..``limit`` ranks: each backend, for the measured job and for a regional mosaic."""
    kind = rows[0]["study"]
    calib = calibration_row(rows)
    costs = calibrate(calib)
    ranks = projection_ranks(limit)
    base = min(rows, key=lambda r: int(r["ranks"]))
    window_px = int(calib["width"]) * int(calib["height"]) / max(1, int(calib["windows"]))
    mosaic_windows = max(1, round(MOSAIC_TILES * TILE_PX * TILE_PX / window_px))
    curves = {}
    for backend in BACKENDS:
        if kind == "strong":
            if backend == "writer":
                curves[f"{backend}, this input"] = strong_speedup(costs, int(base["windows"]), ranks, backend,
                                                                  cluster)
            curves[f"{backend}, {MOSAIC_TILES}-tile mosaic"] = strong_speedup(costs, mosaic_windows, ranks, backend,
                                                                             cluster)
        else:
            curves[f"{backend}, {base['windows']} windows per rank"] = weak_speedup(
                costs, int(base["windows"]), ranks, backend, cluster)
    return {"ranks": ranks, "curves": curves, "costs": costs, "calibrated_on": int(calib["ranks"]),
            "cluster": cluster}


def plot(rows: list[dict[str, str]], path: str, cluster: Cluster = DEFAULT_CLUSTER,
         limit: int = 1024) -> None:
    """Write a PNG with two panels: speed-up (log-log) and parallel efficiency, measured and projected."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind = rows[0]["study"]
    proj = projections(rows, cluster, limit)
    ranks = [int(r["ranks"]) for r in rows]
    speedup = [float(r["speedup"]) for r in rows]
    efficiency = [float(r["efficiency"]) for r in rows]
    fig, (ax_s, ax_e) = plt.subplots(1, 2, figsize=(12, 5))
    ax_s.plot([1, limit], [1, limit], color="0.6", linestyle="-", linewidth=1, label="ideal")
    ax_e.axhline(1.0, color="0.6", linewidth=1, label="ideal")
    styles = ["--", ":", "-.", (0, (5, 1))]
    for k, (label, values) in enumerate(proj["curves"].items()):
        eff = [v / n for v, n in zip(values, proj["ranks"], strict=True)]
        ax_s.plot(proj["ranks"], values, linestyle=styles[k % len(styles)], linewidth=1.5,
                  label=f"projection: {label}")
        ax_e.plot(proj["ranks"], eff, linestyle=styles[k % len(styles)], linewidth=1.5,
                  label=f"projection: {label}")
    label = f"measured ({rows[0]['backend']} backend, {rows[0]['input']}, {max(int(r['nodes']) for r in rows)} node(s))"
    # open markers: more workers than cores on a node (oversubscribed: they share cores, the model's costs do not)
    crowded = [int(r["workers"]) > int(r["nodes"]) * int(r["cores_per_node"]) for r in rows]
    for ax, values in ((ax_s, speedup), (ax_e, efficiency)):
        fits = [(n, v) for n, v, c in zip(ranks, values, crowded, strict=True) if not c]
        over = [(n, v) for n, v, c in zip(ranks, values, crowded, strict=True) if c]
        if fits:
            ax.plot(*zip(*fits, strict=True), "o", color="black", markersize=6, label=label, zorder=5)
        if over:
            ax.plot(*zip(*over, strict=True), "o", color="black", markerfacecolor="white", markersize=6, zorder=5,
                    label="measured, more workers than cores")
    ax_s.set(xscale="log", yscale="log", xlabel="MPI ranks", ylabel="scaled speed-up" if kind == "weak" else
             "speed-up over 1 rank", xlim=(1, limit), ylim=(0.5, limit))
    ax_e.set(xscale="log", xlabel="MPI ranks", ylabel="parallel efficiency", xlim=(1, limit), ylim=(0, 1.2))
    for ax in (ax_s, ax_e):
        ax.grid(True, which="both", alpha=0.3)
    ax_s.legend(fontsize=7, loc="upper left")
    costs = proj["costs"]
    fig.suptitle(f"mpi_s2 {kind} scaling: measured, and projected from the {proj['calibrated_on']}-rank run's "
                 f"per-window costs (decode {costs.decode:.3f} s, compose {costs.compose:.3f} s, encode "
                 f"{costs.encode:.3f} s, place {costs.place:.4f} s)\nassumed: {cluster.describe()}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
