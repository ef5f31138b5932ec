"""--backend hdf5: collective parallel-HDF5 output, converted to the same GeoTIFF/COG; resume; mpi-s2 convert."""

from __future__ import annotations

import json

import numpy as np
import pytest
from osgeo import gdal, osr

from conftest import assert_exit, compose_args, error_lines, run_mpi_s2, run_mpi_s2_to_death

TILES_256 = ["--window", "256", "--co", "BLOCKXSIZE=256", "--co", "BLOCKYSIZE=256"]
EVERY_ROUND = {"MPI_S2_COMMIT_INTERVAL": "0"}  # flush and mark written after each round: what is reused is known


def same_image(a, b) -> bool:
    da, db = gdal.Open(str(a)), gdal.Open(str(b))
    return (np.array_equal(da.ReadAsArray(), db.ReadAsArray()) and da.GetGeoTransform() == db.GetGeoTransform()
            and da.GetSpatialRef().IsSame(db.GetSpatialRef()) and da.GetProjection() == db.GetProjection()
            and da.GetMetadata() == db.GetMetadata()
            and [da.GetRasterBand(i + 1).GetColorInterpretation() for i in range(da.RasterCount)]
            == [db.GetRasterBand(i + 1).GetColorInterpretation() for i in range(db.RasterCount)]
            and da.GetRasterBand(1).GetNoDataValue() == db.GetRasterBand(1).GetNoDataValue())


@pytest.fixture(scope="module")
def writer_outputs(scene, tmp_path_factory):
    """The writer backend's files, per option set."""
    cache = {}

    def get(*options: str):
        if options not in cache:
            out = tmp_path_factory.mktemp("writer") / "rgb.tif"
            result = run_mpi_s2(compose_args(scene, out, *options), ranks=3)
            assert result.returncode == 0, result.stderr
            cache[options] = out
        return cache[options]
    return get


