"""Scaling studies: the projection model, the calibration, decoder threads, and the make targets end to end."""

from __future__ import annotations

import csv
import math
import os
import subprocess
from pathlib import Path

import pytest
from osgeo import gdal

from mpi_s2.parallel.gdal_env import explicit_threads, node_threads, slurm_cpus_per_task
from mpi_s2.scaling.model import (
    Cluster,
    WindowCosts,
    add_ratios,
    calibrate,
    calibration_row,
    predict_wall,
    projection_ranks,
    remote_fraction,
    strong_speedup,
    weak_speedup,
    workers,
    writer_saturation,
)

REPO = Path(__file__).resolve().parents[1]
ONE_NODE = Cluster(ranks_per_node=4096)


def costs(worker=1.0, place=0.1, encoded=0.0, raw=0.0, setup=0.0) -> WindowCosts:
    return WindowCosts(decode=worker * 0.8, compose=worker * 0.1, encode=worker * 0.1, place=place,
                       encoded_bytes=encoded, raw_bytes=raw, setup=setup)


# --- the model ------------------------------------------------------------------------------------------------------

def test_workers_are_all_ranks_but_the_writer():
    assert [workers(n) for n in (1, 2, 3, 16)] == [1, 1, 2, 15]
    with pytest.raises(ValueError):
        workers(0)


def test_writer_backend_is_linear_in_workers_until_the_writer_saturates():
    c = costs(worker=1.0, place=0.1)  # N* = 10 workers
    assert writer_saturation(c, 2, ONE_NODE) == pytest.approx(10.0)
    speedup = strong_speedup(c, 100_000, [1, 5, 11, 100, 1000], "writer", ONE_NODE)
    assert speedup[1] == pytest.approx(4 * 1.1, rel=1e-3)  # 4 workers, T1 includes the placing
    assert speedup[2] == pytest.approx(10 * 1.1, rel=1e-3)  # exactly N* workers
    assert speedup[3] == pytest.approx(11.0, rel=1e-3)  # beyond N*: the writer's pace, (1 + 0.1) / 0.1
    assert speedup[4] == pytest.approx(speedup[3])


def test_a_job_has_no_more_parallelism_than_windows():
    c = costs(worker=1.0, place=0.0)
    assert strong_speedup(c, 8, [9, 100], "writer", ONE_NODE) == pytest.approx([8.0, 8.0])
    assert predict_wall(c, 8, 4, "writer", ONE_NODE) == pytest.approx(3.0)  # ceil(8 / 3) windows per worker


def test_setup_time_is_amdahls_serial_part():
    c = costs(worker=1.0, place=0.0, setup=10.0)
    # 100 windows: T1 = 110, T(101 ranks) = 10 + 1
    assert strong_speedup(c, 100, [101], "writer", ONE_NODE)[0] == pytest.approx(110 / 11)


def test_tiles_from_other_nodes_cost_the_writers_link():
    cluster = Cluster(ranks_per_node=4, link_bytes_per_s=1e6)
    assert remote_fraction(4, cluster) == 0.0
    assert remote_fraction(8, cluster) == pytest.approx(4 / 7)
    c = costs(worker=1.0, place=0.0, encoded=1e5)  # 0.1 s per window over the link
    assert writer_saturation(c, 4, cluster) == math.inf
    assert writer_saturation(c, 1000, cluster) == pytest.approx(1.0 / (0.1 * 996 / 999), rel=1e-6)


def test_hdf5_array_scales_past_the_writer_and_the_conversion_does_not():
    c = costs(worker=1.0, place=0.1, raw=1e6)
    cluster = Cluster(ranks_per_node=16, link_bytes_per_s=1e9, fs_bytes_per_s=1e10)
    writer, converted, array = (strong_speedup(c, 100_000, [1000], b, cluster)[0]
                                for b in ("writer", "hdf5", "hdf5-array"))
    assert array > 5 * writer  # the composing alone never waits for rank 0
    assert converted <= writer  # the conversion is placed by the same single writer
    with pytest.raises(ValueError, match="backend"):
        predict_wall(c, 10, 2, "netcdf")


def test_weak_scaling_stays_flat_without_a_bottleneck_and_falls_behind_a_writer():
    free = costs(worker=1.0, place=0.0)
    ranks = [2, 9, 65]
    # n ranks, 10 n windows on n - 1 workers: T(n) = ceil(10 n / (n - 1)), T(1) = 10
    assert weak_speedup(free, 10, ranks, "writer", ONE_NODE) == pytest.approx(
        [n * 10 / math.ceil(10 * n / (n - 1)) for n in ranks])
    bound = weak_speedup(costs(worker=1.0, place=0.1), 10, [1000], "writer", ONE_NODE)[0]
    assert bound == pytest.approx(1000 * 11 / (10_000 * 0.1), rel=1e-3)


def test_projection_ranks_reach_1024_through_the_milestones():
    ranks = projection_ranks(1024)
    assert ranks[0] == 1 and ranks[-1] == 1024 and ranks == sorted(set(ranks))
    assert {2, 3, 16, 64, 256}.issubset(ranks)


# --- calibration and ratios -----------------------------------------------------------------------------------------

def row(ranks, workers_, wall, read=2.0, compute=0.5, encode=0.5, write=0.4, windows=40, cores=2, nodes=1):
    return {"study": "strong", "ranks": str(ranks), "workers": str(workers_), "nodes": str(nodes),
            "cores_per_node": str(cores), "windows": str(windows), "width": "1000", "height": "1000",
            "wall_s": str(wall), "read_s": str(read), "compute_s": str(compute), "encode_s": str(encode),
            "writer_write_s": str(write), "output_bytes": "2000000"}


