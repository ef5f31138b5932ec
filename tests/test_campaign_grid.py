"""Campaign output tiles (mpi_s2.campaign.grid): the Sentinel-2 grid against real products, the square grid and
the clipping against hand-computed numbers. No MPI."""

from __future__ import annotations

import json
import os
import re
import time

import pytest
from osgeo import gdal, ogr, osr

from mpi_s2.campaign.grid import (
    OutputTile,
    clip_to_area,
    count_mgrs_tiles,
    mgrs_tiles,
    parse_grid,
    square_tiles,
)
from mpi_s2.errors import UsageError

REAL = "/work/shared/data/s2-real"
needs_real = pytest.mark.skipif(not os.path.isdir(REAL), reason=f"{REAL} (real Sentinel-2 files) is not here")


def box(west: float, south: float, east: float, north: float) -> dict:
    return {"type": "Polygon", "coordinates": [[[west, south], [east, south], [east, north], [west, north],
                                                [west, south]]]}


def tile_named(tiles: list[OutputTile], name: str) -> OutputTile:
    found = [t for t in tiles if t.name == name]
    assert found, f"{name} not in {[t.name for t in tiles]}"
    return found[0]


def to_utm(epsg: int, lon: float, lat: float) -> tuple[float, float]:
    a, b = osr.SpatialReference(), osr.SpatialReference()
    a.ImportFromEPSG(4326)
    b.ImportFromEPSG(epsg)
    for s in (a, b):
        s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    x, y, _ = osr.CoordinateTransformation(a, b).TransformPoint(lon, lat)
    return x, y


# --- parse_grid ---------------------------------------------------------------------------------------------


def test_parse_grid_values():
    assert parse_grid("mgrs") == "mgrs"
    assert parse_grid("20") == 20.0
    assert parse_grid("10.24") == pytest.approx(10.24)


@pytest.mark.parametrize("text", ["0", "-1", "abc", "", "nan", "inf"])
def test_parse_grid_errors(text):
    with pytest.raises(UsageError, match=re.escape(f"--grid {text}: expected mgrs or a tile size in km > 0")):
        parse_grid(text)


# --- MGRS / Sentinel-2, against real products -----------------------------------------------------------------


@needs_real
def test_29rkh_matches_the_cog_origin_and_stac_item():
    ds = gdal.Open(f"{REAL}/l2a-cog-T29RKH/B04.tif")
    x0, dx, _, y0, _, dy = ds.GetGeoTransform()
    with open(f"{REAL}/l2a-cog-T29RKH/S2A_29RKH_20200219_0_L2A.json") as fh:
        item = json.load(fh)
    west, south, east, north = item["bbox"]
    tile = tile_named(mgrs_tiles(box((west + east) / 2, (south + north) / 2, (west + east) / 2 + 0.01,
                                     (south + north) / 2 + 0.01)), "29RKH")
    assert tile.epsg == item["properties"]["proj:epsg"] == 32629
    assert tile.bounds == (x0, y0 + dy * ds.RasterYSize, x0 + dx * ds.RasterXSize, y0)
    assert tile.bounds == (199980, 2690220, 309780, 2800020)
    assert tile.size() == (10980, 10980)
    ring = tile.lonlat_polygon()["coordinates"][0]
    lons, lats = [p[0] for p in ring], [p[1] for p in ring]
    assert (min(lons), min(lats), max(lons), max(lats)) == pytest.approx((west, south, east, north), abs=1e-4)


@needs_real
def test_32upc_matches_the_l1c_footprint():
    text = open(f"{REAL}/l1c-metadata/MTD_MSIL1C.xml").read()
    assert "_T32UPC_" in text
    numbers = [float(v) for v in re.search(r"<EXT_POS_LIST>([^<]*)<", text).group(1).split()]
    corners = list(zip(numbers[1::2], numbers[0::2], strict=True))[:4]  # lon, lat
    tile = tile_named(mgrs_tiles(box(11.2, 51.8, 11.3, 51.9)), "32UPC")
    assert tile.bounds == (600000, 5690220, 709800, 5800020)
    xs, ys = zip(*(to_utm(32632, lon, lat) for lon, lat in corners), strict=True)
    assert (min(xs), min(ys), max(xs), max(ys)) == pytest.approx(tile.bounds, abs=0.01)


