"""Every option of README's table that no other test runs end to end, each checked against an independent reference.

Which test exercises each README option (this file or another) is listed in tests/README.md. Small scenes, 1-3
ranks: the whole file takes about a minute on 2 cores.
"""

from __future__ import annotations

import glob
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal
from references import mosaic_grid
from test_mosaic import paste
from test_products import MASKED
from test_quicklook import reference_preview

from mpi_s2.tools.synth import ORIGIN, ProductOptions, SynthOptions, synthesize, synthesize_product

from conftest import (
    PYTHON,
    band_set_args,
    compose_args,
    error_lines,
    gdal_translate_reference,
    read_array,
    read_bands,
    run_mpi_s2,
    write_band,
)


def band_set(directory: Path, width: int, height: int, col: int = 0, row: int = 0) -> dict[str, str]:
    """A synthetic band set (tiled 256) of ``width`` x ``height`` whose upper-left corner is ``col``, ``row`` pixels
    east and south of the 32TMS origin (its texture depends on its size, so band sets of other sizes differ)."""
    made = synthesize(str(directory / "synth"), SynthOptions(size=width, height=height, block=256,
                                                             compress="DEFLATE"))
    gt = (ORIGIN[0] + 10.0 * col, 10.0, 0.0, ORIGIN[1] - 10.0 * row, 0.0, -10.0)
    return {band: write_band(directory / f"{band}.tif", read_array(made[band]), geotransform=gt)
            for band in ("red", "green", "blue")}


def expected_rgba(bands: dict[str, str], ref: np.ndarray, extra_invalid: np.ndarray | None = None) -> np.ndarray:
    """README: the reference's pixels where no band is DN 0 (and not ``extra_invalid``), 0 and alpha 0 elsewhere."""
    valid = (np.stack(read_bands(bands)) != 0).all(axis=0)
    if extra_invalid is not None:
        valid &= ~extra_invalid
    assert valid.any() and not valid.all()
    return np.concatenate([np.where(valid, ref, 0), np.where(valid, 255, 0)[None]]).astype(np.uint8)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, str]:
    """A 640 x 512 band set on the 32TMS grid."""
    return band_set(tmp_path_factory.mktemp("small"), 640, 512)


# ------------------------------------------------------------------------------------------------- radiometry

def test_scale_in_a_real_run_matches_gdal_translate(small, tmp_path):
    out = tmp_path / "rgb.tif"
    result = run_mpi_s2(compose_args(small, out, "--scale", "12000"), ranks=2)
    assert result.returncode == 0, result.stderr
    ref = gdal_translate_reference(small, tmp_path / "ref.tif", scale=12000.0)
    default = gdal_translate_reference(small, tmp_path / "default.tif")
    expected = expected_rgba(small, ref)
    valid = expected[3] > 0
    assert (ref[:, valid] != default[:, valid]).mean() > 0.5  # the scale visibly changes the pixels
    assert np.array_equal(read_array(out), expected)


# ---------------------------------------------------------------------------------------- inputs and mosaics

@pytest.fixture(scope="module")
def mixed_inputs(tmp_path_factory):
    """An L2A product (offset -1000) at the origin, then two band sets (offset 0) 256 and 512 px south-east."""
    product = synthesize_product(str(tmp_path_factory.mktemp("p")),
                                 ProductOptions(size=768, height=640, jp2_block=256))
    first = band_set(tmp_path_factory.mktemp("s1"), 640, 512, 256, 256)
    second = band_set(tmp_path_factory.mktemp("s2"), 512, 512, 512, 512)
    return product, first, second


def test_several_band_sets_after_a_product_in_one_run(mixed_inputs, tmp_path):
    product, first, second = mixed_inputs
    out, report = tmp_path / "mosaic.tif", tmp_path / "run.json"
    result = run_mpi_s2(["compose", product, *band_set_args([first, second]), "-o", str(out), "-q", "--window", "512",
                         "--report", str(report)], ranks=3)
    assert result.returncode == 0, result.stderr
    files = {k: glob.glob(f"{product}/GRANULE/*/IMG_DATA/R10m/*_{c}_10m.jp2")[0]
             for k, c in (("red", "B04"), ("green", "B03"), ("blue", "B02"))}
    grid = mosaic_grid([files["red"], first["red"], second["red"]], 32632)
    assert grid == ((ORIGIN[0], 10.0, 0.0, ORIGIN[1], 0.0, -10.0), 1024, 1024)
    ds = gdal.Open(str(out))
    assert (ds.GetGeoTransform(), ds.RasterXSize, ds.RasterYSize) == grid
    expected = np.zeros((3, 1024, 1024), dtype=np.uint8)
    alpha = np.zeros((1024, 1024), dtype=np.uint8)
    refs = []
    for k, (bands, offset, (col, row)) in enumerate([(files, -1000.0, (0, 0)), (first, 0.0, (256, 256)),
                                                     (second, 0.0, (512, 512))]):
        ref = gdal_translate_reference(bands, tmp_path / f"ref{k}.tif", offset=offset)
        refs.append((ref, (np.stack(read_bands(bands)) != 0).all(axis=0), col, row))
    for ref, valid, col, row in reversed(refs):  # first valid wins: the first input pasted last
        paste(expected, alpha, ref, valid, col, row)
    rgba = read_array(out)
    assert np.array_equal(rgba[3], alpha)
    assert np.array_equal(rgba[:3], expected)
    # where the product and the first band set are both valid they differ (other offset), so the order shows
    both = refs[0][1][256:, 256:] & refs[1][1][:640 - 256, :768 - 256]
    assert both.any() and (refs[0][0][:, 256:, 256:][:, both] != refs[1][0][:, :384, :512][:, both]).mean() > 0.5
    run = json.loads(report.read_text())
    assert [i["placement"]["col_off"] for i in run["inputs"]] == [0, 256, 512]
    assert [i["radiometry"]["B04"]["offset"] for i in run["inputs"]] == [-1000.0, 0.0, 0.0]


