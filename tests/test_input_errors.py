"""Bad input gives one clear line naming the file, exit code 2, and no file at the output path."""

from __future__ import annotations

import numpy as np
import pytest
from osgeo import gdal

from conftest import compose_args, error_lines, run_mpi_s2, write_band

SHAPE = (300, 400)


@pytest.fixture
def bands(tmp_path):
    rng = np.random.default_rng(1)
    return {name: write_band(tmp_path / f"{name}.tif", rng.integers(1, 9000, SHAPE, dtype=np.uint16))
            for name in ("red", "green", "blue")}


def make_case(case: str, bands: dict[str, str], tmp_path):
    """Break one thing; return (bands, output path, text the error must contain, path it must name)."""
    out = tmp_path / "out.tif"
    arr = np.ones(SHAPE, dtype=np.uint16)
    if case == "missing file":
        bands["green"] = str(tmp_path / "nope.tif")
        return bands, out, "no such file", bands["green"]
    if case == "not a raster":
        (tmp_path / "junk.tif").write_text("not a tiff")
        bands["blue"] = str(tmp_path / "junk.tif")
        return bands, out, "cannot be read as a raster", bands["blue"]
    if case == "different size":
        bands["green"] = write_band(tmp_path / "small.tif", np.ones((300, 399), dtype=np.uint16))
        return bands, out, "399 x 300", bands["green"]
    if case == "different crs":
        bands["blue"] = write_band(tmp_path / "crs.tif", arr, epsg=32633)
        return bands, out, "different CRS", bands["blue"]
    if case == "different geotransform":
        bands["blue"] = write_band(tmp_path / "gt.tif", arr, geotransform=(399970.0, 10.0, 0, 5300040.0, 0, -10.0))
        return bands, out, "geotransform", bands["blue"]
    if case == "not uint16":
        bands["red"] = write_band(tmp_path / "f32.tif", arr.astype(np.float32), data_type=gdal.GDT_Float32)
        return bands, out, "expected UInt16", bands["red"]
    if case == "output directory missing":
        out = tmp_path / "missing-dir" / "out.tif"
        return bands, out, "does not exist", str(out)
    if case == "output exists":
        out.write_bytes(b"keep me")
        return bands, out, "--overwrite", str(out)
    raise AssertionError(case)


CASES = ["missing file", "not a raster", "different size", "different crs", "different geotransform",
         "not uint16", "output directory missing", "output exists"]


@pytest.mark.parametrize("ranks", [None, 3], ids=["no-launcher", "mpirun-3"])
@pytest.mark.parametrize("case", CASES)
def test_bad_input_one_line_exit_2_no_output(case, ranks, bands, tmp_path):
    bands, out, message, named = make_case(case, bands, tmp_path)
    existed = out.exists()
    result = run_mpi_s2(compose_args(bands, out), ranks=ranks, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert message in lines[0] and named in lines[0]
    assert "Traceback" not in result.stderr
    if existed:
        assert out.read_bytes() == b"keep me"
    else:
        assert not out.exists()
    assert not list(out.parent.glob(".*.partial")) if out.parent.exists() else True


def test_malformed_creation_option(bands, tmp_path):
    result = run_mpi_s2(compose_args(bands, tmp_path / "o.tif", "--co", "COMPRESS"), ranks=2, timeout=60)
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "KEY=VALUE" in lines[0]
    assert not (tmp_path / "o.tif").exists()


def test_unknown_creation_option_value_is_reported(bands, tmp_path):
    result = run_mpi_s2(compose_args(bands, tmp_path / "o.tif", "--co", "COMPRESS=NOPE"), ranks=2, timeout=60)
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "o.tif" in lines[0] and "NOPE" in lines[0] and "COMPRESS" in lines[0], result.stderr
    assert not (tmp_path / "o.tif").exists()
