"""--quicklook: a small preview beside the GeoTIFF, valid pixels averaged, nodata transparent (PNG) or black."""

from __future__ import annotations

import json

import numpy as np
import pytest
from osgeo import gdal

from conftest import compose_args, error_lines, read_array, run_mpi_s2, run_mpi_s2_to_death


def reference_preview(rgba: np.ndarray, factor: int):
    """Valid-pixel means per cell, by cumulative sums over cell boundaries (independent of the implementation)."""
    valid = rgba[3] > 0
    rows = np.arange(0, rgba.shape[1], factor)
    cols = np.arange(0, rgba.shape[2], factor)
    counts = np.add.reduceat(np.add.reduceat(valid.astype(np.int64), rows, axis=0), cols, axis=1)
    means = []
    for b in range(3):
        sums = np.add.reduceat(np.add.reduceat(rgba[b].astype(np.int64) * valid, rows, axis=0), cols, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            means.append(np.where(counts > 0, np.floor(sums / np.maximum(counts, 1) + 0.5), 0).astype(np.uint8))
    return np.stack(means), counts > 0


def test_png_quicklook_averages_valid_pixels_and_is_transparent_elsewhere(scene, tmp_path):
    out, png, report = tmp_path / "rgb.tif", tmp_path / "rgb.png", tmp_path / "run.json"
    result = run_mpi_s2(compose_args(scene, out, "--quicklook", str(png), "--quicklook-size", "200",
                                     "--report", str(report)), ranks=3)
    assert result.returncode == 0, result.stderr
    preview = gdal.Open(str(png))
    assert (preview.RasterXSize, preview.RasterYSize, preview.RasterCount) == (186, 158, 4)  # 1300/7, 1100/7
    expected, covered = reference_preview(read_array(out), 7)
    got = preview.ReadAsArray()
    assert np.array_equal(got[3], np.where(covered, 255, 0))
    assert not covered.all() and covered.any()  # the scene's nodata wedge makes transparent cells
    assert np.array_equal(got[:3][:, covered], expected[:, covered])
    quicklook = json.loads(report.read_text())["quicklook"]
    assert {k: quicklook[k] for k in ("path", "size")} == {"path": str(png), "size": [186, 158]}
    assert quicklook["seconds"] == pytest.approx(quicklook["writer_s"] + quicklook["workers_s"], abs=2e-4)
    assert quicklook["writer_s"] > 0 and quicklook["workers_s"] > 0  # the workers' cell sums, timed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rgb.png", "rgb.tif", "run.json"]


def test_jpeg_quicklook_is_black_where_there_is_no_data(scene, tmp_path):
    out, jpg = tmp_path / "rgb.tif", tmp_path / "rgb.jpg"
    result = run_mpi_s2(compose_args(scene, out, "--quicklook", str(jpg), "--quicklook-size", "100"), ranks=1)
    assert result.returncode == 0, result.stderr
    preview = gdal.Open(str(jpg))
    assert (preview.RasterXSize, preview.RasterYSize, preview.RasterCount) == (100, 85, 3)  # factor 13
    _expected, covered = reference_preview(read_array(out), 13)
    got = preview.ReadAsArray().astype(int)
    interior = ~covered  # cells with no data, away from JPEG's ringing at the wedge's edge
    interior[:, 1:] &= ~covered[:, :-1]
    interior[:, :-1] &= ~covered[:, 1:]
    assert interior.sum() > 20 and got[:, interior].max() <= 8


def test_quicklook_of_another_type_is_a_clear_error(scene, tmp_path):
    result = run_mpi_s2(compose_args(scene, tmp_path / "rgb.tif", "--quicklook", str(tmp_path / "q.gif")), ranks=2)
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "q.gif: --quicklook must end in .png or .jpg" in lines[0]
    assert not list(tmp_path.iterdir())


# -- the quicklook made by the workers equals an independent reference from the output, whatever made it ----------

TILES_256 = ("--window", "256", "--co", "BLOCKXSIZE=256", "--co", "BLOCKYSIZE=256")  # 30 windows of 1300 x 1100


def expected_quicklook(path, factor: int, bands: int) -> np.ndarray:
    """The preview the output at ``path`` should give, from its pixels: per ``factor`` x ``factor`` cell (cut by the
    right and bottom edge), the float mean of its valid pixels (alpha > 0, or any RGB > 0 without alpha) plus one
    half, floored; 0 where none is valid; a 4th band 255 where any is."""
    pixels = read_array(path).astype(np.int64)
    valid = pixels[3] > 0 if pixels.shape[0] == 4 else (pixels[:3] > 0).any(axis=0)
    rows, cols = -(-pixels.shape[1] // factor), -(-pixels.shape[2] // factor)
    pad = ((0, rows * factor - pixels.shape[1]), (0, cols * factor - pixels.shape[2]))

    def cell_totals(plane):
        return np.pad(plane, pad).reshape(rows, factor, cols, factor).sum(axis=(1, 3))

    counts = cell_totals(valid.astype(np.int64))
    out = np.zeros((bands, rows, cols), dtype=np.uint8)
    for b in range(3):
        sums = cell_totals(np.where(valid, pixels[b], 0))
        out[b] = np.where(counts > 0, np.floor(sums / np.maximum(counts, 1) + 0.5), 0)
    if bands == 4:
        out[3] = np.where(counts > 0, 255, 0)
    return out


def as_jpeg(image: np.ndarray) -> np.ndarray:
    """``image`` through GDAL's JPEG driver at quality 90 and back (JPEG is lossy, but deterministic)."""
    mem = gdal.GetDriverByName("MEM").Create("", image.shape[2], image.shape[1], image.shape[0], gdal.GDT_Byte)
    for b in range(image.shape[0]):
        mem.GetRasterBand(b + 1).WriteArray(image[b])
    path = "/vsimem/test_quicklook_reference.jpg"
    gdal.GetDriverByName("JPEG").CreateCopy(path, mem, options=["QUALITY=90"])
    try:
        return gdal.Open(path).ReadAsArray()
    finally:
        gdal.Unlink(path)


def check_quicklook(out, preview, size: int, report=None) -> None:
    width, height = gdal.Open(str(out)).RasterXSize, gdal.Open(str(out)).RasterYSize
    factor = -(-max(width, height) // size)
    jpeg = str(preview).endswith(".jpg")
    expected = expected_quicklook(out, factor, 3 if jpeg else 4)
    got = gdal.Open(str(preview)).ReadAsArray()
    assert got.shape == expected.shape
    assert np.array_equal(got, as_jpeg(expected) if jpeg else expected)
    if report is not None:
        run = json.loads(report.read_text())
        assert run["quicklook"]["size"] == [expected.shape[2], expected.shape[1]]
        assert run["quicklook"]["seconds"] > 0


@pytest.mark.parametrize("ranks,backend,options,size", [
    (1, "writer", (), 200),                        # one rank, tiles encoded: factor 7 cuts windows of 1024
    (2, "writer", TILES_256, 97),                  # factor 14 does not divide 256
    (3, "writer", ("--cog",), 200),                # a COG: the sums travel beside the overview shares
    (4, "writer", ("--window", "300"), 150),       # windows not whole tiles: raw blocks, sums taken by the writer
    (1, "writer", ("--window", "300"), 1300),      # one rank with GDAL's writer; factor 1
    (3, "writer", ("--no-alpha",), 200),           # no alpha: valid where any of RGB > 0
    (1, "hdf5", (), 200),
    (2, "hdf5", (), 200),
    (3, "hdf5", ("--cog",), 111),                  # factor 12
    (4, "hdf5", (*TILES_256, "--no-alpha"), 200),
], ids=lambda v: "-".join(v) if isinstance(v, tuple) else str(v))
def test_quicklook_equals_the_reference_from_the_output(scene, tmp_path, ranks, backend, options, size):
    out, png, report = tmp_path / "rgb.tif", tmp_path / "rgb.png", tmp_path / "run.json"
    result = run_mpi_s2(compose_args(scene, out, "--backend", backend, *options, "--quicklook", str(png),
                                     "--quicklook-size", str(size), "--report", str(report)),
                        ranks=None if ranks == 1 else ranks)
    assert result.returncode == 0, result.stderr
    check_quicklook(out, png, size, report)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rgb.png", "rgb.tif", "run.json"]


@pytest.mark.parametrize("ranks,options", [(2, ()), (3, ("--no-alpha", "--window", "300"))])
def test_jpeg_quicklook_equals_the_reference_encoded_alike(scene, tmp_path, ranks, options):
    out, jpg = tmp_path / "rgb.tif", tmp_path / "rgb.jpg"
    result = run_mpi_s2(compose_args(scene, out, *options, "--quicklook", str(jpg), "--quicklook-size", "100"),
                        ranks=ranks)
    assert result.returncode == 0, result.stderr
    check_quicklook(out, jpg, 100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rgb.jpg", "rgb.tif"]


@pytest.mark.parametrize("ranks,backend,fault,extra", [
    (3, "writer", "1:4:kill", ()),        # reused windows: read back from the finished file
    (1, "writer", "0:7:kill", ("--cog",)),
    (3, "hdf5", "2:3:kill", ()),          # converted whole: every window's sums come from the conversion
])
def test_a_resumed_run_gives_the_quicklook_of_its_output(scene, tmp_path, ranks, backend, fault, extra):
    out, png, report = tmp_path / "rgb.tif", tmp_path / "rgb.png", tmp_path / "run.json"
    args = compose_args(scene, out, "--backend", backend, *TILES_256, *extra, "--quicklook", str(png),
                        "--quicklook-size", "97", "--report", str(report))
    killed = run_mpi_s2_to_death(args, ranks, env={"MPI_S2_COMMIT_INTERVAL": "0", "MPI_S2_TEST_FAULT": fault})
    assert killed.returncode != 0 and not png.exists()
    resumed = run_mpi_s2(args + ["--resume"], ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    run = json.loads(report.read_text())
    assert run["windows_reused"] > 0 and run["windows_computed"] > 0
    check_quicklook(out, png, 97, report)


# -- the pure parts ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bands", [3, 4])
@pytest.mark.parametrize("window_size,size", [
    ((100, 60), 200), ((256, 256), 97),  # cells cut by window edges
    ((64, 64), 3), ((300, 300), 1),      # cells far larger than a window (factor 434, 1300)
])
def test_cell_sums_of_windows_add_up_to_the_whole_image(bands, window_size, size):
    from mpi_s2.output.quicklook import QuicklookSums, cell_sums
    from mpi_s2.windows import plan_windows

    rng = np.random.default_rng(bands * 1000 + size)
    width, height = 1300, 1100
    image = rng.integers(0, 256, (bands, height, width), dtype=np.uint8)
    if bands == 4:
        image[3] = np.where(rng.random((height, width)) < 0.6, 255, 0)
    else:
        image[:, rng.random((height, width)) < 0.4] = 0
    image[:, :400, :500] = 0  # whole cells without data
    sums = QuicklookSums(width, height, size)
    for window in plan_windows((width, height), window_size):
        rows, cols = window.toslices()
        sums.add(window, cell_sums(image[:, rows, cols], window, sums.factor).tobytes())
    path = "/vsimem/test_quicklook_image.tif"
    ds = gdal.GetDriverByName("GTiff").Create(path, width, height, bands, gdal.GDT_Byte)
    ds.WriteRaster(0, 0, width, height, image.tobytes())
    ds = None
    try:
        expected = expected_quicklook(path, sums.factor, 4)
    finally:
        gdal.Unlink(path)
    assert np.array_equal(sums.image(4), expected)
    assert (expected[3] == 255).any() and ((expected[3] == 0).any() or sums.factor > 100)


def test_means_round_half_up_like_floor_of_mean_plus_a_half():
    from mpi_s2.output.quicklook import QuicklookSums
    from mpi_s2.windows import Window

    sums = QuicklookSums(8, 2, 4)  # factor 2: four cells of 2 x 2
    block = np.zeros((4, 2, 8), dtype=np.uint8)
    block[:3, 0, 0:2] = [[1, 2], [3, 4], [254, 255]]  # cell 0: two valid pixels, means 1.5, 3.5, 254.5
    block[3, 0, 0:2] = 255
    block[:3, :, 2:4] = 7  # cell 1: four valid of 7
    block[3, :, 2:4] = 255
    block[:3, 0, 4] = 200  # cell 2: one valid pixel; the others hold colour but no alpha
    block[:3, 1, 4:6] = 9
    block[3, 0, 4] = 255
    sums.add_block(Window(0, 0, 8, 2), block)
    image = sums.image(4)
    assert image[:, 0].T.tolist() == [[2, 4, 255, 255], [7, 7, 7, 255], [200, 200, 200, 255], [0, 0, 0, 0]]