@pytest.mark.parametrize("ranks,schedule,options", [
    (1, "dynamic", ()),
    (2, "static", ("--window", "512")),
    (3, "dynamic", tuple(TILES_256)),
    (4, "static", tuple(TILES_256) + ("--no-alpha",)),
    (4, "dynamic", ("--cog",)),
])
def test_hdf5_backend_gives_the_writer_backends_file(scene, writer_outputs, tmp_path, ranks, schedule, options):
    out, report = tmp_path / "rgb.tif", tmp_path / "run.json"
    result = run_mpi_s2(compose_args(scene, out, "--backend", "hdf5", "--schedule", schedule, "--report",
                                     str(report), *options), ranks=ranks)
    assert result.returncode == 0, result.stderr
    reference = writer_outputs(*options)
    assert same_image(out, reference)
    if "--cog" in options:  # a COG is laid out row-major: the very same bytes
        assert out.read_bytes() == reference.read_bytes()
    run = json.loads(report.read_text())
    assert run["backend"] == "hdf5" and run["hdf5"]["write_phase_s"] > 0 and run["hdf5"]["convert_s"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rgb.tif", "run.json"]  # the HDF5 file is removed


def test_the_hdf5_file_holds_everything_to_georeference_and_reproduce(scene, writer_outputs, tmp_path):
    import os

    os.environ.setdefault("H5PY_ALWAYS_USE_MPI", "1")
    import h5py

    out = tmp_path / "rgb.tif"
    result = run_mpi_s2(compose_args(scene, out, "--backend", "hdf5", "--keep-h5"), ranks=3)
    assert result.returncode == 0, result.stderr
    reference = gdal.Open(str(writer_outputs()))
    with h5py.File(tmp_path / "rgb.h5", "r") as f:
        assert np.array_equal(f["rgb"][...], reference.ReadAsArray())
        assert f["window_status"][...].all()
        assert tuple(json.loads(f.attrs["geotransform"])) == reference.GetGeoTransform()
        srs = osr.SpatialReference(wkt=f.attrs["crs_wkt"])
        assert srs.IsSame(reference.GetSpatialRef())
        assert json.loads(f.attrs["gdal_metadata"]) == {k: v for k, v in reference.GetMetadata().items()
                                                        if k.startswith("MPI_S2")}
        assert f.attrs["band_count"] == 4 and "alpha" in f.attrs["nodata_meaning"]
        assert json.loads(f.attrs["inputs"])[0]["files"][0].endswith("B04.tif")
        assert json.loads(f.attrs["fingerprint"])["options"]["gamma"] == 2.2


def test_convert_an_hdf5_file_to_geotiff_and_cog(scene, writer_outputs, tmp_path):
    out = tmp_path / "rgb.tif"
    assert run_mpi_s2(compose_args(scene, out, "--backend", "hdf5", "--keep-h5"), ranks=2).returncode == 0
    for name, extra, reference in (("again.tif", [], writer_outputs()), ("cog.tif", ["--cog"],
                                                                          writer_outputs("--cog"))):
        result = run_mpi_s2(["convert", str(tmp_path / "rgb.h5"), "-o", str(tmp_path / name), "-q", *extra], ranks=3)
        assert result.returncode == 0, result.stderr
        assert same_image(tmp_path / name, reference)


#: What a killed or failed HDF5-backend run leaves: its HDF5 file, the marker of the note, the report.
KEPT_H5 = [".rgb.tif.partial.kept", "rgb.h5", "run.json"]


@pytest.mark.parametrize("fault,code", [("2:3:kill", 137), ("1:2:fail", 1)])  # 128 + SIGKILL; MPI_Abort(1)
def test_hdf5_resume_reuses_the_windows_whose_status_is_written(scene, writer_outputs, tmp_path, fault, code):
    out, report = tmp_path / "rgb.tif", tmp_path / "run.json"
    args = compose_args(scene, out, "--backend", "hdf5", *TILES_256, "--report", str(report))
    killed = run_mpi_s2_to_death(args, 3, env={**EVERY_ROUND, "MPI_S2_TEST_FAULT": fault})
    assert_exit(killed, code)
    assert sorted(p.name for p in tmp_path.iterdir()) == KEPT_H5, killed.stderr
    assert killed.stderr.count("the partial run is kept beside") == 1, killed.stderr
    lines = error_lines(killed.stderr)
    if fault.endswith("fail"):
        assert len(lines) == 1 and "(rank 1)" in lines[0] and "test fault" in lines[0], killed.stderr
    else:
        assert lines == [], killed.stderr
    assert json.loads(report.read_text())["status"] == ("failed" if fault.endswith("fail") else "stopped")

    resumed = run_mpi_s2(args + ["--resume"], ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    run = json.loads(report.read_text())
    assert run["windows_reused"] > 0 and run["windows_computed"] > 0
    assert run["windows_reused"] + run["windows_computed"] == 30
    assert sum(r["windows"] for r in run["ranks"]) == run["windows_computed"]
    assert same_image(out, writer_outputs(*TILES_256))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rgb.tif", "run.json"]


def test_hdf5_resume_refuses_other_parameters_and_a_missing_file(scene, tmp_path):
    out = tmp_path / "rgb.tif"
    args = compose_args(scene, out, "--backend", "hdf5", *TILES_256)
    result = run_mpi_s2(args + ["--resume"], ranks=2)
    assert result.returncode == 2 and "no partial run to resume" in error_lines(result.stderr)[0]
    assert list(tmp_path.iterdir()) == []

    assert_exit(run_mpi_s2_to_death(args, 3, env={**EVERY_ROUND, "MPI_S2_TEST_FAULT": "1:2:kill"}), 137)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".rgb.tif.partial.kept", "rgb.h5"]
    before = (tmp_path / "rgb.h5").read_bytes()
    result = run_mpi_s2(args + ["--resume", "--max-reflectance", "0.5"], ranks=2)
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "options.max_reflectance: was 1.0, now 0.5" in lines[0], result.stderr
    assert (tmp_path / "rgb.h5").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".rgb.tif.partial.kept", "rgb.h5"]


def test_convert_refuses_an_incomplete_file(scene, tmp_path):
    out = tmp_path / "rgb.tif"
    args = compose_args(scene, out, "--backend", "hdf5", *TILES_256)
    assert_exit(run_mpi_s2_to_death(args, 3, env={**EVERY_ROUND, "MPI_S2_TEST_FAULT": "1:2:kill"}), 137)
    result = run_mpi_s2(["convert", str(tmp_path / "rgb.h5"), "-o", str(tmp_path / "x.tif")], ranks=2)
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "incomplete" in lines[0] and "--resume" in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".rgb.tif.partial.kept", "rgb.h5"]  # no x.tif, no scratch


def test_h5py_without_mpi_is_a_clear_error(monkeypatch):
    import os

    os.environ.setdefault("H5PY_ALWAYS_USE_MPI", "1")
    import h5py

    from mpi_s2.errors import OutputError
    from mpi_s2.output.hdf5_store import load_h5py

    class NoMpi:
        mpi = False

    monkeypatch.setattr(h5py, "get_config", lambda: NoMpi())
    with pytest.raises(OutputError, match="no MPI support"):
        load_h5py()
