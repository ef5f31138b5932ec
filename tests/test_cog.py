"""--cog: a valid Cloud-Optimized GeoTIFF whose overviews are exact valid-pixel averages, on any rank count."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from osgeo import gdal

from mpi_s2.errors import OutputError
from mpi_s2.output.overviews import check_window_size, level_count, level_window, reduce_window, worker_levels
from mpi_s2.windows import Window

from conftest import PYTHON, compose_args, error_lines, gdal_translate_reference, read_bands, run_mpi_s2, write_band


def valid_average_reference(full: np.ndarray, level: int) -> np.ndarray:
    """Level ``level`` of ``full`` ((bands, rows, cols) uint8, alpha last or 0 = nodata), computed directly from
    the full resolution in floating point: the mean of each 2**level cell's valid pixels, rounded half up."""
    bands, rows, cols = full.shape
    valid = full[3] > 0 if bands == 4 else (full[:3] > 0).any(axis=0)
    f = 1 << level
    out_r, out_c = -(-rows // f), -(-cols // f)

    def cell_sums(a: np.ndarray) -> np.ndarray:
        padded = np.zeros((out_r * f, out_c * f))
        padded[:rows, :cols] = a
        return padded.reshape(out_r, f, out_c, f).sum(axis=(1, 3))

    counts = cell_sums(valid)
    ref = np.zeros((bands, out_r, out_c), dtype=np.uint8)
    for b in range(3):
        ref[b] = np.where(counts > 0, np.floor(cell_sums(full[b] * valid) / np.maximum(counts, 1) + 0.5), 0)
    if bands == 4:
        ref[3] = np.where(counts > 0, 255, 0)
    return ref


@pytest.fixture(scope="module")
def edge_scene(scene, tmp_path_factory):
    """The test scene with a wide nodata area behind a ragged diagonal edge (an orbit edge, 35 % nodata)."""
    out = tmp_path_factory.mktemp("edge")
    rows, cols = np.mgrid[0:1100, 0:1300]
    edge = (cols < 0.25 * 1300 + 0.3 * rows + 40 * np.sin(rows / 17.0))
    paths = {}
    for name, band in zip(("red", "green", "blue"), read_bands(scene), strict=True):
        paths[name] = write_band(out / f"{name}.tif", np.where(edge, 0, band).astype(np.uint16))
    return paths


@pytest.fixture(scope="module")
def edge_expected(edge_scene, tmp_path_factory):
    """The full resolution as the README defines it, independently: gdal_translate's stretch of ``edge_scene``,
    nodata (0, alpha 0) where any input DN is 0; (RGBA, RGB without alpha: valid pixels at least 1)."""
    rgb = gdal_translate_reference(edge_scene, tmp_path_factory.mktemp("edge_ref") / "ref.tif")
    valid = (np.stack(read_bands(edge_scene)) != 0).all(axis=0)
    assert 0.5 < valid.mean() < 0.7  # the ragged edge really is there
    rgba = np.concatenate([np.where(valid, rgb, 0), np.where(valid, 255, 0)[None]]).astype(np.uint8)
    no_alpha = np.where(valid, np.maximum(rgb, 1), 0).astype(np.uint8)
    return rgba, no_alpha


def expected_levels(width: int, height: int, tile: int) -> int:
    """README: overviews "until the image fits one tile": halve (rounding up) while a side exceeds the tile."""
    levels = 0
    while max(width, height) > tile:
        width, height, levels = -(-width // 2), -(-height // 2), levels + 1
    return levels


def validate_cog(path) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "osgeo_utils.samples.validate_cloud_optimized_geotiff", str(path)],
                          capture_output=True, text=True)


CASES = [  # ranks, codec, alpha, tile, schedule
    (1, "ZSTD", True, 512, "dynamic"),
    (2, "DEFLATE", False, 256, "dynamic"),
    (3, "LZW", True, 256, "static"),
    (4, "NONE", True, 512, "dynamic"),
]


