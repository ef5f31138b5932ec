"""--quicklook: a small preview beside the GeoTIFF, valid pixels averaged, nodata transparent (PNG) or black."""

from __future__ import annotations

import json

import numpy as np
from osgeo import gdal

from conftest import compose_args, error_lines, read_array, run_mpi_s2


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
    assert json.loads(report.read_text())["quicklook"] == {"path": str(png), "size": [186, 158]}
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
