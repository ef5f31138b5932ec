"""Odd sizes: more ranks than windows, rasters of 1 x 1, 1 x 100000 and 100000 x 1 pixels; and (``make test-slow``,
not CI) one real output past 4 GB, which must be a BigTIFF GDAL reads back.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
from osgeo import gdal

from conftest import compose_args, gdal_translate_reference, read_array, require, run_mpi_s2, write_band


def band_set(directory, shape, seed=3) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    bands = {}
    for name in ("red", "green", "blue"):
        data = rng.integers(1, 12000, shape, dtype=np.uint16)
        data.flat[::7] = 0  # some nodata
        bands[name] = write_band(directory / f"{name}.tif", data, block=256)
    return bands


@pytest.mark.parametrize("shape", [(1, 1), (100000, 1), (1, 100000), (300, 200)],
                         ids=["1x1", "1-wide-100000-high", "100000-wide-1-high", "one-window"])
@pytest.mark.parametrize("extra", [[], ["--cog"], ["--backend", "hdf5"]], ids=["writer", "cog", "hdf5"])
def test_tiny_and_thin_rasters_and_more_ranks_than_windows(tmp_path, shape, extra):
    bands = band_set(tmp_path, shape)
    reference = gdal_translate_reference(bands, tmp_path / "ref.tif")
    out = tmp_path / "rgb.tif"
    result = run_mpi_s2(compose_args(bands, out, *extra, "--report", str(tmp_path / "run.json")), ranks=4,
                        timeout=180)
    assert result.returncode == 0, result.stderr
    rgba = read_array(out).reshape(4, *shape)
    valid = rgba[3] == 255
    assert (rgba[:3][:, valid] == reference.reshape(3, *shape)[:, valid]).all()
    assert (rgba[:3][:, ~valid] == 0).all()
    bands_in = [read_array(bands[b]).reshape(shape) for b in ("red", "green", "blue")]
    assert (valid == ((bands_in[0] != 0) & (bands_in[1] != 0) & (bands_in[2] != 0))).all()
    assert gdal.Open(str(out)).GetGeoTransform() == gdal.Open(bands["red"]).GetGeoTransform()
    if shape == (300, 200):
        assert '"windows": 1,' in (tmp_path / "run.json").read_text()  # 3 workers, 1 window


@pytest.mark.slow
def test_real_output_past_4_gb_is_a_bigtiff_gdal_reads(tmp_path_factory):
    """33000 x 33000 RGBA, uncompressed: 4.36 GB. Inputs are constant tiles (a few kB each on disk)."""
    directory = tmp_path_factory.mktemp("big")
    free = shutil.disk_usage(directory).free
    require(free >= 6e9, f"6 GB free in {directory} (it has {free / 1e9:.1f} GB)",
            "free disk space, or point pytest's --basetemp at a larger disk")
    size = 33000
    bands = {}
    for name, value in (("red", 1200), ("green", 900), ("blue", 600)):
        path = directory / f"{name}.tif"
        subprocess.run(["gdal_create", "-of", "GTiff", "-outsize", str(size), str(size), "-bands", "1",
                        "-ot", "UInt16", "-burn", str(value), "-a_srs", "EPSG:32632",
                        "-a_ullr", "399960", "5300040", str(399960 + 10 * size), str(5300040 - 10 * size),
                        "-co", "TILED=YES", "-co", "BLOCKXSIZE=1024", "-co", "BLOCKYSIZE=1024",
                        "-co", "COMPRESS=DEFLATE", str(path)], check=True)
        bands[name] = str(path)
    out = directory / "big.tif"
    result = run_mpi_s2(compose_args(bands, out, "--co", "COMPRESS=NONE"), ranks=3, timeout=3600)
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 4 * 2**30
    with open(out, "rb") as fh:
        assert fh.read(4) == b"II+\x00"  # BigTIFF
    ds = gdal.Open(str(out))
    assert (ds.RasterXSize, ds.RasterYSize, ds.RasterCount) == (size, size, 4)
    expected = [round(255 * (v / 10000) ** (1 / 2.2)) for v in (1200, 900, 600)] + [255]
    for col, row in ((0, 0), (size - 7, size - 5), (size // 2, size // 3)):
        assert [int(ds.GetRasterBand(b).ReadAsArray(col, row, 1, 1)[0, 0]) for b in (1, 2, 3, 4)] == expected
    ds = None
    os.unlink(out)
