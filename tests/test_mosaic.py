"""Multi-tile mosaics: one UTM zone (common grid, no resampling) and two zones (reprojected with gdalwarp rules)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr
from references import mosaic_grid
from test_products import MASKED, product_files, scl_on_10m

from mpi_s2.tools.synth import ORIGIN, ProductOptions, synthesize_product

from conftest import gdal_translate_reference, read_array, run_mpi_s2

A_SIZE = (1300, 1100)  # width, height of product A (tile 32TMS)


def make(tmp_path_factory, name: str, **kwargs) -> str:
    return synthesize_product(str(tmp_path_factory.mktemp(name)), ProductOptions(jp2_block=512, **kwargs))


def expected_tile(product: str, tmp: Path, cloud_mask: bool):
    """gdal_translate's RGB of one product and its validity (DNs, and the SCL when masking)."""
    files = product_files(product)
    ref = gdal_translate_reference(files, tmp / (Path(product).stem + ".ref.tif"), offset=-1000.0)
    dn = np.stack([read_array(files[b]) for b in ("red", "green", "blue")])
    valid = (dn != 0).all(axis=0)
    if cloud_mask:
        valid &= ~np.isin(scl_on_10m(product_files(product, 20)["scl"], valid.shape), MASKED)
    return ref, valid


def paste(expected, alpha, ref, valid, col, row):
    """First valid wins: fill only pixels nothing earlier filled (call in reverse input order, overwriting)."""
    h, w = valid.shape
    region = (slice(row, row + h), slice(col, col + w))
    expected[(slice(None),) + region][:, valid] = ref[:, valid]
    alpha[region][valid] = 255


@pytest.fixture(scope="module")
def product_a(tmp_path_factory):
    return make(tmp_path_factory, "a", size=A_SIZE[0], height=A_SIZE[1])


def test_same_zone_overlap_first_valid_wins(product_a, tmp_path_factory, tmp_path):
    # B: tile 32TNS-like, 800 columns east and 300 rows south of A, overlapping A's south-east part
    b = make(tmp_path_factory, "b", size=1000, height=900, tile="32TNS",
             origin=(ORIGIN[0] + 8000.0, ORIGIN[1] - 3000.0), sensing="20230716T102559")
    out, report = tmp_path / "mosaic.tif", tmp_path / "run.json"
    result = run_mpi_s2(["compose", product_a, b, "-o", str(out), "--cloud-mask", "-q", "--report", str(report)],
                        ranks=3)
    assert result.returncode == 0, result.stderr
    ds = gdal.Open(str(out))
    assert (ds.RasterXSize, ds.RasterYSize) == (1800, 1200)
    assert ds.GetGeoTransform() == gdal.Open(product_files(product_a)["red"]).GetGeoTransform()
    assert (ds.GetGeoTransform(), ds.RasterXSize, ds.RasterYSize) == expected_grid([product_a, b], 32632)
    assert ds.GetSpatialRef().GetAuthorityCode(None) == "32632"
    expected = np.zeros((3, 1200, 1800), dtype=np.uint8)
    alpha = np.zeros((1200, 1800), dtype=np.uint8)
    ref_b, valid_b = expected_tile(b, tmp_path, True)
    ref_a, valid_a = expected_tile(product_a, tmp_path, True)
    paste(expected, alpha, ref_b, valid_b, 800, 300)  # later input first ...
    paste(expected, alpha, ref_a, valid_a, 0, 0)  # ... so the first input wins where both are valid
    rgba = read_array(out)
    assert (rgba[3] == alpha).all()
    assert (rgba[:3] == expected).all()
    # the overlap really holds pixels where both are valid and differ, so the rule is visible
    overlap_a = valid_a[300:, 800:]
    overlap_b = valid_b[: 1100 - 300, : 1300 - 800]
    both = overlap_a & overlap_b
    assert both.any() and (ref_a[:, 300:, 800:][:, both] != ref_b[:, : 800, : 500][:, both]).any()
    inputs = json.loads(report.read_text())["inputs"]
    assert [i["placement"]["col_off"] for i in inputs] == [0, 800] and not any(i["reprojected"] for i in inputs)


