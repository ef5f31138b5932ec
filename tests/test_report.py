"""The run report (``--report``): written whatever the outcome (ok, failed, stopped), with what a cluster user looks
for: times, version, command line, Slurm ids, the output's CRS and its valid, cloud-masked and nodata fractions.

Fractions are computed here independently, with numpy, from the input digital numbers and scene classes.
"""

from __future__ import annotations

import json
import shlex
import signal
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal
from test_signals import TILES_256, Job, stall

import mpi_s2
from mpi_s2.inputs.bands import epsg_code
from mpi_s2.report import pixel_fractions, run_context, slurm_ids

from conftest import (
    SHIFT,
    band_set_args,
    compose_args,
    error_lines,
    read_array,
    read_bands,
    run_mpi_s2,
    run_mpi_s2_to_death,
    write_band,
)

MASKED = (3, 8, 9, 10)  # --cloud-mask's default classes
SLURM = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "7", "SLURM_ARRAY_JOB_ID": "4240", "SLURM_ARRAY_TASK_ID": "2"}


def when(text: str) -> datetime:
    assert text.endswith("Z") and len(text) == 20, text
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")


def check_context(report: dict, status: str, command: str) -> None:
    assert report["status"] == status
    assert report["version"] == mpi_s2.__version__
    assert when(report["start"]) <= when(report["end"])
    argv = shlex.split(report["command"])  # one shell-quoted string: the command as typed
    assert argv[:4] == [sys.executable, "-m", "mpi_s2", command], report["command"]


# -- unit ------------------------------------------------------------------------------------------------------

def test_slurm_ids_are_null_outside_slurm_and_arrays_named_only_in_one():
    assert slurm_ids({}) == {"job_id": None, "step_id": None}
    assert slurm_ids({"SLURM_JOB_ID": "12", "SLURM_STEP_ID": "batch"}) == {"job_id": 12, "step_id": "batch"}
    assert slurm_ids(SLURM) == {"job_id": 4242, "step_id": 7, "array_job_id": 4240, "array_task_id": 2}


def test_run_context_and_pixel_fractions():
    context = run_context(1_796_186_400.0, ["mpi-s2", "compose", "-o", "my out.tif"], environ={})
    assert context == {"start": "2026-12-02T04:40:00Z", "end": None, "version": mpi_s2.__version__,
                       "command": "mpi-s2 compose -o 'my out.tif'", "slurm": {"job_id": None, "step_id": None}}
    ranks = [{"valid_pixels": 0, "cloud_masked_pixels": 0}, {"valid_pixels": 50, "cloud_masked_pixels": 20},
             {"valid_pixels": 10, "cloud_masked_pixels": 0}]
    assert pixel_fractions(ranks, 100, "the whole output") == {
        "valid": 0.6, "cloud_masked": 0.2, "nodata": pytest.approx(0.2), "pixels": 100, "over": "the whole output"}
    assert pixel_fractions(ranks, 0, "nothing") is None


def test_epsg_code_of_the_scene_and_of_nothing(scene):
    assert epsg_code(gdal.Open(scene["red"]).GetProjection()) == 32632
    assert epsg_code("") is None


