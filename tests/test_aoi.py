"""``--aoi FILE.geojson``: the output is cut to the area's envelope on the inputs' pixel grid, the pixels outside
the area are nodata, and windows wholly outside it are never read.

The references are independent of mpi_s2's geometry: the expected rectangle comes from the polygon's edges
sampled every 1/1000 of their length and transformed to UTM; "inside" is an even-odd test of each pixel centre,
transformed to longitude and latitude, against the polygon as the GeoJSON file gives it; the expected pixels
are the unclipped output cut with ``gdal_translate -projwin``.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, ogr, osr
from test_stretch import numpy_limits, numpy_render

from mpi_s2.config import BandFiles, ComposeConfig
from mpi_s2.errors import InputError
from mpi_s2.inputs.bands import Grid
from mpi_s2.planning.aoi import INSIDE, OUTSIDE, PARTIAL, AoiMask, envelope_window, place_aoi
from mpi_s2.planning.plan import make_plan
from mpi_s2.tools.synth import ProductOptions, synthesize_product
from mpi_s2.windows import Window, plan_windows

from conftest import assert_exit, band_set_args, error_lines, read_array, run_mpi_s2, run_mpi_s2_to_death

gdal.UseExceptions()

#: Shapes in fractions (column, row) of the scene's width and height; beyond 0..1 is beyond the scene.
L_SHAPE = [(0.137, 0.093), (0.583, 0.121), (0.561, 0.537), (1.043, 0.552), (1.071, 0.981), (0.118, 0.958)]
TRIANGLE = [(-0.05, -0.05), (1.1, -0.05), (-0.05, 1.1)]  # envelope beyond the scene: the grid is the whole scene
MIRRORED = [(1.1, 1.1), (1.1, -0.05), (-0.05, 1.1)]  # the same envelope, the other half


def _lonlat() -> osr.SpatialReference:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def _utm(path: str) -> osr.SpatialReference:
    srs = gdal.Open(path).GetSpatialRef()
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def write_aoi(path: Path, raster: str, shape: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """A GeoJSON Feature whose polygon has the vertices ``shape`` (fractions of ``raster``'s extent), in
    longitude and latitude; returns its ring (closed)."""
    ds = gdal.Open(raster)
    x0, dx, _, y0, _, dy = ds.GetGeoTransform()
    to_lonlat = osr.CoordinateTransformation(_utm(raster), _lonlat())
    ring = [tuple(to_lonlat.TransformPoint(x0 + fc * ds.RasterXSize * dx, y0 + fr * ds.RasterYSize * dy)[:2])
            for fc, fr in shape]
    ring.append(ring[0])
    path.write_text(json.dumps({"type": "Feature", "properties": {},
                                "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in ring]]}}))
    return ring  # type: ignore[return-value]


def expected_window(ring, raster: str) -> Window:
    """The pixels of ``raster``'s grid that the ring's envelope (edges sampled finely, in UTM) touches, snapped
    outward, within the grid."""
    ds = gdal.Open(raster)
    x0, dx, _, y0, _, dy = ds.GetGeoTransform()
    to_utm = osr.CoordinateTransformation(_lonlat(), _utm(raster))
    t = np.linspace(0, 1, 1001)
    pts = [(a[0] + (b[0] - a[0]) * s, a[1] + (b[1] - a[1]) * s)
           for a, b in zip(ring[:-1], ring[1:], strict=True) for s in t]
    xy = np.array([to_utm.TransformPoint(lon, lat)[:2] for lon, lat in pts])
    c0 = max(0, math.floor((xy[:, 0].min() - x0) / dx + 1e-6))
    c1 = min(ds.RasterXSize, math.ceil((xy[:, 0].max() - x0) / dx - 1e-6))
    r0 = max(0, math.floor((xy[:, 1].max() - y0) / dy + 1e-6))
    r1 = min(ds.RasterYSize, math.ceil((xy[:, 1].min() - y0) / dy - 1e-6))
    return Window(c0, r0, c1 - c0, r1 - r0)


def inside_centres(ring, raster: str) -> np.ndarray:
    """True where the centre of a pixel of ``raster`` lies in the ring (even-odd rule in longitude/latitude)."""
    ds = gdal.Open(raster)
    x0, dx, _, y0, _, dy = ds.GetGeoTransform()
    cols, rows = np.meshgrid(np.arange(ds.RasterXSize) + 0.5, np.arange(ds.RasterYSize) + 0.5)
    to_lonlat = osr.CoordinateTransformation(_utm(raster), _lonlat())
    lonlat = np.asarray(to_lonlat.TransformPoints(np.column_stack([(x0 + cols * dx).ravel(),
                                                                  (y0 + rows * dy).ravel()])))
    x, y = lonlat[:, 0], lonlat[:, 1]
    inside = np.zeros(x.shape, dtype=bool)
    for (xa, ya), (xb, yb) in zip(ring[:-1], ring[1:], strict=True):
        crosses = (ya > y) != (yb > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = xa + (y - ya) * (xb - xa) / (yb - ya)
        inside ^= crosses & (x < at)
    return inside.reshape(cols.shape)


def cut(full: Path, window: Window, out: Path) -> Path:
    """``gdal_translate -projwin`` of ``window`` (pixels of ``full``) out of ``full``."""
    x0, dx, _, y0, _, dy = gdal.Open(str(full)).GetGeoTransform()
    ulx, uly = x0 + window.col_off * dx, y0 + window.row_off * dy
    gdal.Translate(str(out), str(full), projWin=[ulx, uly, ulx + window.width * dx, uly + window.height * dy])
    return out


def compose(band_sets, out: Path, *extra: str, ranks: int = 3):
    """``mpi-s2 compose`` of ``band_sets`` (dicts of band files) or products (paths)."""
    inputs = band_set_args(band_sets) if isinstance(band_sets[0], dict) else list(band_sets)
    result = run_mpi_s2(["compose", *inputs, "-o", str(out), "-q", *extra], ranks=ranks)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def product(tmp_path_factory) -> str:
    """A synthetic L2A product (JPEG 2000 bands, a 20 m SCL) of 1300 x 1100 pixels."""
    return synthesize_product(str(tmp_path_factory.mktemp("product")),
                              ProductOptions(size=1300, height=1100, jp2_block=512))


# ------------------------------------------------------------------------------------------ end to end (mpirun)
@pytest.mark.parametrize("case,extra", [
    ("scene", ["--window", "256"]),
    ("mosaic", ["--composite", "median", "--backend", "hdf5", "--window", "256"]),  # the shifted copy is staged
    ("mosaic", ["--composite", "medoid", "--cog", "--window", "512"]),
    ("product", ["--cloud-mask", "--window", "256"]),  # read from an offset into its files, the SCL at 20 m
    ("product", ["--cloud-mask", "--crs", "EPSG:32631", "--window", "256"]),  # reprojected, cut by the warp
])
def test_output_is_cut_to_the_aoi_and_nodata_outside_it(case, extra, scene, misaligned, request, tmp_path):
    inputs = {"scene": [scene], "mosaic": misaligned}.get(case) or [request.getfixturevalue("product")]
    full, clipped = tmp_path / "full.tif", tmp_path / "clipped.tif"
    compose(inputs, full, *extra)
    aoi = tmp_path / "l-shape.geojson"
    ring = write_aoi(aoi, str(full), L_SHAPE)
    compose(inputs, clipped, *extra, "--aoi", str(aoi), "--report", str(tmp_path / "run.json"))
    window = expected_window(ring, str(full))
    assert window.width < gdal.Open(str(full)).RasterXSize and window.height < gdal.Open(str(full)).RasterYSize
    reference = cut(full, window, tmp_path / "reference.tif")
    got, want = gdal.Open(str(clipped)), gdal.Open(str(reference))
    assert got.GetGeoTransform() == want.GetGeoTransform()
    assert (got.RasterXSize, got.RasterYSize) == (want.RasterXSize, want.RasterYSize)
    assert got.GetSpatialRef().IsSame(want.GetSpatialRef())
    inside = inside_centres(ring, str(clipped))
    assert inside.any() and (~inside).any()
    pixels, expected = read_array(clipped), read_array(reference)
    assert np.array_equal(pixels[:, inside], expected[:, inside])
    assert (pixels[:, ~inside] == 0).all()  # alpha 0 and RGB 0
    assert (expected[3][inside] == 255).mean() > 0.5
    report = json.loads((tmp_path / "run.json").read_text())
    if "256" in extra:  # the L's notch holds whole windows: never read
        assert report["empty_windows_skipped"] > 0
    for entry in report["inputs"]:  # each block decoded once at most (staged where it straddles windows)
        assert 0 < entry["blocks"]["decoded"] == entry["blocks"]["distinct"] <= entry["blocks"]["total"], entry


def test_percentile_stretch_counts_and_renders_only_the_aoi(scene, tmp_path):
    """The counting pass counts the valid pixels inside the AOI only; the rendering pass leaves the rest 0."""
    aoi = tmp_path / "l-shape.geojson"
    ring = write_aoi(aoi, scene["red"], L_SHAPE)
    out = tmp_path / "stretched.tif"
    compose([scene], out, "--stretch", "percentile:2,98", "--window", "256", "--aoi", str(aoi), "--report",
            str(tmp_path / "run.json"))
    window = expected_window(ring, scene["red"])
    value = np.stack([read_array(scene[b])[window.toslices()] for b in ("red", "green", "blue")]).astype(float)
    counted = inside_centres(ring, str(out)) & (value != 0).all(axis=0)
    report = json.loads((tmp_path / "run.json").read_text())
    limits = numpy_limits(value, counted, 2, 98, per_band=False)
    assert report["stretch"]["pixels"] == int(counted.sum())
    assert [tuple(p) for p in report["stretch"]["limits"]] == [tuple(p) for p in limits]
    assert np.array_equal(read_array(out), numpy_render(value, counted, limits))


def corrupt_blocks(source: str, out: Path, blocks: list[tuple[int, int]]) -> str:
    """A copy of the tiled, DEFLATE-compressed ``source`` whose ``blocks`` (bx, by) cannot be decoded."""
    shutil.copy(source, out)
    ds = gdal.Open(str(out))
    band = ds.GetRasterBand(1)
    places = [(int(band.GetMetadataItem(f"BLOCK_OFFSET_{bx}_{by}", "TIFF")),
               int(band.GetMetadataItem(f"BLOCK_SIZE_{bx}_{by}", "TIFF"))) for bx, by in blocks]
    band = ds = None
    with open(out, "r+b") as fh:
        for offset, size in places:
            fh.seek(offset)
            fh.write(b"\xff" * size)
    return str(out)


def test_windows_outside_the_aoi_are_never_read(scene, tmp_path):
    """Windows of 256 on blocks of 256: the red blocks under windows wholly outside the triangle are made
    undecodable; the run with --aoi reads each block under the triangle once and none of the others."""
    aoi = tmp_path / "triangle.geojson"
    ring = write_aoi(aoi, scene["red"], TRIANGLE)
    inside = inside_centres(ring, scene["red"])
    height, width = inside.shape
    windows = plan_windows((width, height), (256, 256))
    read = [w for w in windows if inside[w.toslices()].any()]
    unread = [w for w in windows if not inside[w.toslices()].any()]
    assert read and unread
    bad = dict(scene, red=corrupt_blocks(scene["red"], tmp_path / "B04.tif",
                                         [(w.col_off // 256, w.row_off // 256) for w in unread]))
    whole = run_mpi_s2(["compose", *band_set_args([bad]), "-o", str(tmp_path / "whole.tif"), "-q",
                        "--window", "256"], ranks=3)
    assert whole.returncode != 0 and "B04.tif" in "".join(error_lines(whole.stderr))  # the corruption shows

    out = tmp_path / "clipped.tif"
    compose([bad], out, "--window", "256", "--aoi", str(aoi), "--report", str(tmp_path / "run.json"))
    report = json.loads((tmp_path / "run.json").read_text())
    assert report["size"] == [width, height]
    assert report["windows"] == len(read) and report["empty_windows_skipped"] == len(unread)
    assert report["inputs"][0]["blocks"]["decoded"] == report["inputs"][0]["blocks"]["distinct"] == 3 * len(read)
    full = tmp_path / "full.tif"
    compose([scene], full, "--window", "256")
    pixels, expected = read_array(out), read_array(full)
    assert np.array_equal(pixels[:, inside], expected[:, inside])
    assert (pixels[:, ~inside] == 0).all()


def test_resume_continues_the_same_aoi_and_refuses_another(scene, tmp_path):
    """A run that failed part-way is finished by --resume with its AOI; another AOI with the same envelope (so
    the same grid and windows) is refused: the fingerprint holds the polygon."""
    first, other = tmp_path / "first.geojson", tmp_path / "other.geojson"
    write_aoi(first, scene["red"], TRIANGLE)
    write_aoi(other, scene["red"], MIRRORED)
    tiles = ["--window", "256", "--co", "BLOCKXSIZE=256", "--co", "BLOCKYSIZE=256"]
    whole = tmp_path / "whole.tif"
    compose([scene], whole, *tiles, "--aoi", str(first), ranks=2)
    out = tmp_path / "rgb.tif"
    args = ["compose", *band_set_args([scene]), "-o", str(out), "-q", *tiles]
    failed = run_mpi_s2_to_death([*args, "--aoi", str(first)], 2,
                                 env={"MPI_S2_COMMIT_INTERVAL": "0", "MPI_S2_TEST_FAULT": "0:4:fail"})
    assert_exit(failed, 1)
    refused = run_mpi_s2([*args, "--aoi", str(other), "--resume"], ranks=2)
    assert refused.returncode == 2, refused.stderr
    lines = error_lines(refused.stderr)
    assert len(lines) == 1 and "aoi" in lines[0], refused.stderr
    resumed = run_mpi_s2([*args, "--aoi", str(first), "--resume"], ranks=3)
    assert resumed.returncode == 0, resumed.stderr
    assert np.array_equal(read_array(out), read_array(whole))
    assert gdal.Open(str(out)).GetGeoTransform() == gdal.Open(str(whole)).GetGeoTransform()


def test_an_aoi_that_misses_the_inputs_is_one_error_line(scene, tmp_path):
    aoi = tmp_path / "elsewhere.geojson"
    aoi.write_text(json.dumps({"type": "Polygon", "coordinates": [[[20, 10], [21, 10], [21, 11], [20, 10]]]}))
    result = run_mpi_s2(["compose", *band_set_args([scene]), "-o", str(tmp_path / "rgb.tif"), "--aoi", str(aoi)],
                        ranks=3)
    assert result.returncode == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and f"--aoi {aoi}: does not intersect the inputs" in lines[0], result.stderr
    assert not (tmp_path / "rgb.tif").exists()


# ------------------------------------------------------------------------------------------ the plan (no MPI)
def _config(band_sets, tmp_path: Path, aoi: Path | None, **options) -> ComposeConfig:
    return ComposeConfig(output=str(tmp_path / "rgb.tif"),
                         band_sets=tuple(BandFiles(b["red"], b["green"], b["blue"]) for b in band_sets),
                         aoi=str(aoi) if aoi else None, **options)


def test_plan_cuts_the_grid_and_keeps_no_window_outside(scene, tmp_path):
    aoi = tmp_path / "l-shape.geojson"
    ring = write_aoi(aoi, scene["red"], L_SHAPE)
    plan = make_plan(_config([scene], tmp_path, aoi, window=256))
    window = expected_window(ring, scene["red"])
    x0, dx, _, y0, _, dy = gdal.Open(scene["red"]).GetGeoTransform()
    assert plan.grid.size == (window.width, window.height)
    assert plan.grid.geotransform == (x0 + window.col_off * dx, dx, 0.0, y0 + window.row_off * dy, 0.0, dy)
    assert plan.sources[0].file_offset == (window.col_off, window.row_off)
    inside = inside_centres(ring, scene["red"])[window.toslices()]
    every = plan_windows(plan.grid.size, (256, 256))
    assert list(plan.windows) == [w for w in every if inside[w.toslices()].any()]
    assert plan.output.empty_windows == len(every) - len(plan.windows) > 0
    assert plan.aoi is not None and len(plan.aoi.wkt) < 64 * 1024  # small: broadcast with the plan
    unclipped = make_plan(_config([scene], tmp_path, None, window=256))
    assert "aoi" not in unclipped.output.fingerprint["options"]
    assert plan.output.fingerprint["options"]["aoi"] == plan.aoi.digest


def test_plan_stages_only_the_units_under_the_aoi(misaligned, tmp_path):
    """The shifted copy is staged (its blocks straddle the windows): only its units under kept windows."""
    aoi = tmp_path / "corner.geojson"
    write_aoi(aoi, misaligned[0]["red"], [(0.05, 0.05), (0.4, 0.05), (0.05, 0.4)])
    plan = make_plan(_config(misaligned, tmp_path, aoi))
    unclipped = make_plan(_config(misaligned, tmp_path, None))
    assert 0 < len(plan.stage_units) < len(unclipped.stage_units)


def test_mask_is_gdal_rasterize_of_the_polygon(scene, tmp_path):
    """Per window, :class:`AoiMask` gives the pixels GDAL's rasterizer burns for the whole grid (centres)."""
    ds = gdal.Open(scene["red"])
    grid = Grid(ds.RasterXSize, ds.RasterYSize, ds.GetGeoTransform(), ds.GetProjection())
    aoi = tmp_path / "l-shape.geojson"
    write_aoi(aoi, scene["red"], L_SHAPE)
    window, area = place_aoi(str(aoi), json.loads(aoi.read_text())["geometry"], grid)
    burnt = gdal.GetDriverByName("MEM").Create("", window.width, window.height, 1, gdal.GDT_Byte)
    burnt.SetGeoTransform(area.geotransform)
    burnt.SetProjection(grid.crs_wkt)
    vector = gdal.GetDriverByName("Memory").Create("", 0, 0, 0, gdal.GDT_Unknown)
    layer = vector.CreateLayer("aoi", srs=burnt.GetSpatialRef())
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetGeometry(ogr.CreateGeometryFromWkt(area.wkt))
    layer.CreateFeature(feature)
    gdal.RasterizeLayer(burnt, [1], layer, burn_values=[1])
    whole = burnt.ReadAsArray().astype(bool)
    mask = AoiMask(area)
    kinds = set()
    for w in plan_windows((window.width, window.height), (200, 150)):
        got = mask.inside(w)
        want = whole[w.toslices()]
        assert np.array_equal(np.ones(w.shape, dtype=bool) if got is None else got, want), w
        kinds.add(mask.classify(w))
        assert mask.classify(w) == (INSIDE if want.all() else OUTSIDE if not want.any() else PARTIAL)
    assert kinds == {INSIDE, OUTSIDE, PARTIAL}


def test_an_aoi_beside_the_inputs_is_an_input_error(scene, tmp_path):
    aoi = tmp_path / "beside.geojson"
    write_aoi(aoi, scene["red"], [(1.2, 0.1), (1.5, 0.1), (1.5, 0.5)])
    with pytest.raises(InputError, match=f"^--aoi {aoi}: does not intersect the inputs"):
        make_plan(_config([scene], tmp_path, aoi))


@pytest.mark.parametrize("envelope,window", [
    ((100.0, 200.0, -200.0, -100.0), Window(10, 10, 10, 10)),  # on pixel edges: no pixel more
    ((100.0 + 1e-9, 200.0 - 1e-9, -200.0, -100.0), Window(10, 10, 10, 10)),  # rounding noise: the same
    ((95.0, 201.0, -203.0, -99.0), Window(9, 9, 12, 12)),  # within pixels: outward
    ((-50.0, 50.0, -50.0, 50.0), Window(0, 0, 5, 5)),  # beyond the grid: cut to it
    ((1000.0, 1100.0, -200.0, -100.0), None),  # beside it
])
def test_envelope_is_snapped_outward_to_the_pixels(envelope, window):
    assert envelope_window(envelope, (0.0, 10.0, 0.0, 0.0, 0.0, -10.0), (50, 40)) == window


# ------------------------------------------------------------------------------------------ --extent (mpirun)
@pytest.mark.parametrize("case,extra", [
    ("mosaic", ["--window", "256"]),
    ("product", ["--cloud-mask", "--crs", "EPSG:32631", "--window", "256"]),  # reprojected: the warp is exact
])
def test_extent_cuts_the_output_to_whole_pixels_of_the_box(case, extra, misaligned, request, tmp_path):
    """``--extent`` gives gdal_translate -projwin's cut of the uncut output: the box snapped outward to pixels."""
    inputs = misaligned if case == "mosaic" else [request.getfixturevalue("product")]
    full, cut_out = tmp_path / "full.tif", tmp_path / "cut.tif"
    compose(inputs, full, *extra)
    x0, dx, _, y0, _, dy = gdal.Open(str(full)).GetGeoTransform()
    window = Window(301, 187, 517, 402)  # not on window or block boundaries
    box = (x0 + window.col_off * dx + 0.3 * dx, y0 + (window.row_off + window.height) * dy - 0.2 * dy,
           x0 + (window.col_off + window.width) * dx - 0.6 * dx, y0 + window.row_off * dy + 0.1 * dy)
    compose(inputs, cut_out, *extra, "--extent", ",".join(f"{v:.6f}" for v in box))
    reference = cut(full, window, tmp_path / "reference.tif")
    got, want = gdal.Open(str(cut_out)), gdal.Open(str(reference))
    assert got.GetGeoTransform() == want.GetGeoTransform()
    assert np.array_equal(read_array(cut_out), read_array(reference))
    assert (read_array(reference)[3] == 255).mean() > 0.5


def test_an_extent_beside_the_inputs_is_one_error_line(scene, tmp_path):
    result = run_mpi_s2(["compose", *band_set_args([scene]), "-o", str(tmp_path / "rgb.tif"), "--extent", "0,0,10,10"],
                        ranks=3)
    assert result.returncode == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "--extent 0,0,10,10: does not intersect the inputs (their mosaic spans" in lines[0]
    assert not (tmp_path / "rgb.tif").exists()