def test_a_south_east_tile_first_still_gives_the_union_grid(product_a, tmp_path_factory, tmp_path):
    """The grid is the inputs' union whatever their order: the first input (here B, south-east of A: placed at a
    negative offset from its own corner before the grid is known) used to fail with "window offsets must be >= 0"
    (found with --order cloud-cover putting a southern tile first)."""
    b = make(tmp_path_factory, "b-first", size=1000, height=900, tile="32TNS",
             origin=(ORIGIN[0] + 8000.0, ORIGIN[1] - 3000.0), sensing="20230716T102559")
    out, report = tmp_path / "mosaic.tif", tmp_path / "run.json"
    result = run_mpi_s2(["compose", b, product_a, "-o", str(out), "-q", "--report", str(report)], ranks=3)
    assert result.returncode == 0, result.stderr
    ds = gdal.Open(str(out))
    assert (ds.GetGeoTransform(), ds.RasterXSize, ds.RasterYSize) == expected_grid([product_a, b], 32632)
    expected = np.zeros((3, 1200, 1800), dtype=np.uint8)
    alpha = np.zeros((1200, 1800), dtype=np.uint8)
    ref_a, valid_a = expected_tile(product_a, tmp_path, False)
    ref_b, valid_b = expected_tile(b, tmp_path, False)
    paste(expected, alpha, ref_a, valid_a, 0, 0)  # A is the later input ...
    paste(expected, alpha, ref_b, valid_b, 800, 300)  # ... B, the first, wins where both are valid
    rgba = read_array(out)
    assert (rgba[3] == alpha).all() and (rgba[:3] == expected).all()
    inputs = json.loads(report.read_text())["inputs"]
    assert [(i["placement"]["col_off"], i["placement"]["row_off"]) for i in inputs] == [(800, 300), (0, 0)]


def expected_grid(products: list[str], epsg: int, res: float = 10.0):
    """The mosaic's grid from the products' corners (see :func:`references.mosaic_grid`)."""
    return mosaic_grid([product_files(p)["red"] for p in products], epsg, res)


def warped_reference(product: str, grid, srs: str, tmp: Path):
    """Independent reference: gdalwarp (nearest, exact) of each band onto ``grid`` ((geotransform, width, height),
    from :func:`expected_grid`), then gdal_translate."""
    gt, width, height = grid
    bounds = [str(v) for v in (gt[0], gt[3] - 10.0 * height, gt[0] + 10.0 * width, gt[3])]
    warped = {}
    for key, path in product_files(product).items():
        if key == "scl":
            continue
        warped[key] = str(tmp / f"{Path(product).stem}_{key}.tif")
        subprocess.run(["gdalwarp", "-q", "-t_srs", srs, "-te", *bounds, "-tr", "10", "10", "-r", "near",
                        "-et", "0", "-srcnodata", "0", "-dstnodata", "0", path, warped[key]], check=True)
    ref = gdal_translate_reference(warped, tmp / "warped_ref.tif", offset=-1000.0)
    valid = (np.stack([read_array(warped[k]) for k in ("red", "green", "blue")]) != 0).all(axis=0)
    return ref, valid


def _corner_in_zone_33(col: int, row: int) -> tuple[float, float]:
    src, dst = osr.SpatialReference(), osr.SpatialReference()
    src.ImportFromEPSG(32632)
    dst.ImportFromEPSG(32633)
    for srs in (src, dst):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    x, y, _ = osr.CoordinateTransformation(src, dst).TransformPoint(ORIGIN[0] + col * 10.0, ORIGIN[1] - row * 10.0)
    return (round(x / 10) * 10.0, round(y / 10) * 10.0)


