"""``make bench``: mpi_s2 against gdal_translate on full-size synthetic tiles, measured in the same run.

Three inputs, each run with an output codec (``--case INPUT[:CODEC][+cog],...``; the default runs gtiff,
gtiff:deflate, jp2:zstd, jp2:deflate and mosaic:zstd), the same codec for both tools; ``+cog`` makes both write
a Cloud-Optimized GeoTIFF (``gdal_translate -of COG`` with average overviews, ``mpi_s2 --cog``):

* ``gtiff``: three 10980 x 10980 uint16 GeoTIFFs, tiled 512, uncompressed; output uncompressed; mpirun -n 2.
* ``jp2``: a synthetic L2A product (JPEG 2000 bands tiled 1024, offset -1000); mpirun -n 3 (two decoding
  ranks plus the writer on 2 cores). The decoding floor is measured on the same
  files: CPU seconds of a single-threaded decode of the three bands, divided by the cores.
* ``+quicklook`` (e.g. ``jp2:zstd+quicklook``): what ``--quicklook`` costs; mpi_s2 alone, the same command
  without and with ``--quicklook FILE.png``, interleaved; the wall-time ratio (target at most 1.02) and the
  quicklook's own seconds from the report.
* ``+stretch`` (e.g. ``jp2:zstd+stretch``): what ``--stretch percentile:2,98`` costs (a counting pass, then the
  rendering pass from the kept values); mpi_s2 alone, the fixed and the percentile stretch, interleaved; the
  wall-time ratio (target at most 1.10) and every rank's peak memory (at most 300 MB).
* ``mosaic``: 2 x 2 such products on Sentinel-2 spacing (origins 10000 px apart, blocks 784 px off), one of
  them 40 % nodata (an orbit edge); gdal_translate reads a VRT of the same tiles; mpirun -n 3. The decoding
  floor: single-threaded decode CPU seconds of every distinct block of the 12 bands, divided by the cores.
* ``remote``: the tile as three COGs (DEFLATE, tiled 512, with overviews) served by nginx on 127.0.0.1 (Debian's
  package, a throw-away configuration), composed through a STAC item (``--stac``) on mpirun -n 3, against the same
  command on the same COGs read locally (target: at most 1.10x its time); gdal_translate over a ``/vsicurl/`` VRT
  of them is shown beside it, and nginx's access log gives the requests and bytes fetched.
* ``series``: one tile x 6 dates of synthetic L2A products (mixed baselines, moving clouds), ``compose
  --composite median --cloud-mask`` on mpirun -n 3 against the peer a user would reach for, xarray + dask
  (rioxarray, threaded scheduler, 2 workers; the script is written beside the inputs as ``dask_peer.py``). The
  decoding floor: single-threaded decode CPU seconds of the 18 bands and the 6 SCL (20 m), divided by the
  decoding ranks. Both outputs are compared pixel by pixel.

Runs are interleaved (gdal_translate, mpi_s2, gdal_translate, ...) so that drift on a shared machine hits both
alike. Wall time is the whole process (launcher included); peak memory is each process's maximum RSS, from
``wait4`` for gdal_translate and from the per-rank ``--report`` for mpi_s2.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from osgeo import gdal

from mpi_s2.planning.stage_plan import SHARED_MEMORY, staging_directory
from mpi_s2.tools.synth import (
    BAND_FILES,
    ProductOptions,
    SeriesOptions,
    SynthOptions,
    synthesize,
    synthesize_product,
    synthesize_series,
)

gdal.UseExceptions()
GAMMA = 2.2
PEAK_MB_TARGET = 300
#: JPEG 2000: wall time at most this multiple of the decoding floor (the 1.45x ratio to gdal_translate was
#: derived from it with gdal_translate's time on a real tile and is printed for reference)
FLOOR_TARGET = 1.15


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
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


@dataclass
class Case:
    name: str
    description: str
    gdal_cmd: list[str]
    mpi_cmd: list[str]
    ranks: int
    speedup_target: float
    report: str
    floor_s: float | None = None


def _mpirun(ranks: int, cog: bool = False) -> list[str]:
    return [shutil.which("mpirun") or "mpirun", "--allow-run-as-root", "--oversubscribe", "-n", str(ranks),
            sys.executable, "-m", "mpi_s2", "compose", *(["--cog"] if cog else []),
            *(["--backend", "hdf5"] if _BACKEND["hdf5"] else [])]


_BACKEND = {"hdf5": False}  # set per case by main()


def _gdal_translate(vrt: str, out: str, low: int, options: list[str], cog: bool = False) -> list[str]:
    if cog:  # the COG driver's names for the same codec settings; average overviews like mpi_s2's
        renamed = {"ZSTD_LEVEL": "LEVEL", "ZLEVEL": "LEVEL"}
        options = [f"{renamed.get(k, k)}={'YES' if (k, v) == ('PREDICTOR', '2') else v}"
                   for k, _, v in (o.partition("=") for o in options)]
        options += ["BLOCKSIZE=512", "OVERVIEW_RESAMPLING=AVERAGE"]
    co = [arg for option in options for arg in ("-co", option)]
    return ["gdal_translate", "-q", "-ot", "Byte", "-scale", str(low), str(low + 10000), "0", "255",
            "-exponent", repr(1 / GAMMA), *(["-of", "COG"] if cog else ["-co", "TILED=YES"]), *co, vrt, out]


def _vrt(path: str, bands: list[str]) -> str:
    subprocess.run(["gdalbuildvrt", "-q", "-separate", "-overwrite", path, *bands], check=True)
    return path


def gtiff_case(directory: str, size: int, ranks: int, codec: str | None = None, cog: bool = False) -> Case:
    """The GeoTIFF tile: uncompressed in, and out uncompressed (default) or with ``codec`` for both tools."""
    stamp = os.path.join(directory, f"scene-{size}.done")
    if not os.path.exists(stamp):
        print(f"generating a {size} x {size} synthetic tile (GeoTIFF, tiled 512, uncompressed)...", flush=True)
        synthesize(directory, SynthOptions(size=size, block=512, compress="NONE"))
        open(stamp, "w").close()
    bands = [os.path.join(directory, BAND_FILES[b]) for b in ("red", "green", "blue")]
    vrt = _vrt(os.path.join(directory, "rgb.vrt"), bands)
    report = os.path.join(directory, "run.json")
    options = OUTPUT_CODECS[codec] if codec else ["COMPRESS=NONE"]
    mpi = _mpirun(ranks, cog) + ["--red", bands[0], "--green", bands[1], "--blue", bands[2], "-o",
                            os.path.join(directory, "mpi_s2.tif"), "--overwrite", "-q", "--report", report]
    mpi += [arg for option in options for arg in ("--co", option)]
    label = (codec or "none").upper()
    return Case("gtiff", f"{size} x {size} x 3 uint16 GeoTIFF, tiled 512, uncompressed in, {label} out",
                _gdal_translate(vrt, os.path.join(directory, "gdal_translate.tif"), 0, options, cog), mpi, ranks,
                5.0 if not codec else 1.0, report)


def decode_cpu_seconds(bands: list[str], block: int | None = 1024) -> float:
    """CPU seconds to decode every block of ``bands`` once, single-threaded (the work no layout avoids).

    ``block``: the side of the reads; None reads each file by its own blocks (e.g. a 20 m SCL beside 10 m bands
    whose JPEG 2000 tiles differ)."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    gdal.SetConfigOption("GDAL_NUM_THREADS", "1")
    try:
        for path in bands:
            ds = gdal.Open(path)
            band = ds.GetRasterBand(1)
            bw, bh = (block, block) if block else band.GetBlockSize()
            for row in range(0, ds.RasterYSize, bh):
                for col in range(0, ds.RasterXSize, bw):
                    band.ReadRaster(col, row, min(bw, ds.RasterXSize - col), min(bh, ds.RasterYSize - row))
            ds = None
    finally:
        gdal.SetConfigOption("GDAL_NUM_THREADS", None)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