@needs_real
def test_29unu_north_edge_is_snapped_up_to_60_m():
    text = open(f"{REAL}/l2a-metadata/MTD_MSIL2A.xml").read()
    assert "_T29UNU_" in text
    numbers = [float(v) for v in re.search(r"<EXT_POS_LIST>([^<]*)<", text).group(1).split()]
    points = [to_utm(32629, lon, lat) for lat, lon in zip(numbers[0::2], numbers[1::2], strict=True)]
    tile = tile_named(mgrs_tiles(box(-8.5, 52.6, -8.4, 52.7)), "29UNU")
    assert tile.bounds == (499980, 5790240, 609780, 5900040)
    # its two corners on the west edge (the swath's edge crosses the tile elsewhere): the tile's corners there
    west = sorted((y, x) for x, y in points if x < 500000)
    assert [y for y, _ in west] == pytest.approx([5790240, 5900040], abs=0.01)  # not 5 899 980 nor 5 900 020
    assert [x for _, x in west] == pytest.approx([499980, 499980], abs=2)  # (longitudes rounded to 1e-6 degree)


@needs_real
def test_33uuu_holds_the_crop():
    ds = gdal.Open(f"{REAL}/l1c-jp2-T33UUU/T33UUU_20170216T102101_B04.jp2")
    x0, dx, _, y0, _, dy = ds.GetGeoTransform()
    x1, y1 = x0 + dx * ds.RasterXSize, y0 + dy * ds.RasterYSize
    assert (x0, y0) == (330000, 5822040)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    ll = osr.SpatialReference()
    ll.ImportFromEPSG(4326)
    ll.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    lon, lat, _ = osr.CoordinateTransformation(srs, ll).TransformPoint(x0, y0)
    tile = tile_named(mgrs_tiles(box(lon, lat - 0.01, lon + 0.01, lat)), "33UUU")
    assert tile.epsg == 32633
    assert tile.bounds == (300000, 5790240, 409800, 5900040)
    xmin, ymin, xmax, ymax = tile.bounds
    assert xmin <= x0 < x1 <= xmax and ymin <= y1 < y0 <= ymax
    assert (x0 - xmin) % 60 == 0 and (ymax - y0) % 60 == 0


# --- MGRS: hand-computed names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("lon, lat, name, bounds", [
    # zone 32 (32 % 3 = 2: columns J-R, M = 400 km); band T; row S = index 16, minus 5 in even zones -> 5 100 km
    (9.0, 46.5, "32TMS", (399960, 5090220, 509760, 5200020)),
    # zone 31 (31 % 3 = 1: columns A-H, D = 400 km), row Q = 14, odd zone -> 5 400 km; Paris
    (2.35, 48.86, "31UDQ", (399960, 5390220, 509760, 5500020)),
    # a square across 40 N: most of it in band T, so 50TMK (not 50SMK)
    (116.381, 39.977, "50TMK", (399960, 4390200, 509760, 4500000)),
    # south: zone 22 even, row D = 3 -> (3 - 5) % 20 = 18 -> 5 800 km; northing from the equator -4 100 km -> up
    (-53.7, -37.1, "22HBD", (199980, 5790220, 309780, 5900020)),
])
def test_hand_computed_tiles(lon, lat, name, bounds):
    tiles = mgrs_tiles(box(lon, lat, lon + 0.001, lat + 0.001))
    tile = tile_named(tiles, name)
    assert tile.bounds == bounds
    assert tile.epsg == (32600 if lat > 0 else 32700) + int(name[:2])


def test_32v_is_widened_west_for_norway():
    names = [t.name for t in mgrs_tiles(box(5.30, 60.38, 5.34, 60.40))]  # Bergen: 32V, not 31V
    assert names and all(n.startswith("32V") for n in names)
    assert "32VKN" in names


def test_tiles_are_sorted_and_overlap_their_neighbours():
    tiles = mgrs_tiles(box(8.0, 46.0, 10.0, 47.0))
    names = [t.name for t in tiles]
    assert names == sorted(names) and len(set(names)) == len(names)
    for t in tiles:
        assert t.size() == (10980, 10980)
        assert t.bounds[0] % 60 == 0 and t.bounds[3] % 60 == 0


def test_geojson_is_read_by_ogr_in_the_tile_crs():
    tile = OutputTile("32TMS", 32632, (399960.0, 5090220.0, 509760.0, 5200020.0), 10)
    feature = tile.geojson()
    assert feature["properties"] == {"tile": "32TMS", "epsg": 32632}
    ds = gdal.OpenEx(json.dumps({"type": "FeatureCollection", "crs": feature["crs"], "features": [feature]}))
    layer = ds.GetLayer(0)
    assert layer.GetSpatialRef().GetAuthorityCode(None) == "32632"
    assert layer.GetExtent() == (399960.0, 509760.0, 5090220.0, 5200020.0)
    polygon = tile.lonlat_polygon()
    assert polygon["type"] == "Polygon" and len(polygon["coordinates"][0]) == 65
    lon, lat = polygon["coordinates"][0][0]
    assert 7 < lon < 8 and 45 < lat < 47  # lon, lat order


