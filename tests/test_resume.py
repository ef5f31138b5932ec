"""--resume: a run killed or failed part-way is finished later, computing only the windows not durably written."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from osgeo import gdal

from conftest import assert_exit, compose_args, error_lines, run_mpi_s2, run_mpi_s2_to_death

TILES_256 = ["--window", "256", "--co", "BLOCKXSIZE=256", "--co", "BLOCKYSIZE=256"]  # 30 windows of 1300 x 1100
WINDOWS = 30
EVERY_WINDOW = {"MPI_S2_COMMIT_INTERVAL": "0"}  # journal each window at once: what is reused is predictable


@pytest.fixture(scope="module")
def uninterrupted(scene, tmp_path_factory):
    out = {}
    for name, extra in (("plain", []), ("cog", ["--cog"])):
        path = tmp_path_factory.mktemp("whole") / f"{name}.tif"
        result = run_mpi_s2(compose_args(scene, path, *TILES_256, *extra), ranks=3)
        assert result.returncode == 0, result.stderr
        out[name] = path
    return out


def same_image(a, b) -> bool:
    """Pixels, georeferencing, GDAL metadata (dataset and bands), colour interpretation and nodata are equal."""
    da, db = gdal.Open(str(a)), gdal.Open(str(b))
    bands = [(da.GetRasterBand(i), db.GetRasterBand(i)) for i in range(1, min(da.RasterCount, db.RasterCount) + 1)]
    return (np.array_equal(da.ReadAsArray(), db.ReadAsArray()) and da.GetGeoTransform() == db.GetGeoTransform()
            and da.RasterCount == db.RasterCount
            and da.GetProjection() == db.GetProjection() and da.GetMetadata() == db.GetMetadata()
            and all(x.GetColorInterpretation() == y.GetColorInterpretation() and x.GetNoDataValue()
                    == y.GetNoDataValue() and x.GetMetadata() == y.GetMetadata() for x, y in bands))


def listing(directory) -> list[str]:
    """Everything in the directory (hidden files included): what a run left."""
    return sorted(p.name for p in directory.iterdir())


KEPT = [".rgb.tif.partial", ".rgb.tif.partial.journal", ".rgb.tif.partial.kept"]
NOTE = "the partial run is kept beside"


@pytest.mark.parametrize("ranks,fault,extra,code,left", [
    # SIGKILL of a worker: mpirun 128 + 9; rank 0, ended by mpirun's SIGTERM, writes its report
    (3, "1:4:kill", [], 137, [*KEPT, "run.json"]),
    # SIGKILL of the writer: no report; the first worker keeps the run and says so
    (3, "0:6:kill", [], 137, KEPT),
    # an exception on the writer: its own error line, MPI_Abort(1)
    (2, "0:5:fail", [], 1, [*KEPT, "run.json"]),
    # a one-rank job killed: nobody left to write the report, the note or the .kept marker
    (1, "0:7:kill", [], 137, [".rgb.tif.partial", ".rgb.tif.partial.journal"]),
    # a COG: overview shares are kept with the tiles
    (3, "2:3:kill", ["--cog"], 137, [".rgb.tif.partial.journal", ".rgb.tif.partial.kept", ".rgb.tif.partial.levels",
                                     ".rgb.tif.partial.tiles", "run.json"]),
], ids=["kill-worker", "kill-writer", "fail-writer", "kill-one-rank", "kill-cog"])
def test_resume_finishes_a_killed_run_with_only_the_missing_windows(scene, uninterrupted, tmp_path, ranks, fault,
                                                                      extra, code, left):
    out, report = tmp_path / "rgb.tif", tmp_path / "run.json"
    args = compose_args(scene, out, *TILES_256, *extra, "--report", str(report))
    killed = run_mpi_s2_to_death(args, ranks, env={**EVERY_WINDOW, "MPI_S2_TEST_FAULT": fault})
    assert_exit(killed, code)
    assert listing(tmp_path) == left, killed.stderr  # the partial run is kept for --resume, nothing else
    assert killed.stderr.count(NOTE) == (0 if ranks == 1 else 1), killed.stderr
    lines = error_lines(killed.stderr)
    if fault.endswith("fail"):
        assert len(lines) == 1 and "(rank 0)" in lines[0] and "test fault" in lines[0], killed.stderr
    else:
        assert lines == [], killed.stderr
    if report.exists():
        assert json.loads(report.read_text())["status"] == ("failed" if fault.endswith("fail") else "stopped")

    resumed = run_mpi_s2(args + ["--resume"], ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    run = json.loads(report.read_text())
    assert run["windows_reused"] > 0 and run["windows_computed"] > 0, run
    assert run["windows_reused"] + run["windows_computed"] == WINDOWS
    assert sum(r["windows"] for r in run["ranks"]) == run["windows_computed"]  # only the missing ones composed
    reference = uninterrupted["cog" if extra else "plain"]
    assert same_image(out, reference)
    if extra:  # a COG's layout is row-major: the very same bytes
        assert out.read_bytes() == reference.read_bytes()
    assert listing(tmp_path) == ["rgb.tif", "run.json"]


@pytest.fixture()
def killed_run(scene, tmp_path):
    out = tmp_path / "rgb.tif"
    args = compose_args(scene, out, *TILES_256)
    result = run_mpi_s2_to_death(args, 3, env={**EVERY_WINDOW, "MPI_S2_TEST_FAULT": "0:5:kill"})
    assert_exit(result, 137)
    assert listing(tmp_path) == KEPT and result.stderr.count(NOTE) == 1, result.stderr
    state = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    return args, out, state


def test_resume_with_other_parameters_is_refused_and_touches_nothing(killed_run, tmp_path):
    args, out, state = killed_run
    result = run_mpi_s2(args + ["--resume", "--gamma", "2.0"], ranks=2)
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and str(out) in lines[0] and "options.gamma: was 2.2, now 2.0" in lines[0], result.stderr
    assert {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.iterdir()} == state


def test_resume_with_a_changed_input_is_refused(killed_run, scene, tmp_path):
    args, out, state = killed_run
    os.utime(scene["green"], ns=(os.stat(scene["green"]).st_atime_ns, os.stat(scene["green"]).st_mtime_ns + 10**9))
    try:
        result = run_mpi_s2(args + ["--resume"], ranks=2)
    finally:
        os.utime(scene["green"], ns=(os.stat(scene["green"]).st_atime_ns,
                                     os.stat(scene["green"]).st_mtime_ns - 10**9))
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and f"input {os.path.abspath(scene['green'])} changed" in lines[0], result.stderr
    assert {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.iterdir()} == state


def test_a_run_without_resume_starts_over_and_cleans_up(killed_run, uninterrupted, tmp_path):
    args, out, _ = killed_run
    result = run_mpi_s2(args, ranks=2)
    assert result.returncode == 0, result.stderr
    assert same_image(out, uninterrupted["plain"]) and listing(tmp_path) == ["rgb.tif"]


def test_resume_without_a_partial_run_is_a_clear_error(scene, tmp_path):
    out = tmp_path / "rgb.tif"
    result = run_mpi_s2(compose_args(scene, out, "--resume"), ranks=2)
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and str(out) in lines[0] and "no partial run to resume" in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []


def test_resume_needs_worker_encoded_tiles(scene, tmp_path):
    result = run_mpi_s2(compose_args(scene, tmp_path / "rgb.tif", "--window", "300", "--resume"), ranks=2)
    assert result.returncode == 2
    assert "--resume needs tiles encoded by the workers" in error_lines(result.stderr)[0]