def test_calibration_takes_the_largest_run_with_a_core_per_worker():
    rows = [row(1, 1, 20.0), row(2, 1, 19.0), row(3, 2, 11.0), row(4, 3, 12.0)]
    assert calibration_row(rows)["ranks"] == "3"  # 3 workers on 2 cores are oversubscribed
    c = calibrate(rows[2])
    assert (c.decode, c.compose, c.encode) == pytest.approx((2.0 * 2 / 40, 0.5 * 2 / 40, 0.5 * 2 / 40))
    assert c.place == pytest.approx(0.4 / 40)
    assert c.encoded_bytes == pytest.approx(50_000) and c.raw_bytes == pytest.approx(100_000)
    assert c.setup == pytest.approx(11.0 - 20 * c.worker)
    assert calibration_row([row(4, 3, 12.0)])["ranks"] == "4"  # nothing fits: the smallest run


def test_ratios_strong_and_weak():
    strong = [{"ranks": 1, "wall_s": 10.0}, {"ranks": 4, "wall_s": 4.0}]
    add_ratios("strong", strong)
    assert (strong[1]["speedup"], strong[1]["efficiency"]) == (2.5, 0.625)
    weak = [{"ranks": 1, "wall_s": 10.0}, {"ranks": 4, "wall_s": 12.5}]
    add_ratios("weak", weak)
    assert (weak[1]["speedup"], weak[1]["efficiency"]) == (3.2, 0.8)


# --- decoder threads per rank ---------------------------------------------------------------------------------------

def test_decoder_threads_share_the_nodes_cores():
    assert node_threads([[0, 1], [0, 1]], 1, [None, None]) == 2  # writer + one worker on 2 cores
    assert node_threads([[0, 1]] * 3, 2, [None] * 3) == 1
    assert node_threads([[0], [1]], 1, [None, None], own_cores=1) == 1  # bound: no threads beyond its core
    assert node_threads([[0, 1, 2, 3], [4, 5, 6, 7]], 2, [None, None], own_cores=4) == 4  # bound, disjoint
    # Slurm without task binding: every rank sees all 16 cores, the job has 2 tasks x 2 CPUs
    assert node_threads([list(range(16))] * 2, 1, [2, 2], own_cores=16) == 4


def test_explicit_thread_counts():
    assert explicit_threads({"GDAL_NUM_THREADS": "3"}) == 3
    assert explicit_threads({"GDAL_NUM_THREADS": "ALL_CPUS"}) == (os.cpu_count() or 1)
    assert explicit_threads({"GDAL_NUM_THREADS": "many"}) is None and explicit_threads({}) is None
    assert slurm_cpus_per_task({"SLURM_CPUS_PER_TASK": "4"}) == 4 and slurm_cpus_per_task({}) is None


# --- the make targets, end to end, with tiny sizes ------------------------------------------------------------------

def make(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(["make", "-C", str(REPO), "--no-print-directory", *args], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def check_png(path: Path) -> None:
    ds = gdal.Open(str(path))
    assert ds.GetDriver().ShortName == "PNG" and (ds.RasterXSize, ds.RasterYSize) == (1200, 500)
    band = ds.GetRasterBand(1).ReadAsArray()
    assert band.min() < 100 < band.max()  # lines and text on a white background, not a blank image


def test_scaling_targets_end_to_end(tmp_path):
    out = tmp_path / "scaling"
    common = [f"SCALING_DIR={out}", "SCALING_SIZE=512", "SCALING_WINDOW=256", "SCALING_RANKS=1,2,3"]
    make("scaling-strong", *common)
    make("scaling-weak", *common, "SCALING_INPUT=gtiff", "SCALING_RANKS=1,3")
    report = make("scaling-report", f"SCALING_DIR={out}").stdout

    strong, weak = read_rows(out / "strong.csv"), read_rows(out / "weak.csv")
    assert [r["ranks"] for r in strong] == ["1", "2", "3"] and [r["workers"] for r in strong] == ["1", "1", "2"]
    for r in strong + weak:
        assert r["nodes"] == "1" and float(r["wall_s"]) > 0 and float(r["report_wall_s"]) > 0
        assert float(r["read_s"]) > 0 and float(r["writer_write_s"]) > 0 and int(r["output_bytes"]) > 0
        assert float(r["efficiency"]) == pytest.approx(
            float(r["speedup"]) / int(r["ranks"]) if r["study"] == "strong" else
            float(weak[0]["wall_s"]) / float(r["wall_s"]), abs=2e-3)
    assert all((r["width"], r["height"], r["windows"]) == ("512", "512", "4") for r in strong)
    assert [(r["height"], r["windows"]) for r in weak] == [("512", "4"), ("1536", "12")]
    assert strong[0]["speedup"] == "1.0" and strong[0]["n_star"] == "" and float(strong[2]["n_star"]) > 0
    assert {r["input"] for r in strong} == {"jp2"} and {r["input"] for r in weak} == {"gtiff"}
    check_png(out / "strong.png")
    check_png(out / "weak.png")

    text = (out / "REPORT.md").read_text()
    assert text.strip() in report  # printed, too
    assert "## Strong scaling (writer backend, jp2 input" in text and "## Weak scaling (writer backend, gtiff" in text
    assert "| 3 | 2 | 1 | 512 x 512 | 4 |" in text and "| 3 | 2 | 1 | 512 x 1536 | 12 |" in text
    assert "| writer, 100-tile mosaic |" in text and "1024 ranks" in text


def test_scaling_report_without_studies_is_one_clear_line(tmp_path):
    proc = subprocess.run(["make", "-C", str(REPO), "-s", "scaling-report", f"SCALING_DIR={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"mpi_s2.scaling: error: {tmp_path}: no strong.csv or weak.csv" in proc.stderr