OUTPUT_CODECS = {"zstd": ["COMPRESS=ZSTD", "ZSTD_LEVEL=1", "PREDICTOR=2"], "lzw": ["COMPRESS=LZW"],
                 "deflate": ["COMPRESS=DEFLATE", "PREDICTOR=2"]}


def jp2_case(directory: str, size: int, ranks: int, codec: str | None = "zstd", cog: bool = False) -> Case:
    codec = codec or "zstd"
    directory = os.path.join(directory, f"size-{size}")  # inputs and floor per size (one product name for all)
    os.makedirs(directory, exist_ok=True)
    stamp = os.path.join(directory, f"product-{size}.done")
    if not os.path.exists(stamp):
        print(f"generating a {size} x {size} synthetic L2A product (JPEG 2000, tiled 1024)... (minutes, once)",
              flush=True)
        synthesize_product(directory, ProductOptions(size=size))
        open(stamp, "w").close()
    product = glob.glob(os.path.join(directory, "*.SAFE"))[0]
    bands = [glob.glob(f"{product}/GRANULE/*/IMG_DATA/R10m/*_{code}_10m.jp2")[0] for code in ("B04", "B03", "B02")]
    floor_file = os.path.join(directory, "decode-floor.json")
    if not os.path.exists(floor_file):
        print("measuring the single-threaded decode time of the three bands (once)...", flush=True)
        with open(floor_file, "w") as fh:
            json.dump({"decode_cpu_s": decode_cpu_seconds(bands)}, fh)
    with open(floor_file) as fh:
        floor = json.load(fh)["decode_cpu_s"] / (os.cpu_count() or 1)
    vrt = _vrt(os.path.join(directory, "rgb.vrt"), bands)
    report = os.path.join(directory, "run.json")
    # the same output codec on both sides: mpi_s2's default (ZSTD level 1, horizontal predictor), which is
    # smaller and cheaper than LZW; `--output-codec lzw` compares with gdal_translate's LZW instead
    options = OUTPUT_CODECS[codec]
    mpi = _mpirun(ranks, cog) + [product, "-o", os.path.join(directory, "mpi_s2.tif"), "--overwrite", "-q",
                            "--report", report] + [arg for option in options for arg in ("--co", option)]
    return Case("jp2", f"L2A product, 3 x {size} x {size} JPEG 2000 (tiled 1024), {codec.upper()} output",
                _gdal_translate(vrt, os.path.join(directory, "gdal_translate.tif"), 1000, options, cog), mpi, ranks,
                1.45, report, floor)


#: Sentinel-2 tiles of one UTM zone: origins 100 km (10000 px) apart, so neighbours overlap by 980 px.
TILE_SPACING_PX = 10000
MOSAIC_FLOOR_TARGET = 1.10
MOSAIC_SPEEDUP_TARGET = 1.3
IMBALANCE_TARGET = 1.05


def mosaic_case(directory: str, size: int, ranks: int, codec: str = "zstd", cog: bool = False) -> Case:
    """2 x 2 full-size L2A products on Sentinel-2 spacing, the second one 40 % beyond the swath edge."""
    layout = [(0, 0, 0.0), (1, 0, 0.4), (0, 1, 0.0), (1, 1, 0.0)]
    products = []
    directory = os.path.join(directory, f"size-{size}")  # inputs and floor per size (one product name for all)
    for k, (dx, dy, edge) in enumerate(layout):
        tile_dir = os.path.join(directory, f"tile{k}")
        stamp = os.path.join(tile_dir, f"product-{size}.done")
        if not os.path.exists(stamp):
            print(f"generating mosaic tile {k + 1}/4 ({size} x {size} JPEG 2000, tiled 1024)... (minutes, once)",
                  flush=True)
            os.makedirs(tile_dir, exist_ok=True)
            synthesize_product(tile_dir, ProductOptions(
                size=size, tile=f"32T{k}", sensing=f"2023071{k}T102559", orbit_edge=edge,
                origin=(399960.0 + 10.0 * TILE_SPACING_PX * dx, 5300040.0 - 10.0 * TILE_SPACING_PX * dy)))
            open(stamp, "w").close()
        products.append(glob.glob(os.path.join(tile_dir, "*.SAFE"))[0])
    bands = {code: [glob.glob(f"{p}/GRANULE/*/IMG_DATA/R10m/*_{code}_10m.jp2")[0] for p in products]
             for code in ("B04", "B03", "B02")}
    floor_file = os.path.join(directory, "decode-floor.json")
    if not os.path.exists(floor_file):
        print("measuring the single-threaded decode time of every block of the 12 bands (once)...", flush=True)
        with open(floor_file, "w") as fh:
            json.dump({"decode_cpu_s": decode_cpu_seconds([f for files in bands.values() for f in files])}, fh)
    with open(floor_file) as fh:
        floor = json.load(fh)["decode_cpu_s"] / (os.cpu_count() or 1)
    # gdal_translate's mosaic: one VRT per band (first tile on top, nodata transparent), then the RGB VRT
    per_band = []
    for code, files in bands.items():
        path = os.path.join(directory, f"{code}.vrt")
        subprocess.run(["gdalbuildvrt", "-q", "-overwrite", "-srcnodata", "0", "-vrtnodata", "0", path,
                        *reversed(files)], check=True)
        per_band.append(path)
    vrt = _vrt(os.path.join(directory, "rgb.vrt"), per_band)
    report = os.path.join(directory, "run.json")
    options = OUTPUT_CODECS[codec]
    mpi = _mpirun(ranks, cog) + [*products, "-o", os.path.join(directory, "mpi_s2.tif"), "--overwrite", "-q",
                            "--report", report] + [arg for option in options for arg in ("--co", option)]
    return Case("mosaic", f"2 x 2 L2A products on Sentinel-2 spacing, 4 x 3 x {size} x {size} JPEG 2000 "
                          f"(tiled 1024), one 40 % nodata, {codec.upper()} output",
                _gdal_translate(vrt, os.path.join(directory, "gdal_translate.tif"), 1000, options, cog), mpi, ranks,
                MOSAIC_SPEEDUP_TARGET, report, floor)


DEFAULT_CASES = ("gtiff", "gtiff:deflate", "jp2:zstd", "jp2:deflate", "gtiff+hdf5", "jp2:zstd+hdf5",
                 "mosaic:zstd", "jp2:zstd+quicklook", "jp2:zstd+stretch", "series", "remote:zstd")
#: --stretch percentile:2,98 (a counting pass, then the rendering pass from the kept values): at most this
#: multiple of the same run with the fixed stretch.
STRETCH_TARGET = 1.10
STRETCH = ["--stretch", "percentile:2,98"]
#: --quicklook: the run with it at most this multiple of the same run without it.
QUICKLOOK_TARGET = 1.02
#: The output stage's saturation point wanted with JPEG 2000 input and DEFLATE output.
N_STAR_TARGET = 64