# -- ok ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend,env", [("writer", SLURM), ("hdf5", {})], ids=["writer-slurm", "hdf5"])
def test_report_of_a_run_that_ends_ok(scene, valid, tmp_path, backend, env):
    out, report_path = tmp_path / "rgb.tif", tmp_path / "run.json"
    result = run_mpi_s2(compose_args(scene, out, "--report", str(report_path), "--backend", backend,
                                     "--keep-h5"), ranks=3, env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    check_context(report, "ok", "compose")
    assert report["error"] is None and report["signal"] is None
    assert str(out) in report["command"] and backend in shlex.split(report["command"])
    expected_slurm = ({"job_id": 4242, "step_id": 7, "array_job_id": 4240, "array_task_id": 2} if env
                      else {"job_id": None, "step_id": None})
    assert report["slurm"] == expected_slurm
    assert report["crs_epsg"] == 32632 and report["backend"] == backend
    fractions = report["pixel_fractions"]
    assert fractions["over"] == "the whole output" and fractions["pixels"] == valid.size
    assert fractions["valid"] == valid.sum() / valid.size
    assert fractions["cloud_masked"] == 0
    assert fractions["nodata"] == pytest.approx((~valid).sum() / valid.size, abs=1e-12)
    assert fractions["valid"] + fractions["cloud_masked"] + fractions["nodata"] == pytest.approx(1, abs=1e-12)
    assert sum(r["valid_pixels"] for r in report["ranks"]) == valid.sum()
    assert report["ranks"] and report["output_stage"] is not None  # the per-rank accounting as before
    if backend != "hdf5":
        return
    # mpi-s2 convert: the same context, its own command, and its progress file
    converted, convert_report, progress_file = tmp_path / "cog.tif", tmp_path / "convert.json", tmp_path / "p.jsonl"
    result = run_mpi_s2(["convert", str(out.with_suffix(".h5")), "-o", str(converted), "--cog", "-q", "--report",
                         str(convert_report), "--progress-file", str(progress_file)], ranks=2)
    assert result.returncode == 0, result.stderr
    report = json.loads(convert_report.read_text())
    check_context(report, "ok", "convert")
    assert report["crs_epsg"] == 32632 and report["progress"] == {"windows": {"done": 4, "total": 4}}
    assert [json.loads(line)["done"] for line in progress_file.read_text().splitlines()][-1] == 4


def scl_file(path: Path, shape: tuple[int, int], seed: int, origin: tuple[float, float]) -> tuple[str, np.ndarray]:
    """A 20 m scene classification of a 10 m band set of ``shape`` (rows, cols): its path and its classes."""
    rng = np.random.default_rng(seed)
    classes = rng.choice(np.array([0, 3, 4, 5, 6, 8, 9, 10], dtype=np.uint8), size=(shape[0] // 2, shape[1] // 2),
                         p=[0.05, 0.05, 0.3, 0.2, 0.1, 0.1, 0.1, 0.1])
    return write_band(path, classes, geotransform=(origin[0], 20.0, 0.0, origin[1], 0.0, -20.0),
                      data_type=gdal.GDT_Byte), classes


@pytest.mark.parametrize("sets", [1, 2], ids=["one-band-set", "mosaic"])
def test_cloud_masked_fraction_from_the_scene_classes(misaligned, tmp_path, sets):
    """Band sets with their SCL (20 m, staged), windows of 256: one band set (each window read from one input,
    the fast path), or the mosaic of two (each window from two)."""
    data = (np.stack(read_bands(misaligned[0])) != 0).all(axis=0)  # the shifted copy has the same pixels
    rows, cols = data.shape
    ox, oy = gdal.Open(misaligned[0]["red"]).GetGeoTransform()[::3]
    size = (rows + SHIFT * (sets - 1), cols + SHIFT * (sets - 1))
    band_sets, valid, has_data = [], np.zeros(size, dtype=bool), np.zeros(size, dtype=bool)
    for k, bands in enumerate(misaligned[:sets]):
        shift = k * SHIFT
        path, classes = scl_file(tmp_path / f"scl{k}.tif", data.shape, seed=k,
                                 origin=(ox + 10.0 * shift, oy - 10.0 * shift))
        band_sets.append({**bands, "scl": path})
        masked = np.isin(classes.repeat(2, axis=0).repeat(2, axis=1), MASKED)  # each 10 m pixel in its 20 m one
        region = (slice(shift, shift + rows), slice(shift, shift + cols))
        valid[region] |= data & ~masked
        has_data[region] |= data
    cloud_masked = has_data & ~valid
    assert cloud_masked.any() and valid.any() and (~has_data).any()

    out, report_path = tmp_path / "rgb.tif", tmp_path / "run.json"
    result = run_mpi_s2(["compose", *band_set_args(band_sets), "-o", str(out), "-q", "--window", "256",
                         "--report", str(report_path)], ranks=3)
    assert result.returncode == 0, result.stderr
    assert (read_array(out)[3] == np.where(valid, 255, 0)).all()  # the expectation is the output's own
    report = json.loads(report_path.read_text())
    assert report["stage_units"] > 0 and report["cloud_mask_classes"] == list(MASKED)
    fractions = report["pixel_fractions"]
    assert fractions["pixels"] == valid.size
    assert fractions["valid"] == valid.sum() / valid.size
    assert fractions["cloud_masked"] == cloud_masked.sum() / valid.size
    assert fractions["nodata"] == pytest.approx((~has_data).sum() / valid.size, abs=1e-12)


def test_resumed_run_counts_only_the_windows_it_computed(scene, tmp_path):
    out, report_path = tmp_path / "rgb.tif", tmp_path / "run.json"
    args = compose_args(scene, out, *TILES_256, "--report", str(report_path))
    killed = run_mpi_s2_to_death(args, ranks=3, env={"MPI_S2_TEST_FAULT": "0:8:fail", "MPI_S2_COMMIT_INTERVAL": "0"})
    assert killed.returncode != 0
    resumed = run_mpi_s2(args + ["--resume"], ranks=3)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(report_path.read_text())
    assert report["status"] == "ok" and 0 < report["windows_reused"] < report["windows"]
    fractions = report["pixel_fractions"]
    assert fractions["over"].startswith(f"the {report['windows_computed']} windows computed in this run")
    assert fractions["pixels"] == sum(r["pixels"] for r in report["ranks"]) < 1300 * 1100
    assert fractions["valid"] + fractions["cloud_masked"] + fractions["nodata"] == pytest.approx(1, abs=1e-12)


# -- failed, stopped ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["0:3:fail", "1:2:fail"], ids=["writer-fails", "worker-fails"])
def test_failed_run_writes_its_report_with_the_error_line(scene, tmp_path, fault):
    out, report_path, progress_file = tmp_path / "rgb.tif", tmp_path / "run.json", tmp_path / "p.jsonl"
    result = run_mpi_s2_to_death(
        compose_args(scene, out, *TILES_256, "--report", str(report_path), "--progress-file", str(progress_file)),
        ranks=3, env={"MPI_S2_TEST_FAULT": fault, "MPI_S2_COMMIT_INTERVAL": "0"}, timeout=90)
    assert result.returncode != 0
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr
    report = json.loads(report_path.read_text())
    check_context(report, "failed", "compose")
    assert report["error"] == errors[0]  # the line the user saw, the failing worker's included
    assert report["signal"] == (None if fault.startswith("0:") else "SIGTERM")  # rank 0 ended by the launcher
    assert report["crs_epsg"] == 32632 and report["windows"] == 30 and "ranks" not in report
    windows = report["progress"]["windows"]
    assert windows["total"] == 30 and windows["done"] < 30
    last = [json.loads(line) for line in progress_file.read_text().splitlines()][-1]
    assert last["done"] == windows["done"]  # the progress file ends with the last count
    assert not (tmp_path / ".run.json.error").exists()  # the worker's note was taken


def test_stopped_run_writes_its_report_with_the_signal(scene, tmp_path):
    out, report_path = tmp_path / "rgb.tif", tmp_path / "run.json"
    job = Job(compose_args(scene, out, *TILES_256, "--report", str(report_path), "--backend", "hdf5"), 3,
              stall(1, 1))
    job.wait_for("stalls after 1 windows")
    job.proc.send_signal(signal.SIGTERM)
    code, _ = job.finish()
    assert code != 0
    report = json.loads(report_path.read_text())
    check_context(report, "stopped", "compose")
    assert report["signal"] == "SIGTERM"
    assert report["error"].startswith("mpi_s2: stopped (rank 0): SIGTERM: the job was stopped from outside")
    assert report["backend"] == "hdf5" and report["crs_epsg"] == 32632
    assert report["progress"]["composing"]["total"] == 30 and report["progress"]["composing"]["done"] < 30


@pytest.mark.parametrize("option", ["--report", "--progress-file"])
def test_report_and_progress_file_in_a_missing_directory_are_one_line_before_anything(scene, tmp_path, option):
    out, missing = tmp_path / "rgb.tif", tmp_path / "no" / "such" / "file.json"
    result = run_mpi_s2(compose_args(scene, out, option, str(missing)))
    assert result.returncode == 2
    line = f"mpi_s2: error: {missing}: {option}: directory {missing.parent} does not exist"
    assert result.stderr.splitlines() == [line]
    assert sorted(p.name for p in tmp_path.iterdir()) == []