def test_scl_with_band_files_masks_its_classes(small, tmp_path):
    rng = np.random.default_rng(16)
    scl = rng.integers(0, 12, size=(256, 320)).astype(np.uint8)  # 20 m over the 640 x 512 band set
    scl[:40, :60] = 9  # a cloud block too
    scl_path = write_band(tmp_path / "SCL.tif", scl, geotransform=(ORIGIN[0], 20.0, 0.0, ORIGIN[1], 0.0, -20.0),
                          data_type=gdal.GDT_Byte)
    out = tmp_path / "rgb.tif"
    result = run_mpi_s2(compose_args(small, out, "--scl", scl_path), ranks=2)
    assert result.returncode == 0, result.stderr
    rows, cols = np.mgrid[0:512, 0:640]
    masked = np.isin(scl[rows // 2, cols // 2], MASKED)  # the 20 m class containing each 10 m pixel
    expected = expected_rgba(small, gdal_translate_reference(small, tmp_path / "ref.tif"), masked)
    assert masked.mean() > 0.2 and (expected[3] > 0).mean() > 0.4
    assert np.array_equal(read_array(out), expected)


def test_resolution_60_m_of_a_synth_product(tmp_path):
    made = subprocess.run([PYTHON, "-m", "mpi_s2", "synth", str(tmp_path / "p"), "--product", "--size", "1200",
                           "--jp2-block", "256", "-q"], capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    product, = glob.glob(str(tmp_path / "p" / "*.SAFE"))
    files = {k: glob.glob(f"{product}/GRANULE/*/IMG_DATA/R60m/*_{c}_60m.jp2")[0]
             for k, c in (("red", "B04"), ("green", "B03"), ("blue", "B02"))}
    out = tmp_path / "rgb60.tif"
    result = run_mpi_s2(["compose", product, "-o", str(out), "-q", "--resolution", "60"], ranks=2)
    assert result.returncode == 0, result.stderr
    expected = expected_rgba(files, gdal_translate_reference(files, tmp_path / "ref.tif", offset=-1000.0))
    assert expected.shape == (4, 200, 200)
    assert np.array_equal(read_array(out), expected)
    ds = gdal.Open(str(out))
    assert ds.GetGeoTransform() == (ORIGIN[0], 60.0, 0.0, ORIGIN[1], 0.0, -60.0)
    assert ds.GetGeoTransform() == gdal.Open(files["red"]).GetGeoTransform()


def test_bilinear_resampling_of_a_reprojected_input_matches_gdalwarp(small, tmp_path):
    out, report = tmp_path / "utm31.tif", tmp_path / "run.json"
    result = run_mpi_s2(compose_args(small, out, "--crs", "EPSG:32631", "--resampling", "bilinear",
                                     "--report", str(report)), ranks=2)
    assert result.returncode == 0, result.stderr
    grid = mosaic_grid([small["red"]], 32631)  # the corners in zone 31, snapped outward to 10 m
    gt, width, height = grid
    ds = gdal.Open(str(out))
    assert (ds.GetGeoTransform(), ds.RasterXSize, ds.RasterYSize) == grid
    bounds = [str(v) for v in (gt[0], gt[3] - 10.0 * height, gt[0] + 10.0 * width, gt[3])]
    refs = {}
    for method in ("bilinear", "near"):
        warped = {}
        for band, path in small.items():
            # gdalwarp's warped VRT: GDAL's warper reading the source as a reader of the output would
            warped[band] = str(tmp_path / f"{method}_{band}.vrt")
            subprocess.run(["gdalwarp", "-q", "-of", "VRT", "-t_srs", "EPSG:32631", "-te", *bounds, "-tr", "10", "10",
                            "-r", method, "-et", "0", "-srcnodata", "0", "-dstnodata", "0", path, warped[band]],
                           check=True)
        refs[method] = expected_rgba(warped, gdal_translate_reference(warped, tmp_path / f"{method}.tif"))
    valid = refs["bilinear"][3] > 0
    assert valid.mean() > 0.5
    assert (refs["bilinear"][:3, valid] != refs["near"][:3, valid]).mean() > 0.2  # the method shows
    rgba = read_array(out)
    assert np.array_equal(rgba, refs["bilinear"])
    run = json.loads(report.read_text())
    assert run["resampling"] == "bilinear" and run["inputs"][0]["reprojected"]


# ---------------------------------------------------------------------------------------------------- output

def test_quicklook_size_default_is_1024_longest_side(tmp_path_factory, tmp_path):
    # 2048 px wide: factor 2 gives exactly 1024, so any other default below 2048 changes the size
    wide = band_set(tmp_path_factory.mktemp("wide"), 2048, 256)
    out, png = tmp_path / "rgb.tif", tmp_path / "rgb.png"
    result = run_mpi_s2(compose_args(wide, out, "--quicklook", str(png)), ranks=2)
    assert result.returncode == 0, result.stderr
    rgba = read_array(out)
    height, width = rgba.shape[1:]
    factor = 1  # README: the longest side at most 1024 by default, by the smallest integer factor
    while -(-max(width, height) // factor) > 1024:
        factor += 1
    assert factor == 2
    preview = gdal.Open(str(png))
    assert (preview.RasterXSize, preview.RasterYSize) == (-(-width // factor), -(-height // factor)) == (1024, 128)
    expected, covered = reference_preview(rgba, factor)
    got = preview.ReadAsArray()
    assert np.array_equal(got[3], np.where(covered, 255, 0))
    assert np.array_equal(got[:3][:, covered], expected[:, covered])


def test_overwrite_replaces_the_old_file_with_what_a_fresh_run_writes(small, tmp_path, tmp_path_factory):
    out, fresh = tmp_path / "rgb.tif", tmp_path / "fresh.tif"
    result = run_mpi_s2(compose_args(small, out, "--gamma", "1"), ranks=2)  # an older, different result
    assert result.returncode == 0, result.stderr
    old = read_array(out)
    result = run_mpi_s2(compose_args(small, out, "--overwrite"), ranks=3)
    assert result.returncode == 0, result.stderr
    result = run_mpi_s2(compose_args(small, fresh), ranks=3)
    assert result.returncode == 0, result.stderr
    new, want = gdal.Open(str(out)), gdal.Open(str(fresh))
    expected = expected_rgba(small, gdal_translate_reference(small, tmp_path_factory.mktemp("ref") / "ref.tif"))
    assert not np.array_equal(old, expected)
    assert np.array_equal(new.ReadAsArray(), expected) and np.array_equal(want.ReadAsArray(), expected)
    assert new.GetGeoTransform() == want.GetGeoTransform() and new.GetSpatialRef().IsSame(want.GetSpatialRef())
    assert new.GetMetadata() == want.GetMetadata()
    assert new.GetMetadata("IMAGE_STRUCTURE") == want.GetMetadata("IMAGE_STRUCTURE")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.tif", "rgb.tif"]  # nothing left beside them


def test_verbose_logs_more_than_the_default(small, tmp_path):
    lines = {}
    for flag in ("", "-v"):
        out = tmp_path / f"rgb{flag}.tif"
        args = [a for a in compose_args(small, out) if a != "-q"] + ([flag] if flag else [])
        result = run_mpi_s2(args, ranks=2)
        assert result.returncode == 0, result.stderr
        lines[flag] = [line for line in result.stderr.splitlines() if line.startswith("mpi_s2:")]
    assert len(lines["-v"]) > len(lines[""]), lines
    assert any(" plan: 640 x 512 pixels" in line for line in lines["-v"]), lines["-v"]
    assert not any(" plan: " in line for line in lines[""]), lines[""]


# --------------------------------------------------------------------------------------------- bad values

@pytest.mark.parametrize("option, value, message", [
    ("--window", "0", "--window"),
    ("--gamma", "nan", "--gamma must be a finite number > 0, got nan"),
    ("--max-reflectance", "-1", "--max-reflectance must be a finite number > 0, got -1.0"),
    ("--resampling", "lanczos", "--resampling"),
    ("--resolution", "30", "--resolution"),
    ("--quicklook-size", "0", "--quicklook-size"),
    ("--schedule", "random", "--schedule"),
    ("--mask-classes", "3,x", "--mask-classes"),
])
def test_bad_option_value_under_mpirun_one_line_exit_2_nothing_written(small, option, value, message, tmp_path):
    out = tmp_path / "out.tif"
    result = run_mpi_s2(compose_args(small, out, option, value), ranks=2, timeout=60)
    assert result.returncode == 2, result.stderr
    ours = [line for line in result.stderr.splitlines() if line.startswith("mpi_s2")]
    assert len(ours) == 1 and ours == error_lines(result.stderr) and message in ours[0], result.stderr
    assert "Traceback" not in result.stderr and "usage:" not in result.stderr
    assert list(tmp_path.iterdir()) == []