def run_case(case: Case, repeat: int, env: dict[str, str]) -> dict:
    gdal_runs, mpi_runs, rank_peaks, rank_seconds, imbalances, n_stars, hdf5_phases = [], [], [], [], [], [], []
    for i in range(repeat):
        gdal_runs.append(timed(case.gdal_cmd, env))
        mpi_runs.append(timed(case.mpi_cmd, env))
        with open(case.report) as fh:
            ranks = json.load(fh)["ranks"]
        with open(case.report) as fh:
            run_report = json.load(fh)
        imbalances.append(run_report["worker_busy_imbalance"])
        if "hdf5" in run_report:
            hdf5_phases.append((run_report["hdf5"]["write_phase_s"], run_report["hdf5"]["convert_s"]))
        n_stars.append((run_report.get("output_stage") or {}).get("n_star"))
        rank_peaks.append({r["rank"]: r["peak_rss_mb"] for r in ranks})
        rank_seconds.append({r["rank"]: r["seconds"] for r in ranks})
        print(f"  [{case.name}] run {i + 1}/{repeat}: gdal_translate {gdal_runs[-1][0]:.2f} s, "
              f"mpi_s2 {mpi_runs[-1][0]:.2f} s", flush=True)
    gdal_wall = statistics.median(w for w, _ in gdal_runs)
    mpi_wall = statistics.median(w for w, _ in mpi_runs)
    worst_rank = {r: max(p[r] for p in rank_peaks) for r in rank_peaks[0]}
    result: dict[str, Any] = {
        "case": case.name, "description": case.description, "repeat": repeat, "ranks": case.ranks,
        "cores": os.cpu_count(), "gdal_translate_median_s": round(gdal_wall, 2),
        "mpi_s2_median_s": round(mpi_wall, 2), "speedup": round(gdal_wall / mpi_wall, 2),
        "speedup_target": case.speedup_target,
        "gdal_translate_peak_rss_mb": round(max(m for _, m in gdal_runs), 1),
        "mpi_s2_rank_peak_rss_mb": worst_rank, "last_run_seconds_by_rank": rank_seconds[-1],
    }
    result["worker_busy_imbalance"] = statistics.median(i for i in imbalances if i) if imbalances[0] else None
    result["n_star"] = statistics.median(n for n in n_stars if n) if all(n_stars) else None
    if hdf5_phases:
        result["hdf5_write_phase_s"] = round(statistics.median(w for w, _ in hdf5_phases), 2)
        result["hdf5_convert_s"] = round(statistics.median(c for _, c in hdf5_phases), 2)
    if case.floor_s:
        result["decode_floor_s"] = round(case.floor_s, 1)
        result["mpi_s2_over_floor"] = round(mpi_wall / case.floor_s, 3)
        result["floor_target"] = MOSAIC_FLOOR_TARGET if case.name.startswith("mosaic") else FLOOR_TARGET
    fast_enough = (result["mpi_s2_over_floor"] <= result["floor_target"] if case.floor_s
                   else result["speedup"] >= case.speedup_target)
    if case.name.startswith("jp2:deflate"):
        # DEFLATE's CPU comes on top of decoding on 2 cores: the target is the output stage's, how many
        # workers one writer serves, and beating gdal_translate with the same codec
        result.pop("floor_target")
        result["n_star_target"] = N_STAR_TARGET
        fast_enough = (result["n_star"] or 0) >= N_STAR_TARGET and result["speedup"] >= 1.0
    if case.name.startswith("mosaic"):
        fast_enough = (fast_enough and result["speedup"] >= case.speedup_target
                       and (result["worker_busy_imbalance"] or 1.0) <= IMBALANCE_TARGET)
    result["targets_met"] = bool(fast_enough and max(worst_rank.values()) <= PEAK_MB_TARGET)
    return result


def run_quicklook_case(case: Case, repeat: int, env: dict[str, str]) -> dict:
    """mpi_s2 without and with ``--quicklook`` (interleaved, the order alternating): the wall-time ratio."""
    png = os.path.join(os.path.dirname(case.report), "quicklook.png")
    commands = {"without": case.mpi_cmd, "with": case.mpi_cmd + ["--quicklook", png]}
    walls: dict[str, list[float]] = {"without": [], "with": []}
    peaks: dict[str, dict[int, float]] = {"without": {}, "with": {}}
    quicklooks = []
    for i in range(repeat):
        for kind in (("without", "with") if i % 2 == 0 else ("with", "without")):
            walls[kind].append(timed(commands[kind], env)[0])
            with open(case.report) as fh:
                run_report = json.load(fh)
            for r in run_report["ranks"]:
                peaks[kind][r["rank"]] = max(peaks[kind].get(r["rank"], 0.0), r["peak_rss_mb"])
            if kind == "with":
                quicklooks.append(run_report["quicklook"])
        print(f"  [{case.name}] run {i + 1}/{repeat}: without --quicklook {walls['without'][-1]:.2f} s, "
              f"with {walls['with'][-1]:.2f} s", flush=True)
    without, with_ = statistics.median(walls["without"]), statistics.median(walls["with"])
    ratio = with_ / without
    return {
        "case": case.name, "description": case.description + ", mpi_s2 without and with --quicklook",
        "repeat": repeat, "ranks": case.ranks, "cores": os.cpu_count(), "quicklook": True,
        "without_quicklook_median_s": round(without, 2), "with_quicklook_median_s": round(with_, 2),
        "ratio": round(ratio, 4), "ratio_target": QUICKLOOK_TARGET,
        "quicklook_seconds_median": round(statistics.median(q["seconds"] for q in quicklooks), 3),
        "quicklook_writer_s_median": round(statistics.median(q["writer_s"] for q in quicklooks), 3),
        "quicklook_workers_s_median": round(statistics.median(q["workers_s"] for q in quicklooks), 3),
        "quicklook_size": quicklooks[-1]["size"],
        "mpi_s2_rank_peak_rss_mb": {"without": peaks["without"], "with": peaks["with"]},
        "targets_met": bool(ratio <= QUICKLOOK_TARGET and max(peaks["with"].values()) <= PEAK_MB_TARGET),
    }


def run_stretch_case(case: Case, repeat: int, env: dict[str, str]) -> dict:
    """mpi_s2 with the fixed stretch and with ``--stretch percentile:2,98`` (interleaved, the order alternating):
    the wall-time ratio, and every rank's peak memory."""
    commands = {"fixed": case.mpi_cmd, "percentile": case.mpi_cmd + STRETCH}
    walls: dict[str, list[float]] = {"fixed": [], "percentile": []}
    peaks: dict[str, dict[int, float]] = {"fixed": {}, "percentile": {}}
    seconds: dict[str, dict] = {}
    for i in range(repeat):
        for kind in (("fixed", "percentile") if i % 2 == 0 else ("percentile", "fixed")):
            walls[kind].append(timed(commands[kind], env)[0])
            with open(case.report) as fh:
                run_report = json.load(fh)
            for r in run_report["ranks"]:
                peaks[kind][r["rank"]] = max(peaks[kind].get(r["rank"], 0.0), r["peak_rss_mb"])
            seconds[kind] = {r["rank"]: r["seconds"] for r in run_report["ranks"]}
            if kind == "percentile":
                limits = run_report["stretch"]
        print(f"  [{case.name}] run {i + 1}/{repeat}: fixed {walls['fixed'][-1]:.2f} s, "
              f"percentile:2,98 {walls['percentile'][-1]:.2f} s", flush=True)
    fixed, percentile = statistics.median(walls["fixed"]), statistics.median(walls["percentile"])
    ratio = percentile / fixed
    return {
        "case": case.name, "description": case.description + ", mpi_s2 --stretch fixed and percentile:2,98",
        "repeat": repeat, "ranks": case.ranks, "cores": os.cpu_count(), "stretch": True,
        "fixed_median_s": round(fixed, 2), "percentile_median_s": round(percentile, 2),
        "fixed_runs_s": [round(w, 2) for w in walls["fixed"]],
        "percentile_runs_s": [round(w, 2) for w in walls["percentile"]],
        "ratio": round(ratio, 4), "ratio_target": STRETCH_TARGET, "limits": limits,
        "mpi_s2_rank_peak_rss_mb": peaks, "last_run_seconds_by_rank": seconds,
        "targets_met": bool(ratio <= STRETCH_TARGET and max(peaks["percentile"].values()) <= PEAK_MB_TARGET),
    }


