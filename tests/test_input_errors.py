"""Bad input gives one clear line naming the file, exit code 2, and no file at the output path."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from conftest import PYTHON, clean_env, compose_args, error_lines, require, run_mpi_s2, write_band

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
    if case == "a directory":
        (tmp_path / "B04.tif").mkdir()
        bands["red"] = str(tmp_path / "B04.tif")
        return bands, out, "cannot be read as a raster", bands["red"]
    if case == "truncated GeoTIFF":
        data = open(bands["green"], "rb").read()
        (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
        bands["green"] = str(tmp_path / "cut.tif")
        return bands, out, "failed", bands["green"]
    if case == "truncated JPEG 2000":
        jp2 = tmp_path / "B02.jp2"
        gdal.Translate(str(jp2), bands["blue"], format="JP2OpenJPEG",
                       creationOptions=["REVERSIBLE=YES", "QUALITY=100", "BLOCKXSIZE=128", "BLOCKYSIZE=128"])
        data = jp2.read_bytes()
        jp2.write_bytes(data[: len(data) // 2])
        bands["blue"] = str(jp2)
        return bands, out, "failed", bands["blue"]
    if case == "three bands as one":
        rgb = tmp_path / "rgb.tif"
        gdal.BuildVRT(str(tmp_path / "rgb.vrt"), [bands["red"], bands["green"], bands["blue"]], separate=True)
        gdal.Translate(str(rgb), str(tmp_path / "rgb.vrt"))
        bands["red"] = str(rgb)
        return bands, out, "has 3 bands, expected one", bands["red"]
    if case == "output directory missing":
        out = tmp_path / "missing-dir" / "out.tif"
        return bands, out, "does not exist", str(out)
    if case == "output exists":
        out.write_bytes(b"keep me")
        return bands, out, "--overwrite", str(out)
    raise AssertionError(case)


CASES = ["missing file", "not a raster", "different size", "different crs", "different geotransform",
         "not uint16", "output directory missing", "output exists", "a directory", "truncated GeoTIFF",
         "truncated JPEG 2000", "three bands as one"]


@pytest.mark.parametrize("ranks", [None, 3], ids=["no-launcher", "mpirun-3"])
@pytest.mark.parametrize("case", CASES)
def test_bad_input_one_line_exit_2_no_output(case, ranks, bands, tmp_path):
    bands, out, message, named = make_case(case, bands, tmp_path)
    existed = out.exists()
    before = listing(tmp_path)  # the inputs (and an older output): all a run with bad input may leave
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
    assert listing(tmp_path) == before  # no partial file, journal, .kept marker, .h5, note or staging directory


def listing(directory: Path) -> list[str]:
    """Every file and directory under ``directory``, hidden ones included, as relative paths."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def test_malformed_creation_option(bands, tmp_path):
    result = run_mpi_s2(compose_args(bands, tmp_path / "o.tif", "--co", "COMPRESS"), ranks=2, timeout=60)
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "KEY=VALUE" in lines[0]
    assert listing(tmp_path) == ["blue.tif", "green.tif", "red.tif"]


def test_unknown_creation_option_value_is_reported(bands, tmp_path):
    result = run_mpi_s2(compose_args(bands, tmp_path / "o.tif", "--co", "COMPRESS=NOPE"), ranks=2, timeout=60)
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "o.tif" in lines[0] and "NOPE" in lines[0] and "COMPRESS" in lines[0], result.stderr
    assert listing(tmp_path) == ["blue.tif", "green.tif", "red.tif"]


@pytest.mark.parametrize("option, value, message", [
    ("--window", "0", "--window: must be > 0, got 0"),
    ("--window", "-256", "--window: must be > 0, got -256"),
    ("--gamma", "0", "--gamma must be a finite number > 0, got 0.0"),
    ("--gamma", "-2.2", "--gamma must be a finite number > 0, got -2.2"),
    ("--gamma", "nan", "--gamma must be a finite number > 0, got nan"),
    ("--max-reflectance", "0", "--max-reflectance must be a finite number > 0, got 0.0"),
    ("--max-reflectance", "-1", "--max-reflectance must be a finite number > 0, got -1.0"),
    ("--max-reflectance", "nan", "--max-reflectance must be a finite number > 0, got nan"),
    ("--max-reflectance", "inf", "--max-reflectance must be a finite number > 0, got inf"),
])
def test_nonsensical_option_one_line_exit_2(option, value, message, bands, tmp_path):
    out = tmp_path / "out.tif"
    result = run_mpi_s2(compose_args(bands, out, f"{option}={value}"), timeout=60)
    assert result.returncode == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and message in lines[0], result.stderr
    # all it prints: one line, not argparse's usage (under mpirun, mpirun adds its own note on the exit code)
    assert result.stderr.count("\n") == 1, result.stderr
    assert listing(tmp_path) == ["blue.tif", "green.tif", "red.tif"]


@pytest.fixture
def public_dir():
    """A directory another user can enter (pytest's own are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="mpi_s2-perm-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path)


def test_unreadable_band_file(bands, public_dir):
    """Permissions: as root, the run is made as user nobody (root reads any file)."""
    for name in ("red", "green", "blue"):
        shutil.copy(bands[name], public_dir / f"{name}.tif")
        bands[name] = str(public_dir / f"{name}.tif")
    Path(bands["green"]).chmod(0)
    out = public_dir / "out.tif"
    command = [PYTHON, "-m", "mpi_s2", *compose_args(bands, out)]
    if os.geteuid() == 0:
        command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=clean_env())
    assert result.returncode == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and f"{bands['green']}: permission denied" in lines[0], result.stderr
    assert listing(public_dir) == ["blue.tif", "green.tif", "red.tif"]


@pytest.fixture
def small_disk(tmp_path):
    """A 512 kB tmpfs: the output does not fit (root only: mount)."""
    require(os.geteuid() == 0, "root to mount a 512 kB tmpfs", "run the tests as root (make test)")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.mark.parametrize("extra", [[], ["--cog"], ["--backend", "hdf5"], ["--co", "COMPRESS=JPEG", "--no-alpha"]],
                         ids=["writer", "cog", "hdf5", "gdal-writer"])
@pytest.mark.parametrize("ranks", [None, 2], ids=["no-launcher", "mpirun-2"])
def test_full_disk_one_line_exit_2_nothing_left(scene, small_disk, ranks, extra):
    out = small_disk / "rgb.tif"
    result = run_mpi_s2(compose_args(scene, out, "--co", "COMPRESS=NONE", *extra), ranks=ranks, timeout=90)
    assert result.returncode == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert (f"{small_disk}: no space left on device while writing {out}" in lines[0]
            or f"{out}: cannot create the output: No space left on device" in lines[0]), lines[0]
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    assert listing(small_disk) == []


def test_convert_to_a_full_disk_one_line_nothing_left(scene, small_disk, tmp_path):
    composed = tmp_path / "rgb.tif"
    kept = run_mpi_s2(compose_args(scene, composed, "--backend", "hdf5", "--keep-h5"), ranks=2, timeout=90)
    assert kept.returncode == 0, kept.stderr
    out = small_disk / "rgb.tif"
    result = run_mpi_s2(["convert", str(tmp_path / "rgb.h5"), "-o", str(out), "--co", "COMPRESS=NONE", "-q"],
                        ranks=2, timeout=90)
    assert result.returncode == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and f"{small_disk}: no space left on device while writing {out}" in lines[0], lines
    assert listing(small_disk) == []
    assert listing(tmp_path) == ["rgb.h5", "rgb.tif", "small"]  # beside the HDF5 file converted: nothing new