def test_two_zone_mosaic_reprojects_the_second_zone(product_a, tmp_path_factory, tmp_path):
    # C: a zone-33 tile whose upper-left corner lies at A's pixel (900, 600)
    c = make(tmp_path_factory, "c", size=800, height=700, tile="33TUM", epsg=32633,
             origin=_corner_in_zone_33(900, 600), sensing="20230717T102559")
    out, report = tmp_path / "mosaic.tif", tmp_path / "run.json"
    result = run_mpi_s2(["compose", product_a, c, "-o", str(out), "-q", "--report", str(report)], ranks=3)
    assert result.returncode == 0, result.stderr
    ds = gdal.Open(str(out))
    gt = ds.GetGeoTransform()
    assert ds.GetSpatialRef().GetAuthorityCode(None) == "32632" and gt[1] == 10.0 and gt[5] == -10.0
    grid = expected_grid([product_a, c], 32632)  # the union of A's bounds and C's, from their corners
    assert (gt, ds.RasterXSize, ds.RasterYSize) == grid
    assert grid[1] > A_SIZE[0] and grid[2] > A_SIZE[1]  # C really widens the mosaic east and south
    a_gt = gdal.Open(product_files(product_a)["red"]).GetGeoTransform()
    col_a, row_a = (a_gt[0] - gt[0]) / 10.0, (gt[3] - a_gt[3]) / 10.0
    assert col_a == int(col_a) and row_a == int(row_a)  # A stays on its own grid, unresampled
    col_a, row_a = int(col_a), int(row_a)
    width, height = ds.RasterXSize, ds.RasterYSize
    ref_c, valid_c = warped_reference(c, grid, "EPSG:32632", tmp_path)
    ref_a, valid_a = expected_tile(product_a, tmp_path, False)
    expected = np.zeros((3, height, width), dtype=np.uint8)
    alpha = np.zeros((height, width), dtype=np.uint8)
    paste(expected, alpha, ref_c, valid_c, 0, 0)
    paste(expected, alpha, ref_a, valid_a, col_a, row_a)
    rgba = read_array(out)
    assert valid_c.sum() > 0.5 * 800 * 700  # most of C landed on the output grid
    assert (rgba[3] == alpha).all()
    assert (rgba[:3] == expected).all()
    inputs = json.loads(report.read_text())
    assert [i["reprojected"] for i in inputs["inputs"]] == [False, True] and inputs["resampling"] == "near"


def test_windows_without_input_are_never_read(product_a, tmp_path_factory, tmp_path):
    far = make(tmp_path_factory, "far", size=1000, height=900, tile="32TNR",
               origin=(ORIGIN[0] + 20000.0, ORIGIN[1] - 15000.0), sensing="20230718T102559")
    out, report = tmp_path / "sparse.tif", tmp_path / "run.json"
    result = run_mpi_s2(["compose", product_a, far, "-o", str(out), "-q", "--report", str(report)], ranks=3)
    assert result.returncode == 0, result.stderr
    run = json.loads(report.read_text())
    assert run["size"] == [3000, 2400] and run["empty_windows_skipped"] == 2 and run["windows"] == 7
    assert sum(r["windows"] for r in run["ranks"]) == 7
    rgba = read_array(out)
    assert (rgba[:, :1024, 2048:] == 0).all() and (rgba[:, 2048:, :1024] == 0).all()  # the two skipped windows
    assert (rgba[3, :1100, :1300] == 255).any() and (rgba[3, 1500:, 2000:] == 255).any()


def test_crs_option_reprojects_every_input(product_a, tmp_path):
    out, report = tmp_path / "utm31.tif", tmp_path / "run.json"
    result = run_mpi_s2(["compose", product_a, "-o", str(out), "-q", "--crs", "EPSG:32631", "--report",
                         str(report)], ranks=2)
    assert result.returncode == 0, result.stderr
    ds = gdal.Open(str(out))
    assert ds.GetSpatialRef().GetAuthorityCode(None) == "32631" and ds.GetGeoTransform()[1] == 10.0
    grid = expected_grid([product_a], 32631)  # A's corners in zone 31, snapped outward to 10 m
    assert (ds.GetGeoTransform(), ds.RasterXSize, ds.RasterYSize) == grid
    ref, valid = warped_reference(product_a, grid, "EPSG:32631", tmp_path)
    rgba = read_array(out)
    assert valid.sum() > 0.8 * A_SIZE[0] * A_SIZE[1]
    assert (rgba[3] == np.where(valid, 255, 0)).all()
    assert (rgba[:3][:, valid] == ref[:, valid]).all()
    run = json.loads(report.read_text())
    assert run["inputs"][0]["reprojected"] and run["resampling"] == "near"