def print_stretch_result(r: dict) -> None:
    print(f"\n[{r['case']}] {r['description']}; {r['cores']} cores; median of {r['repeat']}")
    print(f"  mpi_s2 mpirun -n {r['ranks']:<2} --stretch fixed {r['fixed_median_s']:7.2f} s, percentile:2,98 "
          f"{r['percentile_median_s']:7.2f} s")
    print(f"  ratio {r['ratio']:.4f}   (target <= {r['ratio_target']}); limits {r['limits']['limits'][0]} over "
          f"{r['limits']['pixels']} pixels")
    for kind, peaks in r["mpi_s2_rank_peak_rss_mb"].items():
        print(f"  peak RSS per rank, {kind}: " + ", ".join(f"rank {k} {v:.0f} MB" for k, v in peaks.items())
              + f"   (target <= {PEAK_MB_TARGET} MB)")
    print("  targets met" if r["targets_met"] else "  TARGETS NOT MET")


def print_quicklook_result(r: dict) -> None:
    print(f"\n[{r['case']}] {r['description']}; {r['cores']} cores; median of {r['repeat']}")
    print(f"  mpi_s2 mpirun -n {r['ranks']:<2} without --quicklook {r['without_quicklook_median_s']:7.2f} s, "
          f"with {r['with_quicklook_median_s']:7.2f} s")
    print(f"  ratio {r['ratio']:.4f}   (target <= {r['ratio_target']}); the quicklook's own time: "
          f"{r['quicklook_seconds_median']:.2f} s (writer {r['quicklook_writer_s_median']:.2f} s, workers summed "
          f"{r['quicklook_workers_s_median']:.2f} s), {r['quicklook_size'][0]} x {r['quicklook_size'][1]} px")
    for kind, peaks in r["mpi_s2_rank_peak_rss_mb"].items():
        print(f"  peak RSS per rank {kind} --quicklook: " + ", ".join(f"rank {k} {v:.0f} MB" for k, v in peaks.items()))
    print("  targets met" if r["targets_met"] else "  TARGETS NOT MET")


def print_result(r: dict) -> None:
    print(f"\n[{r['case']}] {r['description']}; {r['cores']} cores; median of {r['repeat']}")
    print(f"  gdal_translate            {r['gdal_translate_median_s']:7.2f} s   peak RSS "
          f"{r['gdal_translate_peak_rss_mb']:7.1f} MB")
    print(f"  mpi_s2 mpirun -n {r['ranks']:<2}       {r['mpi_s2_median_s']:7.2f} s   peak RSS per rank: "
          + ", ".join(f"rank {k} {v:.0f} MB" for k, v in r["mpi_s2_rank_peak_rss_mb"].items()))
    print(f"  speed-up (gdal_translate / mpi_s2): {r['speedup']:.2f}x   (target >= {r['speedup_target']}x)")
    if "decode_floor_s" in r:
        print(f"  decoding floor (1-thread decode CPU / cores): {r['decode_floor_s']:.1f} s; "
              f"mpi_s2 at {r['mpi_s2_over_floor']:.2f}x the floor"
              + (f"   (target <= {r['floor_target']}x)" if "floor_target" in r else "") + "; "
              f"gdal_translate at {r['gdal_translate_median_s'] / r['decode_floor_s']:.2f}x")
    print(f"  largest rank: {max(r['mpi_s2_rank_peak_rss_mb'].values()):.0f} MB   (target <= {PEAK_MB_TARGET} MB)")
    if "hdf5_convert_s" in r:
        print(f"  hdf5 backend: composing + collective writes {r['hdf5_write_phase_s']:.2f} s, conversion to "
              f"GeoTIFF {r['hdf5_convert_s']:.2f} s (medians)")
    if r.get("n_star"):
        print(f"  output stage saturation N* (workers one writer can serve): {r['n_star']:.0f}"
              + (f"   (target >= {r['n_star_target']})" if r.get("n_star_target") else ""))
    if r.get("worker_busy_imbalance"):
        print(f"  worker busy-time imbalance (max / mean of read + compute): {r['worker_busy_imbalance']:.3f}"
              + (f"   (target <= {IMBALANCE_TARGET})" if r["case"].startswith("mosaic") else ""))
    print("  targets met" if r["targets_met"] else "  TARGETS NOT MET")


# --- series: one tile x 6 dates, median composite with cloud masking, against xarray + dask ---------------------

SERIES_DATES = 6
SERIES_RANKS = 3
#: at least this many times faster than the xarray + dask peer
SERIES_SPEEDUP_TARGET = 1.5
SERIES_CHUNK = 1024  # the peer's dask chunks: the JPEG 2000 tiles
#: what the peer imports, from Debian (the venv sees the system's site-packages)
PEER_DEBIAN_PACKAGES = ("python3-xarray", "python3-dask", "python3-rioxarray")

#: The peer a user would reach for, run in its own process (its peak RSS is that process's). Written into the
#: bench directory as ``dask_peer.py`` and run as ``python dask_peer.py ARGS.json``.
PEER_SCRIPT = r'''"""xarray + dask: the per-pixel median of a season of Sentinel-2 L2A products, clouds masked.

The peer of mpi_s2's ``series`` benchmark (written by mpi_s2.tools.benchmark). Run: python dask_peer.py ARGS.json
"""
import glob
import json
import os
import re
import sys
import threading
import warnings

import dask
import dask.array as da
import numpy as np
import rioxarray
import xarray as xr

warnings.filterwarnings("ignore", "All-NaN slice encountered")
with open(sys.argv[1]) as fh:
    args = json.load(fh)
chunk = args["chunk"]


def band(product, res, code):
    path = glob.glob(f"{product}/GRANULE/*/IMG_DATA/R{res}m/*_{code}_{res}m.jp2")[0]
    # lock=False: parallel reads (rioxarray's default lock lets one thread read at a time, whatever the file)
    return rioxarray.open_rasterio(path, chunks={"x": chunk, "y": chunk}, lock=False).squeeze("band", drop=True)


dates = []
for product in args["products"]:
    # BOA_ADD_OFFSET: -1000 from processing baseline 04.00 on (the _NXXYY_ field of the product's name)
    baseline = int(re.search(r"_N(\d\d)\d\d_", os.path.basename(product)).group(1))
    offset = -1000 if baseline >= 4 else 0
    rgb = xr.concat([band(product, 10, code) for code in ("B04", "B03", "B02")], dim="band")
    scl20 = band(product, 20, "SCL")
    # 20 m -> 10 m, nearest: each SCL pixel covers 2 x 2 band pixels (the grids share their origin)
    scl = da.repeat(da.repeat(scl20.data, 2, axis=0), 2, axis=1)[:rgb.sizes["y"], :rgb.sizes["x"]]
    scl = xr.DataArray(scl, dims=("y", "x"), coords={"y": rgb.y, "x": rgb.x})
    valid = (rgb != 0).all("band") & ~scl.isin(args["mask_classes"])
    dates.append((rgb.astype("float64") + offset).where(valid))
reference = band(args["products"][0], 10, "B04")
series = xr.concat(dates, dim="time").chunk({"time": -1})  # the median wants every date in one chunk
median = series.median("time")  # skips NaN
ratio = ((median / args["scale"]) / args["max_reflectance"]).clip(0.0, 1.0)
display = np.floor(255.0 * ratio ** (1.0 / args["gamma"]) + 0.5).fillna(0.0)
alpha = (median.isel(band=0).notnull() * 255).expand_dims("band")
out = xr.concat([display, alpha], dim="band").astype("uint8").chunk({"band": -1})  # whole pixels per write
out = out.assign_coords(band=[1, 2, 3, 4]).rio.write_crs(reference.rio.crs)
out = out.rio.write_transform(reference.rio.transform())
with dask.config.set(scheduler="threads", num_workers=args["workers"]):
    # lock: dask writes chunk by chunk (without one rioxarray computes the whole array first)
    out.rio.to_raster(args["output"], tiled=True, blockxsize=512, blockysize=512, photometric="RGB", alpha="YES",
                      lock=threading.Lock(), **args["creation_options"])
'''


