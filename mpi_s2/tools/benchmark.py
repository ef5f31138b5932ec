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
* ``mosaic``: 2 x 2 such products on Sentinel-2 spacing (origins 10000 px apart, blocks 784 px off), one of
  them 40 % nodata (an orbit edge); gdal_translate reads a VRT of the same tiles; mpirun -n 3. The decoding
  floor: single-threaded decode CPU seconds of every distinct block of the 12 bands, divided by the cores.

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
import time
from dataclasses import dataclass
from typing import Any

from osgeo import gdal

from mpi_s2.tools.synth import BAND_FILES, ProductOptions, SynthOptions, synthesize, synthesize_product

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


def decode_cpu_seconds(bands: list[str], block: int = 1024) -> float:
    """CPU seconds to decode every block of ``bands`` once, single-threaded (the work no layout avoids)."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    gdal.SetConfigOption("GDAL_NUM_THREADS", "1")
    try:
        for path in bands:
            ds = gdal.Open(path)
            band = ds.GetRasterBand(1)
            for row in range(0, ds.RasterYSize, block):
                for col in range(0, ds.RasterXSize, block):
                    band.ReadRaster(col, row, min(block, ds.RasterXSize - col), min(block, ds.RasterYSize - row))
            ds = None
    finally:
        gdal.SetConfigOption("GDAL_NUM_THREADS", None)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


OUTPUT_CODECS = {"zstd": ["COMPRESS=ZSTD", "ZSTD_LEVEL=1", "PREDICTOR=2"], "lzw": ["COMPRESS=LZW"],
                 "deflate": ["COMPRESS=DEFLATE", "PREDICTOR=2"]}


def jp2_case(directory: str, size: int, ranks: int, codec: str | None = "zstd", cog: bool = False) -> Case:
    codec = codec or "zstd"
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
                 "mosaic:zstd", "jp2:zstd+quicklook")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpi_s2.tools.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="bench-data")
    parser.add_argument("--size", type=int, default=10980)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--case", default="all",
                        help="comma-separated INPUT[:CODEC][+cog][+hdf5][+quicklook] (INPUT gtiff, jp2 or mosaic; "
                             "CODEC zstd, deflate, lzw; +hdf5: mpi_s2 --backend hdf5; +quicklook: mpi_s2 without "
                             "and with --quicklook; default " + ",".join(DEFAULT_CASES) + ")")
    parser.add_argument("--ranks", type=int, help="override the rank count of the case(s)")
    parser.add_argument("--output-codec", choices=sorted(OUTPUT_CODECS),
                        help="output codec of cases that name none (default: zstd for the JPEG 2000 cases, none "
                             "for the GeoTIFF case)")
    args = parser.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_"))}
    results = []
    cases = {"gtiff": (gtiff_case, 2), "jp2": (jp2_case, 3), "mosaic": (mosaic_case, 3)}
    for spec in (DEFAULT_CASES if args.case == "all" else tuple(args.case.split(","))):
        quicklook = spec.endswith("+quicklook")
        spec = spec.removesuffix("+quicklook")
        _BACKEND["hdf5"] = spec.endswith("+hdf5")
        base = spec.removesuffix("+hdf5")
        cog = base.endswith("+cog")
        name, _, codec = base.removesuffix("+cog").partition(":")
        if name not in cases or (codec and codec not in OUTPUT_CODECS):
            parser.error(f"--case {spec}: expected INPUT[:CODEC][+cog] with INPUT in {', '.join(cases)} and "
                         f"CODEC in {', '.join(OUTPUT_CODECS)}")
        directory = os.path.join(args.dir, name)
        os.makedirs(directory, exist_ok=True)
        make, ranks = cases[name]
        codec = codec or args.output_codec or (None if name == "gtiff" else "zstd")
        if name == "gtiff" and codec:
            ranks = 3  # workers encode: two of them, one per core, and the writer
        case = make(directory, args.size, args.ranks or ranks, codec, cog=cog)
        case.name = (f"{name}:{codec or 'none'}" + ("+cog" if cog else "") + ("+hdf5" if _BACKEND["hdf5"] else "")
                     + ("+quicklook" if quicklook else ""))
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
