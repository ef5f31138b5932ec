"""The ``series`` case of ``make bench`` (mpi_s2.tools.benchmark): its pixel comparison, its staging sampler and its
xarray + dask peer script. Cheap: no MPI, no xarray (the peer only runs in ``make bench``)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from osgeo import gdal

from mpi_s2.tools import benchmark
from mpi_s2.tools.benchmark import PEER_SCRIPT, StagingSampler, compare_rgba, decode_cpu_seconds

gdal.UseExceptions()


def _rgba(path: str, pixels: np.ndarray, geotransform=(399960.0, 10.0, 0.0, 5300040.0, 0.0, -10.0)) -> str:
    bands, height, width = pixels.shape
    ds = gdal.GetDriverByName("GTiff").Create(path, width, height, bands, gdal.GDT_Byte)
    ds.SetGeoTransform(geotransform)
    for b in range(bands):
        ds.GetRasterBand(b + 1).WriteArray(pixels[b])
    ds = None
    return path


@pytest.fixture
def image() -> np.ndarray:
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (4, 37, 41), dtype=np.uint8)
    pixels[3] = 255
    pixels[3, :5, :7] = 0  # no value there
    pixels[:3, :5, :7] = 0
    return pixels


def test_identical_outputs_agree(tmp_path, image):
    a = _rgba(str(tmp_path / "a.tif"), image)
    b = _rgba(str(tmp_path / "b.tif"), image.copy())
    result = compare_rgba(a, b, strip=8)  # strips that do not divide the height
    assert result["identical"] and result["comparable"]
    assert result["pixels"] == 37 * 41
    assert result["valid_reference"] == result["valid_other"] == result["valid_both"] == 37 * 41 - 35
    assert (result["alpha_differ"], result["rgb_differ"], result["rgb_max_abs_diff"]) == (0, 0, 0)


def test_differences_are_counted_where_both_have_a_value(tmp_path, image):
    other = image.copy()
    other[0, 20, 20] += 1 if other[0, 20, 20] < 255 else -1  # off by one
    other[2, 30, 3] = (int(other[2, 30, 3]) + 100) % 256  # off by 100 (or 156)
    other[1, 2, 2] = 77  # under alpha 0 in both: not a difference
    other[3, 10, 10] = 0  # alpha differs: counted there, not as R/G/B
    result = compare_rgba(_rgba(str(tmp_path / "a.tif"), image), _rgba(str(tmp_path / "b.tif"), other), strip=16)
    assert not result["identical"]
    assert result["alpha_differ"] == 1
    assert result["valid_both"] == result["valid_reference"] - 1
    assert result["rgb_differ"] == 2 and result["rgb_off_by_one"] == 1
    assert result["rgb_max_abs_diff"] == abs(int(other[2, 30, 3]) - int(image[2, 30, 3]))


def test_different_grids_are_not_compared(tmp_path, image):
    a = _rgba(str(tmp_path / "a.tif"), image)
    b = _rgba(str(tmp_path / "b.tif"), image[:, :-1])
    c = _rgba(str(tmp_path / "c.tif"), image, geotransform=(0.0, 10.0, 0.0, 0.0, 0.0, -10.0))
    for other in (b, c):
        result = compare_rgba(a, other)
        assert not result["comparable"] and not result["identical"]


def test_staging_sampler_sees_the_staging_directory_beside_the_output(tmp_path):
    output = str(tmp_path / "out.tif")
    sampler = StagingSampler(output)
    os.makedirs(sampler.places["disk"])
    with open(os.path.join(sampler.places["disk"], "source0-scl.raw"), "wb") as fh:
        fh.write(b"\1" * (1 << 20))
    sampler._sample()
    assert sampler.peak["disk"] >= 1 << 20


def test_decode_floor_reads_each_file_by_its_own_blocks(tmp_path, image):
    path = _rgba(str(tmp_path / "a.tif"), image)
    assert decode_cpu_seconds([path], block=None) >= 0.0


def test_the_peer_script_compiles_and_series_is_a_default_case():
    compile(PEER_SCRIPT, "dask_peer.py", "exec")
    assert "series" in benchmark.DEFAULT_CASES