def series_products(directory: str, size: int) -> list[str]:
    """The 6 dates of one tile at ``size``, generated once and kept (``products-SIZE/``)."""
    where = os.path.join(directory, f"products-{size}")
    listing = os.path.join(where, "products.json")
    if not os.path.exists(listing):
        print(f"generating {SERIES_DATES} dates of a {size} x {size} synthetic L2A tile (JPEG 2000, tiled 1024)... "
              "(minutes, once)", flush=True)
        shutil.rmtree(where, ignore_errors=True)
        os.makedirs(where)
        made = synthesize_series(where, SeriesOptions(dates=SERIES_DATES, size=size, jp2_block=1024))
        with open(listing, "w") as fh:
            json.dump([os.path.basename(p) for p in made.products], fh)
    with open(listing) as fh:
        return [os.path.join(where, name) for name in json.load(fh)]


def series_files(product: str) -> tuple[list[str], str]:
    """The 10 m B04, B03, B02 and the 20 m SCL of an L2A product."""
    granule = f"{product}/GRANULE/*/IMG_DATA"
    bands = [glob.glob(f"{granule}/R10m/*_{code}_10m.jp2")[0] for code in ("B04", "B03", "B02")]
    return bands, glob.glob(f"{granule}/R20m/*_SCL_20m.jp2")[0]


def series_decode_cpu_seconds(directory: str, size: int, products: list[str]) -> float:
    """Single-threaded decode CPU seconds of every block of the 18 bands and the 6 SCL, measured once per size."""
    floor_file = os.path.join(directory, f"decode-floor-{size}.json")
    if not os.path.exists(floor_file):
        print(f"measuring the single-threaded decode time of {3 * len(products)} bands and {len(products)} SCL "
              "(once)...", flush=True)
        files = [f for p in products for bands, scl in [series_files(p)] for f in (*bands, scl)]
        with open(floor_file, "w") as fh:
            json.dump({"decode_cpu_s": decode_cpu_seconds(files, block=None), "files": len(files)}, fh)
    with open(floor_file) as fh:
        return float(json.load(fh)["decode_cpu_s"])


class StagingSampler:
    """Peak bytes allocated in mpi_s2's staging directory for ``output`` while a run goes (sampled every 0.1 s).

    In node memory (/dev/shm, tmpfs) that is RAM no rank's RSS counts; beside the output it is disk."""

    def __init__(self, output: str):
        self.places = {SHARED_MEMORY: staging_directory(output, SHARED_MEMORY), "disk": staging_directory(output)}
        self.peak = {kind: 0 for kind in self.places}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for kind, path in self.places.items():
            try:
                used = sum(e.stat().st_blocks * 512 for e in os.scandir(path) if e.is_file())
            except OSError:
                continue
            self.peak[kind] = max(self.peak[kind], used)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self._sample()

    def __enter__(self) -> StagingSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def compare_rgba(reference: str, other: str, strip: int = 1024) -> dict[str, Any]:
    """Pixel by pixel: alpha (where each has a value) and R, G, B where both have one."""
    a, b = gdal.Open(reference), gdal.Open(other)
    if (a.RasterXSize, a.RasterYSize, a.RasterCount) != (b.RasterXSize, b.RasterYSize, b.RasterCount):
        return {"comparable": False, "identical": False,
                "why": f"{reference}: {a.RasterXSize} x {a.RasterYSize} x {a.RasterCount}, {other}: "
                       f"{b.RasterXSize} x {b.RasterYSize} x {b.RasterCount}"}
    if a.GetGeoTransform() != b.GetGeoTransform():
        return {"comparable": False, "identical": False, "why": "geotransforms differ"}
    width, height = a.RasterXSize, a.RasterYSize
    valid_a = valid_b = alpha_differ = both = rgb_differ = off_by_one = 0
    max_diff = 0
    for row in range(0, height, strip):
        rows = min(strip, height - row)
        x = a.ReadAsArray(0, row, width, rows).astype(np.int16)
        y = b.ReadAsArray(0, row, width, rows).astype(np.int16)
        va, vb = x[3] == 255, y[3] == 255
        valid_a += int(va.sum())
        valid_b += int(vb.sum())
        alpha_differ += int((x[3] != y[3]).sum())
        common = va & vb
        both += int(common.sum())
        diff = np.abs(x[:3] - y[:3]).max(axis=0)[common]
        rgb_differ += int((diff > 0).sum())
        off_by_one += int((diff == 1).sum())
        max_diff = max(max_diff, int(diff.max()) if diff.size else 0)
    return {"comparable": True, "pixels": width * height, "valid_reference": valid_a, "valid_other": valid_b,
            "alpha_differ": alpha_differ, "valid_both": both, "rgb_differ": rgb_differ,
            "rgb_off_by_one": off_by_one, "rgb_max_abs_diff": max_diff,
            "identical": alpha_differ == 0 and rgb_differ == 0}


def _proj_env(env: dict[str, str]) -> dict[str, str]:
    """pyproj (rioxarray) looks for proj.db under the venv's prefix: point it at GDAL's, if it has none."""
    if "PROJ_DATA" in env or "PROJ_LIB" in env:
        return env
    from osgeo import osr
    for path in osr.GetPROJSearchPaths() or []:
        if os.path.exists(os.path.join(path, "proj.db")):
            return {**env, "PROJ_DATA": path}
    return env


def _peer_creation_options() -> dict[str, Any]:
    """mpi_s2's default output codec (ZSTD level 1, horizontal predictor) when this GDAL has ZSTD, else DEFLATE."""
    options = gdal.GetDriverByName("GTiff").GetMetadataItem("DMD_CREATIONOPTIONLIST") or ""
    if "ZSTD" in options:
        return {"compress": "ZSTD", "zstd_level": 1, "predictor": 2}
    return {"compress": "DEFLATE", "predictor": 2}


