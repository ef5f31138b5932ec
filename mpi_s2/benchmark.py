"""``make bench``: mpi_s2 against gdal_translate on a full-size synthetic tile, measured in the same run.

Runs are interleaved (gdal_translate, mpi_s2, gdal_translate, ...) so that drift on a shared machine hits both
alike. Wall time is the whole process (launcher included); peak memory is each process's maximum RSS, from
``wait4`` for gdal_translate and from the per-rank ``--report`` for mpi_s2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np
from osgeo import gdal

from .synth import BAND_FILES, SynthOptions, synthesize

gdal.UseExceptions()
GAMMA = 2.2


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run ``cmd``; return (wall seconds, peak RSS in MB of the largest process it waited for)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"benchmark: {' '.join(cmd)} failed ({code}):\n{stderr}")
    return wall, usage.ru_maxrss / 1024.0


def ensure_scene(directory: str, size: int, block: int) -> dict[str, str]:
    stamp = os.path.join(directory, f"scene-{size}-{block}.done")
    paths = {band: os.path.join(directory, name) for band, name in BAND_FILES.items()}
    if not os.path.exists(stamp):
        print(f"generating a {size} x {size} synthetic tile in {directory} (tiled {block}, uncompressed)...",
              flush=True)
        synthesize(directory, SynthOptions(size=size, block=block, compress="NONE"))
        open(stamp, "w").close()
    return paths


def compare(a_path: str, b_path: str, scene: dict[str, str]) -> int:
    """Number of valid pixels (any band) where the two RGB outputs differ."""
    a, b = gdal.Open(a_path), gdal.Open(b_path)
    differing = 0
    step = 1024
    for row in range(0, a.RasterYSize, step):
        rows = min(step, a.RasterYSize - row)
        bands = [gdal.Open(scene[n]).ReadAsArray(0, row, a.RasterXSize, rows) for n in ("red", "green", "blue")]
        valid = (bands[0] != 0) & (bands[1] != 0) & (bands[2] != 0)
        ra = a.ReadAsArray(0, row, a.RasterXSize, rows)[:3]
        rb = b.ReadAsArray(0, row, a.RasterXSize, rows)[:3]
        differing += int(((ra != rb).any(axis=0) & valid).sum())
    return differing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpi_s2.benchmark", description=__doc__)
    parser.add_argument("--dir", default="bench-data")
    parser.add_argument("--size", type=int, default=10980)
    parser.add_argument("--block", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ranks", type=int, default=2)
    args = parser.parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    scene = ensure_scene(args.dir, args.size, args.block)
    vrt, ref, out = (os.path.join(args.dir, n) for n in ("rgb.vrt", "gdal_translate.tif", "mpi_s2.tif"))
    report = os.path.join(args.dir, "run.json")
    subprocess.run(["gdalbuildvrt", "-q", "-separate", "-overwrite", vrt, scene["red"], scene["green"],
                    scene["blue"]], check=True)
    gdal_cmd = ["gdal_translate", "-q", "-ot", "Byte", "-scale", "0", "10000", "0", "255",
                "-exponent", repr(1 / GAMMA), "-co", "TILED=YES", vrt, ref]
    mpirun = shutil.which("mpirun") or "mpirun"
    mpi_cmd = [mpirun, "--allow-run-as-root", "--oversubscribe", "-n", str(args.ranks), sys.executable, "-m",
               "mpi_s2", "compose", "--red", scene["red"], "--green", scene["green"], "--blue", scene["blue"],
               "-o", out, "--co", "COMPRESS=NONE", "--overwrite", "-q", "--report", report]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_"))}
    gdal_runs, mpi_runs, rank_peaks = [], [], []
    for i in range(args.repeat):
        gdal_runs.append(timed(gdal_cmd, env))
        mpi_runs.append(timed(mpi_cmd, env))
        with open(report) as fh:
            rank_peaks.append({r["rank"]: r["peak_rss_mb"] for r in json.load(fh)["ranks"]})
        print(f"run {i + 1}/{args.repeat}: gdal_translate {gdal_runs[-1][0]:.2f} s, "
              f"mpi_s2 {mpi_runs[-1][0]:.2f} s", flush=True)
    gdal_wall = statistics.median(w for w, _ in gdal_runs)
    mpi_wall = statistics.median(w for w, _ in mpi_runs)
    ratio = gdal_wall / mpi_wall
    gdal_peak = max(m for _, m in gdal_runs)
    worst_rank = {r: max(p[r] for p in rank_peaks) for r in rank_peaks[0]}
    differing = compare(out, ref, scene)
    with open(report) as fh:
        last = json.load(fh)
    result = {
        "size": args.size, "repeat": args.repeat, "ranks": args.ranks, "cores": os.cpu_count(),
        "gdal_translate_median_s": round(gdal_wall, 2), "mpi_s2_median_s": round(mpi_wall, 2),
        "speedup": round(ratio, 2), "gdal_translate_peak_rss_mb": round(gdal_peak, 1),
        "mpi_s2_rank_peak_rss_mb": worst_rank, "valid_pixels_differing": differing,
        "last_run_seconds_by_rank": {r["rank"]: r["seconds"] for r in last["ranks"]},
    }
    with open(os.path.join(args.dir, "bench.json"), "w") as fh:
        json.dump(result, fh, indent=2)
    print()
    print(f"tile {args.size} x {args.size} x 3 bands, uint16, tiled {args.block}, uncompressed; "
          f"{os.cpu_count()} cores; median of {args.repeat}")
    print(f"  gdal_translate            {gdal_wall:7.2f} s   peak RSS {gdal_peak:7.1f} MB")
    print(f"  mpi_s2 mpirun -n {args.ranks:<2}       {mpi_wall:7.2f} s   peak RSS per rank: "
          + ", ".join(f"rank {r} {m:.0f} MB" for r, m in worst_rank.items()))
    print(f"  speed-up (gdal_translate / mpi_s2): {ratio:.2f}x   (target >= 5x)")
    print(f"  largest rank: {max(worst_rank.values()):.0f} MB   (target <= 300 MB)")
    print(f"  valid pixels differing from gdal_translate: {differing}")
    ok = ratio >= 5.0 and max(worst_rank.values()) <= 300 and differing == 0
    print("  targets met" if ok else "  TARGETS NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