def test_count_over_europe_is_plausible_and_fast():
    start = time.perf_counter()
    n = count_mgrs_tiles(box(-25, 34, 45, 72))
    elapsed = time.perf_counter() - start
    print(f"Europe (-25..45, 34..72): {n} Sentinel-2 tiles in {elapsed:.2f} s")
    assert 2000 < n < 6000
    assert elapsed < 10


def test_count_agrees_with_the_list():
    area = box(5.0, 45.0, 11.0, 48.0)
    assert count_mgrs_tiles(area) == len(mgrs_tiles(area))


# --- square grid --------------------------------------------------------------------------------------------------


def utm_area(epsg: int, points: list[tuple[float, float]]) -> dict:
    """A lon/lat polygon that is (nearly exactly) the given polygon of UTM ``points`` (edges straight in UTM)."""
    ring = ogr.Geometry(ogr.wkbLinearRing)
    for x, y in points + points[:1]:
        ring.AddPoint_2D(x, y)
    polygon = ogr.Geometry(ogr.wkbPolygon)
    polygon.AddGeometry(ring)
    polygon.Segmentize(100)
    utm, ll = osr.SpatialReference(), osr.SpatialReference()
    utm.ImportFromEPSG(epsg)
    ll.ImportFromEPSG(4326)
    for s in (utm, ll):
        s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    polygon.Transform(osr.CoordinateTransformation(utm, ll))
    return json.loads(polygon.ExportToJson())


def square_area(epsg: int, xmin: float, ymin: float, xmax: float, ymax: float) -> dict:
    return utm_area(epsg, [(xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax)])


def test_square_grid_by_hand():
    # area 500 003 .. 524 997 east, 5 100 004 .. 5 119 996 north; lattice through (5, 5), 10 m pixels:
    # envelope snapped out -> 499 995 .. 525 005 (2501 px), 5 099 995 .. 5 120 005 (2001 px); 10 km cells
    area = square_area(32632, 500003, 5100004, 524997, 5119996)
    tiles = square_tiles(area, 10, 32632, (5.0, 5.0))
    assert [t.name for t in tiles] == ["r000c000", "r000c001", "r000c002",
                                       "r001c000", "r001c001", "r001c002",
                                       "r002c000", "r002c001", "r002c002"]
    by = {t.name: t for t in tiles}
    assert by["r000c000"].bounds == (499995, 5110005, 509995, 5120005)
    assert by["r001c001"].bounds == (509995, 5100005, 519995, 5110005)
    assert by["r002c002"].bounds == (519995, 5099995, 525005, 5100005)  # last row and column smaller
    assert by["r002c002"].size() == (501, 1)
    assert by["r000c002"].size() == (501, 1000)
    for t in tiles:
        assert t.epsg == 32632 and t.resolution == 10
        assert all((v - 5) % 10 == 0 for v in t.bounds)


def test_square_grid_keeps_only_cells_on_the_polygon():
    # an L: the north-east cell of its 2 x 2 envelope only touches it
    l_shape = utm_area(32632, [(500000, 5100000), (520000, 5100000), (520000, 5110000), (510000, 5110000),
                               (510000, 5120000), (500000, 5120000)])
    tiles = square_tiles(l_shape, 10, 32632, (0.0, 0.0))
    assert [t.name for t in tiles] == ["r000c000", "r001c000", "r001c001"]
    assert tile_named(tiles, "r001c001").bounds == (510000, 5100000, 520000, 5110000)


def test_square_grid_rounds_size_to_pixels():
    area = square_area(32632, 500000, 5100000, 500100, 5100100)
    (tile,) = square_tiles(area, 0.2, 32632, (0.0, 0.0), resolution=10)
    assert tile.size() == (10, 10)
    with pytest.raises(UsageError):
        square_tiles(area, 0.004, 32632, (0.0, 0.0), resolution=10)


# --- clip_to_area --------------------------------------------------------------------------------------------------


def test_clip_to_area_snaps_outward_on_the_tile_lattice():
    tile = OutputTile("32TMS", 32632, (399960.0, 5090220.0, 509760.0, 5200020.0), 10)
    area = square_area(32632, 420003, 5150001, 430007, 5160009)
    clipped = clip_to_area(tile, area)
    assert clipped is not None and clipped.name == "32TMS" and clipped.epsg == 32632
    assert clipped.bounds == (420000, 5150000, 430010, 5160010)


def test_clip_to_area_never_beyond_the_tile_and_none_when_apart():
    tile = OutputTile("32TMS", 32632, (399960.0, 5090220.0, 509760.0, 5200020.0), 10)
    over = square_area(32632, 500000, 5190000, 530000, 5230000)
    assert clip_to_area(tile, over).bounds == (500000, 5190000, 509760, 5200020)
    assert clip_to_area(tile, square_area(32632, 600000, 5100000, 610000, 5110000)) is None