def check_peer(env: dict[str, str]) -> dict[str, str]:
    """Stop with one line unless the peer's imports work; return the environment to run it in."""
    peer_env = _proj_env(env)
    check = subprocess.run([sys.executable, "-c", "import dask, rioxarray, xarray"], env=peer_env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if check.returncode != 0:
        why = check.stderr.strip().splitlines()[-1] if check.stderr.strip() else "import failed"
        raise SystemExit(f"benchmark: the series case's peer needs xarray, dask and rioxarray ({why}); as root run: "
                         f"apt-get install -y {' '.join(PEER_DEBIAN_PACKAGES)}")
    return peer_env


def run_series_case(directory: str, size: int, repeat: int, env: dict[str, str], ranks: int) -> dict:
    """mpi_s2 ``--composite median --cloud-mask`` against the xarray + dask peer, interleaved; the floor; the
    pixels of both compared."""
    peer_env = check_peer(env)
    products = series_products(directory, size)
    decode_cpu = series_decode_cpu_seconds(directory, size, products)
    decoders = max(1, min(ranks - 1, os.cpu_count() or 1))  # rank 0 plans and writes; the workers decode
    floor = decode_cpu / decoders
    out_mpi, out_peer = os.path.join(directory, "mpi_s2.tif"), os.path.join(directory, "dask.tif")
    report = os.path.join(directory, "run.json")
    mpi = _mpirun(ranks) + [*products, "-o", out_mpi, "--composite", "median", "--cloud-mask", "--overwrite", "-q",
                            "--report", report]
    script, peer_args = os.path.join(directory, "dask_peer.py"), os.path.join(directory, "dask_peer.json")
    with open(script, "w") as fh:
        fh.write(PEER_SCRIPT)
    with open(peer_args, "w") as fh:
        json.dump({"products": products, "output": out_peer, "chunk": SERIES_CHUNK, "workers": decoders,
                   "mask_classes": [3, 8, 9, 10], "scale": 10000.0, "max_reflectance": 1.0, "gamma": GAMMA,
                   "creation_options": _peer_creation_options()}, fh, indent=1)
    peer = [sys.executable, script, peer_args]
    peer_runs, mpi_walls, rank_peaks, staged, reports = [], [], [], [], []
    for i in range(repeat):
        peer_runs.append(timed(peer, peer_env))
        with StagingSampler(out_mpi) as sampler:
            mpi_walls.append(timed(mpi, env)[0])
        staged.append(sampler.peak)
        with open(report) as fh:
            reports.append(json.load(fh))
        rank_peaks.append({r["rank"]: r["peak_rss_mb"] for r in reports[-1]["ranks"]})
        print(f"  [series] run {i + 1}/{repeat}: xarray + dask {peer_runs[-1][0]:.2f} s, mpi_s2 {mpi_walls[-1]:.2f} s",
              flush=True)
    peer_wall = statistics.median(w for w, _ in peer_runs)
    peer_peak = max(m for _, m in peer_runs)
    mpi_wall = statistics.median(mpi_walls)
    worst_rank = {r: max(p[r] for p in rank_peaks) for r in rank_peaks[0]}
    largest, total = max(worst_rank.values()), sum(worst_rank.values())
    last = reports[-1]
    pixels = compare_rgba(out_mpi, out_peer)
    result: dict[str, Any] = {
        "case": "series", "description": f"1 tile x {len(products)} dates, 3 x {size} x {size} JPEG 2000 (tiled "
                                         f"1024) + SCL 20 m each, median composite, cloud mask 3/8/9/10, ZSTD output",
        "repeat": repeat, "ranks": ranks, "cores": os.cpu_count(),
        "mpi_s2_median_s": round(mpi_wall, 2), "mpi_s2_runs_s": [round(w, 2) for w in mpi_walls],
        "decode_cpu_s": round(decode_cpu, 1), "decoding_ranks": decoders, "decode_floor_s": round(floor, 1),
        "mpi_s2_over_floor": round(mpi_wall / floor, 3), "floor_target": FLOOR_TARGET,
        "mpi_s2_rank_peak_rss_mb": worst_rank, "mpi_s2_largest_rank_rss_mb": largest,
        "mpi_s2_sum_rss_mb": round(total, 1),
        "mpi_s2_staged_peak_mb": {k: round(max(s[k] for s in staged) / 2**20, 1) for k in staged[0]},
        "mpi_s2_window_size": last["window_size"], "last_run_seconds_by_rank": {r["rank"]: r["seconds"]
                                                                                for r in last["ranks"]},
        "worker_busy_imbalance": last.get("worker_busy_imbalance"),
        "dask_median_s": round(peer_wall, 2), "dask_runs_s": [round(w, 2) for w, _ in peer_runs],
        "dask_peak_rss_mb": round(peer_peak, 1), "dask_workers": decoders,
        "speedup_vs_dask": round(peer_wall / mpi_wall, 2), "speedup_target": SERIES_SPEEDUP_TARGET,
        "pixels_mpi_s2_vs_dask": pixels,
    }
    result["targets_met"] = bool(result["mpi_s2_over_floor"] <= FLOOR_TARGET
                                 and result["speedup_vs_dask"] >= SERIES_SPEEDUP_TARGET
                                 and largest < peer_peak and largest <= PEAK_MB_TARGET and pixels["identical"])
    return result


def print_series_result(r: dict) -> None:
    print(f"\n[{r['case']}] {r['description']}; {r['cores']} cores; median of {r['repeat']}")
    print(f"  xarray + dask ({r['dask_workers']} threads)  {r['dask_median_s']:7.2f} s   peak RSS "
          f"{r['dask_peak_rss_mb']:7.1f} MB")
    print(f"  mpi_s2 mpirun -n {r['ranks']:<2}          {r['mpi_s2_median_s']:7.2f} s   peak RSS per rank: "
          + ", ".join(f"rank {k} {v:.0f} MB" for k, v in r["mpi_s2_rank_peak_rss_mb"].items())
          + f" (sum {r['mpi_s2_sum_rss_mb']:.0f} MB)")
    staged = r["mpi_s2_staged_peak_mb"]
    if any(staged.values()):
        print("  mpi_s2 staged copies (peak): " + ", ".join(
            f"{v:.1f} MB {'in node memory, ' + SHARED_MEMORY + ', counted in no RSS' if k == SHARED_MEMORY else k}"
            for k, v in staged.items() if v))
    print(f"  speed-up (xarray + dask / mpi_s2): {r['speedup_vs_dask']:.2f}x   (target >= {r['speedup_target']}x)")
    print(f"  decoding floor (1-thread decode CPU {r['decode_cpu_s']:.1f} s / {r['decoding_ranks']} decoding ranks): "
          f"{r['decode_floor_s']:.1f} s; mpi_s2 at {r['mpi_s2_over_floor']:.2f}x the floor   (target <= "
          f"{r['floor_target']}x); xarray + dask at {r['dask_median_s'] / r['decode_floor_s']:.2f}x")
    largest = r["mpi_s2_largest_rank_rss_mb"]
    print(f"  memory: largest rank {largest:.0f} MB vs xarray + dask {r['dask_peak_rss_mb']:.0f} MB   (target: less; "
          f"and <= {PEAK_MB_TARGET} MB); all ranks together {r['mpi_s2_sum_rss_mb']:.0f} MB")
    p = r["pixels_mpi_s2_vs_dask"]
    if not p["comparable"]:
        print(f"  pixels: NOT COMPARABLE: {p['why']}")
    else:
        print(f"  pixels: {p['valid_both']} of {p['pixels']} valid in both (mpi_s2 {p['valid_reference']}, "
              f"xarray + dask {p['valid_other']}); alpha differs at {p['alpha_differ']}, R/G/B at {p['rgb_differ']} "
              f"({p['rgb_off_by_one']} by 1, at most {p['rgb_max_abs_diff']})"
              + ("   identical" if p["identical"] else "   DIFFERENT"))
    print("  targets met" if r["targets_met"] else "  TARGETS NOT MET")


#: remote: mpi_s2 reading COGs from nginx on loopback at most this multiple of the same run reading them locally
REMOTE_TARGET = 1.10
REMOTE_RANKS = 3
#: remote: local and remote runs are timed in adjacent pairs (the order alternating), at least this many, and the
#: result is the median of the pairs' ratios. The target is a 10 % difference, and a small machine's speed drifts by
#: as much within a minute (2 cores here: one run 2.95 s, another 3.25 s); a ratio of two medians mixes that drift
#: in, the ratio within a pair mostly cancels it.
REMOTE_PAIRS = 7
#: remote: passes of GDAL alone reading the tile's windows (locally and over HTTP, alternating), for the floor
READ_PASSES = 6


def remote_cogs(directory: str, size: int) -> list[str]:
    """The synthetic tile as COGs (DEFLATE, tiled 512, overviews: as Earth Search serves Sentinel-2), made once."""
    folder = os.path.join(directory, "cogs")
    paths = [os.path.join(folder, f"{band}.tif") for band in ("B04", "B03", "B02")]
    stamp = os.path.join(directory, f"cogs-{size}.done")
    if not os.path.exists(stamp):
        print(f"generating a {size} x {size} synthetic tile as three COGs (DEFLATE, tiled 512)...", flush=True)
        synthesize(directory, SynthOptions(size=size, block=512, compress="NONE"))
        os.makedirs(folder, exist_ok=True)
        for role, path in zip(("red", "green", "blue"), paths, strict=True):
            gdal.Translate(path, os.path.join(directory, BAND_FILES[role]), format="COG",
                           creationOptions=["COMPRESS=DEFLATE", "BLOCKSIZE=512", "NUM_THREADS=2"])
        for role in ("red", "green", "blue"):
            os.unlink(os.path.join(directory, BAND_FILES[role]))
        open(stamp, "w").close()
    return paths


def _tile_bytes(path: str) -> int:
    """Bytes of the full-resolution tiles of a GeoTIFF (its TIFF tags, as GDAL reports them)."""
    dataset = gdal.Open(path)
    band = dataset.GetRasterBand(1)
    bx, by = band.GetBlockSize()
    return sum(int(band.GetMetadataItem(f"BLOCK_SIZE_{x}_{y}", "TIFF"))
               for y in range(-(-dataset.RasterYSize // by)) for x in range(-(-dataset.RasterXSize // bx)))


def gdal_read_pass(paths: list[str], window: int = 1024) -> float:
    """CPU seconds this process spends reading every ``window`` x ``window`` window of the three band files with
    GDAL, as a worker does (its GDAL options, the remote block cache, one band after another into one buffer):
    the reading alone, without mpi_s2. Its remote / local ratio is the floor of what reading over HTTP costs here."""
    from mpi_s2.parallel.gdal_env import REMOTE_CACHE_MB, block_cache, config_options, rank_options

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    with config_options(rank_options(1, REMOTE_CACHE_MB)), block_cache(REMOTE_CACHE_MB):
        gdal.VSICurlClearCache()
        datasets = [gdal.Open(path) for path in paths]
        bands = [ds.GetRasterBand(1) for ds in datasets]
        width, height = datasets[0].RasterXSize, datasets[0].RasterYSize
        buffer = np.empty((window, window), dtype=np.uint16)
        start = cpu()
        for row in range(0, height, window):
            for col in range(0, width, window):
                w, h = min(window, width - col), min(window, height - row)
                for band in bands:
                    band.ReadAsArray(col, row, w, h, buf_obj=buffer[:h, :w])
        spent = cpu() - start
        del bands, datasets
    return spent


def run_remote_case(directory: str, size: int, repeat: int, env: dict[str, str], ranks: int,
                    codec: str = "zstd") -> dict:
    """One tile of COGs read from nginx on 127.0.0.1 through a STAC item, against the same COGs read locally
    (interleaved, the order alternating), with gdal_translate over a ``/vsicurl/`` VRT of them beside it."""
    from mpi_s2.tools.local_nginx import Nginx

    cogs = remote_cogs(directory, size)
    options = OUTPUT_CODECS[codec]
    co = [arg for option in options for arg in ("--co", option)]
    reports = {kind: os.path.join(directory, f"run-{kind}.json") for kind in ("local", "remote")}
    outputs = {kind: os.path.join(directory, f"mpi_s2-{kind}.tif") for kind in ("local", "remote")}
    local = _mpirun(ranks) + ["--red", cogs[0], "--green", cogs[1], "--blue", cogs[2], "-o", outputs["local"],
                              "--overwrite", "-q", "--report", reports["local"], *co]
    with Nginx(Path(os.path.dirname(cogs[0])), Path(directory) / "nginx") as server:
        urls = [server.url(os.path.basename(path)) for path in cogs]
        item = os.path.join(directory, "item.json")
        raster = [{"scale": 0.0001, "offset": 0.0}]
        with open(item, "w") as fh:
            json.dump({"type": "Feature", "stac_version": "1.0.0", "id": "synthetic-tile", "geometry": None,
                       "properties": {"datetime": "2023-06-01T10:25:59Z"}, "links": [],
                       "assets": {role: {"href": url, "raster:bands": raster}
                                  for role, url in zip(("red", "green", "blue"), urls, strict=True)}}, fh)
        remote = _mpirun(ranks) + ["--stac", item, "-o", outputs["remote"], "--overwrite", "-q", "--report",
                                   reports["remote"], *co]
        vrt = _vrt(os.path.join(directory, "remote.vrt"), ["/vsicurl/" + url for url in urls])
        gdal_cmd = _gdal_translate(vrt, os.path.join(directory, "gdal_translate-remote.tif"), 0, options)
        runs: dict[str, list[tuple[float, float]]] = {"local": [], "remote": [], "gdal": []}
        peaks: dict[str, list[float]] = {"local": [], "remote": []}
        fetched = None
        server_cpu: list[float] = []
        pairs = max(repeat, REMOTE_PAIRS)
        for i in range(pairs):
            for kind in (("local", "remote") if i % 2 == 0 else ("remote", "local")):
                server.clear_log()
                os.sync()  # the previous run's output is on disk: no run pays for another's writeback
                before = server.cpu_seconds()
                runs[kind].append(timed(local if kind == "local" else remote, env))
                if kind == "remote":
                    server_cpu.append(server.cpu_seconds() - before)
                with open(reports[kind]) as fh:
                    peaks[kind].append(max(r["peak_rss_mb"] for r in json.load(fh)["ranks"]))
                if kind == "remote" and fetched is None:
                    requests = server.requests()
                    fetched = (len(requests), sum(r.bytes_sent for r in requests))
            print(f"  [remote] pair {i + 1}/{pairs}: local {runs['local'][-1][0]:.2f} s, remote "
                  f"{runs['remote'][-1][0]:.2f} s ({runs['remote'][-1][0] / runs['local'][-1][0]:.3f}x)", flush=True)
        reads: dict[str, list[float]] = {"local": [], "remote": []}
        for i in range(READ_PASSES):  # the floor: GDAL alone reading the same windows, here and over HTTP
            for kind in (("local", "remote") if i % 2 == 0 else ("remote", "local")):
                reads[kind].append(gdal_read_pass(cogs if kind == "local" else ["/vsicurl/" + url for url in urls]))
        read_ratio = statistics.median(r / loc for loc, r in zip(reads["local"], reads["remote"], strict=True))
        print(f"  [remote] GDAL alone reading the windows: local {statistics.median(reads['local']):.2f} CPU-s, "
              f"remote {statistics.median(reads['remote']):.2f} CPU-s ({read_ratio:.3f}x)", flush=True)
        for i in range(repeat):  # after the pairs: its 700 MB output is no pair's writeback
            os.sync()
            runs["gdal"].append(timed(gdal_cmd, env))
            print(f"  [remote] gdal_translate over /vsicurl/ {i + 1}/{repeat}: {runs['gdal'][-1][0]:.2f} s", flush=True)
    median = {kind: statistics.median(w for w, _ in values) for kind, values in runs.items()}
    ratios = [r / loc for (loc, _), (r, _) in zip(runs["local"], runs["remote"], strict=True)]
    tiles = sum(_tile_bytes(path) for path in cogs)
    assert fetched is not None
    pixels = compare_rgba(outputs["local"], outputs["remote"])
    result: dict[str, Any] = {
        "case": f"remote:{codec}", "description": f"{size} x {size} x 3 uint16 COGs (DEFLATE, tiled 512) from nginx "
                                                  f"on 127.0.0.1 via a STAC item, {codec.upper()} output",
        "repeat": repeat, "ranks": ranks, "cores": os.cpu_count(),
        "local_median_s": round(median["local"], 2), "remote_median_s": round(median["remote"], 2),
        "pairs": pairs, "remote_over_local": round(statistics.median(ratios), 3),
        "remote_over_local_pairs": [round(r, 3) for r in ratios],
        "remote_median_over_local_median": round(median["remote"] / median["local"], 3), "remote_target": REMOTE_TARGET,
        "gdal_read_local_cpu_s": round(statistics.median(reads["local"]), 3),
        "gdal_read_remote_cpu_s": round(statistics.median(reads["remote"]), 3),
        "gdal_read_remote_over_local": round(read_ratio, 3),
        "nginx_cpu_s": round(statistics.median(server_cpu), 3),
        # what reading over HTTP alone adds to the local run: GDAL's extra CPU for the whole tile and nginx's, on
        # the machine's cores (every core busy with the run, as the workers keep them)
        "remote_floor_over_local": round(1 + (statistics.median(reads["remote"]) - statistics.median(reads["local"])
                                              + statistics.median(server_cpu)) / (os.cpu_count() or 1)
                                         / median["local"], 3),
        "gdal_translate_remote_median_s": round(median["gdal"], 2),
        "speedup_vs_gdal_translate_remote": round(median["gdal"] / median["remote"], 2),
        "gdal_translate_peak_rss_mb": round(max(m for _, m in runs["gdal"]), 1),
        "mpi_s2_largest_rank_rss_mb": round(max(peaks["remote"]), 1),
        "requests": fetched[0], "bytes_fetched": fetched[1], "tile_bytes": tiles,
        "fetched_over_tiles": round(fetched[1] / tiles, 4), "pixels_remote_vs_local": pixels,
    }
    result["targets_met"] = bool(result["remote_over_local"] <= REMOTE_TARGET and pixels["identical"]
                                 and result["mpi_s2_largest_rank_rss_mb"] <= PEAK_MB_TARGET)
    return result


def print_remote_result(r: dict) -> None:
    print(f"\n[{r['case']}] {r['description']}; {r['cores']} cores; {r['pairs']} pairs of runs (gdal_translate: "
          f"median of {r['repeat']}); mpirun -n {r['ranks']}")
    print(f"  mpi_s2 reading the COGs locally   {r['local_median_s']:7.2f} s")
    pairs = r["remote_over_local_pairs"]
    print(f"  mpi_s2 reading them from nginx    {r['remote_median_s']:7.2f} s   {r['remote_over_local']:.3f}x local, "
          f"the median of the pairs' ratios ({min(pairs):.3f} to {max(pairs):.3f}; the medians' ratio "
          f"{r['remote_median_over_local_median']:.3f}) (target <= {r['remote_target']}x)")
    print(f"  GDAL alone reading the windows    {r['gdal_read_local_cpu_s']:.2f} CPU-s locally, "
          f"{r['gdal_read_remote_cpu_s']:.2f} CPU-s from nginx: {r['gdal_read_remote_over_local']:.3f}x (the floor of "
          f"reading over HTTP; one process, nginx on the other core)")
    print(f"  nginx used {r['nginx_cpu_s']:.2f} CPU-s per remote run; with GDAL's extra CPU, spread over the "
          f"{r['cores']} cores: a floor of {r['remote_floor_over_local']:.3f}x local before mpi_s2 does anything")
    print(f"  gdal_translate over /vsicurl/     {r['gdal_translate_remote_median_s']:7.2f} s   (mpi_s2 "
          f"{r['speedup_vs_gdal_translate_remote']:.2f}x faster; peak RSS {r['gdal_translate_peak_rss_mb']:.0f} MB; "
          f"mpi_s2's largest rank {r['mpi_s2_largest_rank_rss_mb']:.0f} MB)")
    print(f"  fetched: {r['requests']} requests, {r['bytes_fetched']} bytes = {r['fetched_over_tiles']:.3f}x the "
          f"full-resolution tiles ({r['tile_bytes']} bytes)")
    p = r["pixels_remote_vs_local"]
    print("  pixels: identical to the local run" if p["identical"] else f"  pixels: DIFFERENT: {p}")
    print("  targets met" if r["targets_met"] else "  TARGETS NOT MET")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpi_s2.tools.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="bench-data")
    parser.add_argument("--size", type=int, default=10980)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--case", default="all",
                        help="comma-separated INPUT[:CODEC][+cog][+hdf5][+quicklook|+stretch] (INPUT gtiff, jp2 or "
                             "mosaic; "
                             "or series: 6 dates, --composite median --cloud-mask against xarray + dask; "
                             "or remote[:CODEC]: the tile as COGs from nginx on 127.0.0.1 against them read locally; "
                             "CODEC zstd, deflate, lzw; +hdf5: mpi_s2 --backend hdf5; +quicklook: mpi_s2 without "
                             "and with --quicklook; +stretch: mpi_s2 with --stretch fixed and percentile:2,98; "
                             "default " + ",".join(DEFAULT_CASES) + ")")
    parser.add_argument("--ranks", type=int, help="override the rank count of the case(s)")
    parser.add_argument("--output-codec", choices=sorted(OUTPUT_CODECS),
                        help="output codec of cases that name none (default: zstd for the JPEG 2000 cases, none "
                             "for the GeoTIFF case)")
    args = parser.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_"))}
    results = []
    cases = {"gtiff": (gtiff_case, 2), "jp2": (jp2_case, 3), "mosaic": (mosaic_case, 3)}
    specs = DEFAULT_CASES if args.case == "all" else tuple(args.case.split(","))
    if "series" in specs:
        check_peer(env)  # before hours of other cases
    for spec in specs:
        if spec.partition(":")[0] == "remote":
            directory = os.path.join(args.dir, "remote")
            os.makedirs(directory, exist_ok=True)
            _BACKEND["hdf5"] = False
            results.append(run_remote_case(directory, args.size, args.repeat, env, args.ranks or REMOTE_RANKS,
                                           spec.partition(":")[2] or "zstd"))
            print_remote_result(results[-1])
            continue
        if spec == "series":
            directory = os.path.join(args.dir, "series")
            os.makedirs(directory, exist_ok=True)
            _BACKEND["hdf5"] = False
            results.append(run_series_case(directory, args.size, args.repeat, env, args.ranks or SERIES_RANKS))
            print_series_result(results[-1])
            continue
        quicklook = spec.endswith("+quicklook")
        spec = spec.removesuffix("+quicklook")
        stretch = spec.endswith("+stretch")
        spec = spec.removesuffix("+stretch")
        _BACKEND["hdf5"] = spec.endswith("+hdf5")
        base = spec.removesuffix("+hdf5")
        cog = base.endswith("+cog")
        name, _, codec = base.removesuffix("+cog").partition(":")
        if name not in cases or (codec and codec not in OUTPUT_CODECS):
            parser.error(f"--case {spec}: expected INPUT[:CODEC][+cog] with INPUT in {', '.join(cases)} and "
                         f"CODEC in {', '.join(OUTPUT_CODECS)}, or series")
        directory = os.path.join(args.dir, name)
        os.makedirs(directory, exist_ok=True)
        make, ranks = cases[name]
        codec = codec or args.output_codec or (None if name == "gtiff" else "zstd")
        if name == "gtiff" and codec:
            ranks = 3  # workers encode: two of them, one per core, and the writer
        case = make(directory, args.size, args.ranks or ranks, codec, cog=cog)
        case.name = (f"{name}:{codec or 'none'}" + ("+cog" if cog else "") + ("+hdf5" if _BACKEND["hdf5"] else "")
                     + ("+quicklook" if quicklook else "") + ("+stretch" if stretch else ""))
        if stretch:
            results.append(run_stretch_case(case, args.repeat, env))
            print_stretch_result(results[-1])
            continue
        if quicklook:
            results.append(run_quicklook_case(case, args.repeat, env))
            print_quicklook_result(results[-1])
            continue
        results.append(run_case(case, args.repeat, env))
        print_result(results[-1])
    with open(os.path.join(args.dir, "bench.json"), "w") as fh:
        json.dump(results, fh, indent=2)
    return 0 if all(r["targets_met"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