@pytest.mark.parametrize("ranks,codec,alpha,tile,schedule", CASES)
def test_cog_is_valid_and_its_overviews_are_valid_pixel_averages(edge_scene, edge_expected, tmp_path, ranks, codec,
                                                                 alpha, tile, schedule):
    options = ["--co", f"COMPRESS={codec}", "--co", f"BLOCKXSIZE={tile}", "--co", f"BLOCKYSIZE={tile}",
               "--schedule", schedule] + ([] if alpha else ["--no-alpha"])
    out, report = tmp_path / "rgb.tif", tmp_path / "run.json"
    result = run_mpi_s2(compose_args(edge_scene, out, "--cog", "--report", str(report), *options), ranks=ranks)
    assert result.returncode == 0, result.stderr

    check = validate_cog(out)
    assert check.returncode == 0 and "is a valid cloud optimized GeoTIFF" in check.stdout, check.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rgb.tif", "run.json"]  # no scratch left

    full = edge_expected[0] if alpha else edge_expected[1]
    ds = gdal.Open(str(out))
    assert np.array_equal(ds.ReadAsArray(), full)  # full resolution: gdal_translate's pixels
    assert ds.GetGeoTransform() == gdal.Open(edge_scene["red"]).GetGeoTransform()
    assert ds.GetMetadataItem("COMPRESSION", "IMAGE_STRUCTURE") == (None if codec == "NONE" else codec)
    levels = expected_levels(1300, 1100, tile)
    assert levels == {512: 2, 256: 3}[tile]
    sizes = []
    for level in range(1, levels + 1):
        got = np.stack([ds.GetRasterBand(b + 1).GetOverview(level - 1).ReadAsArray() for b in range(ds.RasterCount)])
        assert np.array_equal(got, valid_average_reference(full, level)), f"overview level {level}"
        sizes.append(got.shape[1:])
        assert ds.GetRasterBand(1).GetOverview(level - 1).GetBlockSize() == [tile, tile]
    assert ds.GetRasterBand(1).GetOverviewCount() == levels and max(sizes[-1]) <= tile < max(sizes[-2] if
                                                                                               levels > 1 else
                                                                                               (1100, 1300))
    assert json.loads(report.read_text())["cog"]["overview_levels"] == levels


def test_cog_bytes_do_not_depend_on_ranks_or_schedule(edge_scene, tmp_path):
    outputs = []
    for ranks, schedule in ((1, "dynamic"), (3, "static"), (4, "dynamic")):
        out = tmp_path / f"rgb{ranks}.tif"
        result = run_mpi_s2(compose_args(edge_scene, out, "--cog", "--schedule", schedule, "--co", "BLOCKXSIZE=256",
                                         "--co", "BLOCKYSIZE=256"), ranks=ranks)
        assert result.returncode == 0, result.stderr
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]


@pytest.mark.parametrize("extra,message", [
    (["--co", "TILED=NO"], "--cog needs a tiled output"),
    (["--co", "COMPRESS=JPEG"], "--cog: COMPRESS=JPEG is encoded by the writer"),
    (["--window", "300"], "--cog: windows of 300 x 300 are not whole 512 x 512 tiles"),
])
def test_cog_refuses_what_it_cannot_write(scene, tmp_path, extra, message):
    out = tmp_path / "rgb.tif"
    result = run_mpi_s2(compose_args(scene, out, "--cog", *extra), ranks=2)
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and message in lines[0] and str(out) in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []


def test_window_reduction_equals_the_direct_average():
    rng = np.random.default_rng(7)
    for bands in (3, 4):
        block = rng.integers(1, 256, size=(bands, 77, 130), dtype=np.uint8)
        invalid = rng.random((77, 130)) < 0.4
        invalid[:20, :40] = True  # whole cells without data
        if bands == 4:
            block[3] = np.where(invalid, 0, 255)
        block[:3, invalid] = 0
        for level, got in enumerate(reduce_window(block, 4), start=1):
            assert np.array_equal(got, valid_average_reference(block, level)), (bands, level)


def test_levels_and_which_ones_workers_encode():
    assert level_count(10980, 10980, (512, 512)) == 5  # 10980 -> 5490 -> ... -> 344
    assert level_count(512, 300, (512, 512)) == 0 and level_count(513, 10, (512, 512)) == 1
    assert worker_levels((1024, 1024), (10980, 10980), (512, 512), 5) == 1
    assert worker_levels((1024, 1024), (10980, 10980), (256, 256), 6) == 2
    assert worker_levels((2048, 1024), (10980, 10980), (512, 512), 5) == 1
    assert worker_levels((1300, 1100), (1300, 1100), (512, 512), 2) == 2  # one window: the whole level
    assert level_window(Window(1024, 2048, 740, 1024), 3) == Window(128, 256, 93, 128)
    check_window_size((1024, 1024), (10980, 10980), 5)
    check_window_size((1536, 1536), (300000, 300000), 9)  # 3 x 512: cells up to 512 stay inside windows
    with pytest.raises(OutputError, match="multiples of 1024 pixels"):
        check_window_size((1536, 1536), (600000, 600000), 10)
