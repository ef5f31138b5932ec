"""The output tiles of a campaign: an area of interest cut into tiles, one Slurm job each. Pure geometry, no MPI.

Two grids (``--grid``, :func:`parse_grid`):

* ``mgrs``: the Sentinel-2 tiling grid (:func:`mgrs_tiles`). A tile is named after its MGRS 100 km square
  (``32TMS``: UTM zone 32, latitude band T, column M, row S) and lies in that zone's UTM CRS (EPSG 326zz north,
  327zz south). Each tile is 109 800 m square (10 980 pixels of 10 m); its upper-left corner is its square's
  north-west corner moved outward onto the 60 m lattice of the UTM zone (through easting 0 and the equator):
  ``x = floor(west / 60) * 60``, ``y = ceil(north / 60) * 60`` (``north`` counted from the equator, negative in the
  south). So the tiles overlap their east and south neighbours by 9.8 km. Checked against real products:

  - ``/work/shared/data/s2-real/l2a-cog-T29RKH/B04.tif`` (T29RKH): origin (199 980, 2 800 020), 1098 x 1098 pixels
    of 100 m; its STAC item's footprint corners lie 1 m inside (199 980, 2 690 220)-(309 780, 2 800 020).
  - ``l1c-metadata/MTD_MSIL1C.xml`` (T32UPC): its footprint's corners are (600 000, 5 690 220)-(709 800, 5 800 020)
    in EPSG:32632 to the millimetre.
  - ``l2a-metadata/MTD_MSIL2A.xml`` (T29UNU, part of the tile): its north edge is at 5 900 040 (the square's
    5 900 000 moved *up* to the lattice, not to the nearest multiple of 60), its west edge at 499 980.
  - ``l1c-jp2-T33UUU/*_B04.jp2``, a crop at (330 000, 5 822 040): inside T33UUU (300 000, 5 790 240)-(409 800,
    5 900 040), on its 60 m lattice.

  Southern tiles follow the same rule with the northing counted from the equator (published items such as T22HBD
  at y = 5 900 020 and T54HVE at 6 000 040 in EPSG:327zz agree; no southern file is here to check).

  The squares that exist: those of each zone whose area meets a zone-and-band cell (6 by 8 degrees; band X is
  12 degrees tall; the UTM exceptions 31V/32V around Norway and 31X-37X around Svalbard are followed), from
  band F (56 degrees south, where Sentinel-2's systematic coverage begins) to 84 degrees north. A square that
  straddles two bands is named after the band holding most of it (Sentinel-2 has 50TMK, not 50SMK). This set is
  derived, not read from ESA's tiling-grid KML (not available here): it may hold a few sliver tiles at zone edges
  that ESA leaves out (it makes 57 474 tiles for the world; ESA's grid has about 56 700).

* a size in kilometres: a square grid (:func:`square_tiles`) in a given CRS, on the pixel lattice of the inputs,
  cells named ``rRRRcCCC`` from the north-west.

:func:`clip_to_area` cuts a tile down to the part of it the area covers (outward, to whole pixels).

Limitations: areas across the antimeridian are not supported (GeoJSON longitudes -180..180; a tile of zone 1 or
60 that overflows 180 degrees is tested on both sides, but an area itself must not wrap); no polar (UPS) tiles.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from osgeo import ogr, osr

from mpi_s2.errors import InputError, UsageError
from mpi_s2.planning.aoi import polygons_of

#: Side of a Sentinel-2 tile (metres): 10 980 pixels of 10 m.
S2_TILE_METRES = 109_800
#: Side of an MGRS grid square (metres).
SQUARE_METRES = 100_000
#: The lattice every Sentinel-2 tile corner lies on (metres): its coarsest band's pixels.
S2_LATTICE_METRES = 60
#: Points per side of a tile's outline in longitude and latitude.
OUTLINE_POINTS = 16
#: Longest edge of an area (degrees) transformed as a straight line.
DENSIFY_DEGREES = 0.01
#: The least common area (in pixels) for an area and a cell to meet: less is an edge they share, give or take the
#: rounding of transformed coordinates.
MIN_OVERLAP = 0.01
#: How close (in pixels) a coordinate may be to a pixel edge and count as on it.
SNAP_TOLERANCE = 1e-6

_BANDS = "CDEFGHJKLMNPQRSTUVWX"  # 8 degrees each from 80 S; X is 12 degrees (72 N to 84 N)
_FIRST_BAND = _BANDS.index("F")  # 56 S: Sentinel-2's grid begins there
_NORTH_BAND = _BANDS.index("N")
_COLUMN_LETTERS = ("STUVWXYZ", "ABCDEFGH", "JKLMNPQR")  # by zone % 3, for eastings 100 000 to 900 000
_ROW_LETTERS = "ABCDEFGHJKLMNPQRSTUV"  # every 100 km of northing, shifted by 5 in even zones
#: Cells that differ from 6 degrees: (zone, band) -> longitudes, None where the zone does not exist.
_ZONE_EXCEPTIONS: dict[tuple[int, str], tuple[float, float] | None] = {
    (31, "V"): (0.0, 3.0), (32, "V"): (3.0, 12.0),
    (31, "X"): (0.0, 9.0), (32, "X"): None, (33, "X"): (9.0, 21.0), (34, "X"): None,
    (35, "X"): (21.0, 33.0), (36, "X"): None, (37, "X"): (33.0, 42.0),
}
#: How far (degrees of latitude) a tile may reach beyond its band: 100 km of square and 9.8 km of overlap.
_BAND_REACH = 1.5
#: How far (km) a tile may reach beyond its zone's meridians.
_ZONE_REACH_KM = 160.0


@dataclass(frozen=True)
class OutputTile:
    """One output of a campaign: a rectangle on whole pixels of ``resolution`` metres in the CRS ``epsg``."""

    name: str  # "32TMS" (MGRS) or "r003c007" (square grid)
    epsg: int
    bounds: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax
    resolution: int = 10

    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        xmin, ymin, xmax, ymax = self.bounds
        return round((xmax - xmin) / self.resolution), round((ymax - ymin) / self.resolution)

    def lonlat_polygon(self) -> dict[str, Any]:
        """The bounds as a GeoJSON Polygon in longitude and latitude (its edges densified)."""
        points = _transform(_outline(self.bounds), _transformer(self.epsg, to_lonlat=True))
        return {"type": "Polygon", "coordinates": [[[x, y] for x, y in points + points[:1]]]}

    def geojson(self) -> dict[str, Any]:
        """A GeoJSON Feature of the bounds in the tile's own CRS, which its "crs" member names (as OGR reads it)."""
        xmin, ymin, xmax, ymax = self.bounds
        ring = [[xmin, ymin], [xmax, ymin], [xmax, ymax], [xmin, ymax], [xmin, ymin]]
        return {"type": "Feature",
                "crs": {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{self.epsg}"}},
                "properties": {"tile": self.name, "epsg": self.epsg},
                "geometry": {"type": "Polygon", "coordinates": [ring]}}


def parse_grid(text: str) -> str | float:
    """``--grid``: "mgrs", or a tile size in kilometres (> 0)."""
    if text.strip().lower() == "mgrs":
        return "mgrs"
    try:
        size = float(text)
    except ValueError:
        size = math.nan
    if not (math.isfinite(size) and size > 0):
        raise UsageError(f"--grid {text}: expected mgrs or a tile size in km > 0")
    return size


# --- MGRS / Sentinel-2 ---------------------------------------------------------------------------------------


def mgrs_tiles(area: dict[str, Any], resolution: int = 10) -> list[OutputTile]:
    """Every Sentinel-2 tile whose footprint meets ``area`` (GeoJSON, longitude and latitude), whole (not cut to
    the area), sorted by name."""
    tiles = [OutputTile(name, epsg, bounds, resolution) for name, epsg, bounds in _mgrs_hits(_lonlat_area(area))]
    return sorted(tiles, key=lambda tile: tile.name)


def count_mgrs_tiles(area: dict[str, Any]) -> int:
    """``len(mgrs_tiles(area))``, for a dry run."""
    return sum(1 for _ in _mgrs_hits(_lonlat_area(area)))


def _mgrs_hits(area: ogr.Geometry):
    """(name, epsg, bounds) of the tiles that meet ``area`` (longitude, latitude)."""
    envelope = area.GetEnvelope()
    for zone, band in _cells_near(envelope):
        for column, row in _squares(zone, band):
            name, epsg, bounds = _s2_tile(zone, band, column, row)
            if _meets(area, envelope, _footprint(bounds, epsg, zone)):
                yield name, epsg, bounds


def _cells_near(envelope: tuple[float, float, float, float]) -> list[tuple[int, int]]:
    """The (zone, band index) cells whose tiles may reach an envelope (OGR's order: lon min, max, lat min, max)."""
    west, east, south, north = envelope
    first = max(_FIRST_BAND, _band_at(south - _BAND_REACH))
    last = _band_at(north + _BAND_REACH)
    steepest = min(84.0, max(abs(south), abs(north)) + _BAND_REACH)
    reach = min(180.0, _ZONE_REACH_KM / (111.32 * math.cos(math.radians(steepest))))
    cells = []
    for band in range(first, last + 1):
        for zone in range(1, 61):
            lons = _cell_longitudes(zone, band)
            if lons is not None and _lon_overlap(lons, (west - reach, east + reach)):
                cells.append((zone, band))
    return cells


def _band_at(lat: float) -> int:
    return max(0, min(len(_BANDS) - 1, math.floor((lat + 80) / 8)))


def _lon_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return any(a[0] + shift <= b[1] and b[0] <= a[1] + shift for shift in (-360.0, 0.0, 360.0))


def _cell_longitudes(zone: int, band: int) -> tuple[float, float] | None:
    """The longitudes of a zone within a band (None where Svalbard's exceptions remove the zone)."""
    key = (zone, _BANDS[band])
    if key in _ZONE_EXCEPTIONS:
        return _ZONE_EXCEPTIONS[key]
    west = (zone - 1) * 6.0 - 180.0
    return west, west + 6.0


def _cell_latitudes(band: int) -> tuple[float, float]:
    south = -80.0 + 8 * band
    return south, 84.0 if _BANDS[band] == "X" else south + 8


def _utm_epsg(zone: int, band: int) -> int:
    return (32600 if band >= _NORTH_BAND else 32700) + zone


@lru_cache(maxsize=None)
def _squares(zone: int, band: int) -> tuple[tuple[int, int], ...]:
    """The 100 km squares (easting // 100 km, northing // 100 km) named in this zone and band: those that meet the
    cell and have more of their area in it than in the band below or above (ties go to the northern band)."""
    mine = _square_areas(zone, band)
    below = _square_areas(zone, band - 1) if _same_hemisphere(band, band - 1) else {}
    above = _square_areas(zone, band + 1) if _same_hemisphere(band, band + 1) else {}
    return tuple(sorted(key for key, area in mine.items()
                        if area >= below.get(key, 0.0) and area > above.get(key, 0.0)))


def _same_hemisphere(band: int, other: int) -> bool:
    return _FIRST_BAND <= other < len(_BANDS) and (band >= _NORTH_BAND) == (other >= _NORTH_BAND)


@lru_cache(maxsize=None)
def _square_areas(zone: int, band: int) -> dict[tuple[int, int], float]:
    """Area (m²) of each 100 km square's part in the cell (zone, band), for the squares that meet it."""
    lons = _cell_longitudes(zone, band)
    if lons is None or not _FIRST_BAND <= band < len(_BANDS):
        return {}
    lats = _cell_latitudes(band)
    outline = [(lons[0], lats[0]), (lons[1], lats[0]), (lons[1], lats[1]), (lons[0], lats[1])]
    cell = _polygon(_transform(_densify(outline, 32), _transformer(_utm_epsg(zone, band))))
    xmin, xmax, ymin, ymax = cell.GetEnvelope()
    areas = {}
    for column in range(math.floor(xmin / SQUARE_METRES), math.ceil(xmax / SQUARE_METRES)):
        for row in range(math.floor(ymin / SQUARE_METRES), math.ceil(ymax / SQUARE_METRES)):
            x, y = column * SQUARE_METRES, row * SQUARE_METRES
            area = _surface(cell.Intersection(_box((x, y, x + SQUARE_METRES, y + SQUARE_METRES))))
            if area > 0:
                areas[(column, row)] = area
    return areas


def _s2_tile(zone: int, band: int, column: int, row: int) -> tuple[str, int, tuple[float, float, float, float]]:
    """Name, EPSG code and bounds of the Sentinel-2 tile of a square."""
    if not 1 <= column <= 8:
        raise ValueError(f"zone {zone}{_BANDS[band]}: no MGRS column letter for easting {column * SQUARE_METRES}")
    letters = _COLUMN_LETTERS[zone % 3][column - 1] + _ROW_LETTERS[(row + (5 if zone % 2 == 0 else 0)) % 20]
    false_northing = 0 if band >= _NORTH_BAND else 10_000_000
    x = math.floor(column * SQUARE_METRES / S2_LATTICE_METRES) * S2_LATTICE_METRES
    north = (row + 1) * SQUARE_METRES - false_northing
    y = math.ceil(north / S2_LATTICE_METRES) * S2_LATTICE_METRES + false_northing
    bounds = (float(x), float(y - S2_TILE_METRES), float(x + S2_TILE_METRES), float(y))
    return f"{zone:02d}{_BANDS[band]}{letters}", _utm_epsg(zone, band), bounds


def _footprint(bounds: tuple[float, float, float, float], epsg: int, zone: int) -> ogr.Geometry:
    """A tile's outline in longitude and latitude, its longitudes continuous around its zone's meridian."""
    meridian = zone * 6.0 - 183.0
    points = _transform(_outline(bounds), _transformer(epsg, to_lonlat=True))
    return _polygon([(meridian + (lon - meridian + 180.0) % 360.0 - 180.0, lat) for lon, lat in points])


def _meets(area: ogr.Geometry, envelope: tuple[float, float, float, float], footprint: ogr.Geometry) -> bool:
    """Whether a footprint meets the area, also across the antimeridian (shifted by 360 degrees)."""
    fxmin, fxmax, fymin, fymax = footprint.GetEnvelope()
    if fymax < envelope[2] or fymin > envelope[3]:
        return False
    for shift in (0.0, -360.0, 360.0):
        if fxmin + shift <= envelope[1] and envelope[0] <= fxmax + shift:
            moved = footprint if shift == 0 else _shifted(footprint, shift)
            if area.Intersects(moved):
                return True
    return False


def _shifted(polygon: ogr.Geometry, dx: float) -> ogr.Geometry:
    ring = polygon.GetGeometryRef(0)
    return _polygon([(ring.GetX(i) + dx, ring.GetY(i)) for i in range(ring.GetPointCount() - 1)])


# --- square grid -----------------------------------------------------------------------------------------------


def square_tiles(area: dict[str, Any], size_km: float, epsg: int, origin: tuple[float, float],
                 resolution: int = 10) -> list[OutputTile]:
    """Square cells of ``size_km`` (a whole number of pixels) in the CRS ``epsg``, on the pixel lattice through
    ``origin``, laid from the north-west corner of the area's envelope (snapped outward to whole pixels) and cut
    to it; those that meet the area, named ``rRRRcCCC`` from the north-west, in that order."""
    cell = round(size_km * 1000 / resolution)
    if cell <= 0:
        raise UsageError(f"--grid {size_km:g}: a tile of {size_km:g} km is less than one pixel of {resolution} m")
    polygon = _area_in(_lonlat_area(area), epsg)
    xmin, xmax, ymin, ymax = polygon.GetEnvelope()
    ex0, ey0, ex1, ey1 = _snap_out((xmin, ymin, xmax, ymax), origin, resolution)
    step = cell * resolution
    columns, rows = math.ceil(round((ex1 - ex0) / step, 9)), math.ceil(round((ey1 - ey0) / step, 9))
    tiles = []
    for r in range(rows):
        top = ey1 - r * step
        for c in range(columns):
            left = ex0 + c * step
            bounds = (left, max(ey0, top - step), min(ex1, left + step), top)
            if _overlaps(polygon, _box(bounds), MIN_OVERLAP * resolution**2):
                tiles.append(OutputTile(f"r{r:03d}c{c:03d}", epsg, bounds, resolution))
    return tiles


def clip_to_area(tile: OutputTile, area: dict[str, Any]) -> OutputTile | None:
    """``tile`` cut to the envelope of the part of ``area`` inside it, snapped outward to the tile's pixels; None
    when the area misses the tile."""
    lonlat = _lonlat_area(area)
    reach = _lonlat_envelope(tile)
    near = lonlat.Intersection(_box(reach))
    if near is None or near.IsEmpty():
        return None
    part = _area_in(near, tile.epsg).Intersection(_box(tile.bounds))
    if _surface(part) <= MIN_OVERLAP * tile.resolution**2:
        return None
    xmin, xmax, ymin, ymax = part.GetEnvelope()
    x0, y0, x1, y1 = _snap_out((xmin, ymin, xmax, ymax), (tile.bounds[0], tile.bounds[3]), tile.resolution)
    tb = tile.bounds
    bounds = (max(x0, tb[0]), max(y0, tb[1]), min(x1, tb[2]), min(y1, tb[3]))
    return OutputTile(tile.name, tile.epsg, bounds, tile.resolution)


def _lonlat_envelope(tile: OutputTile) -> tuple[float, float, float, float]:
    """The tile's outline's envelope in longitude and latitude, a little wider (xmin, ymin, xmax, ymax)."""
    ring = tile.lonlat_polygon()["coordinates"][0]
    lons, lats = [p[0] for p in ring], [p[1] for p in ring]
    margin = 0.05
    return min(lons) - margin, max(-90.0, min(lats) - margin), max(lons) + margin, min(90.0, max(lats) + margin)


def _snap_out(box: tuple[float, float, float, float], origin: tuple[float, float], resolution: float
              ) -> tuple[float, float, float, float]:
    """``box`` (xmin, ymin, xmax, ymax) widened to the pixel edges ``origin + k * resolution``."""
    x0, y0 = origin

    def down(v: float, o: float) -> float:
        return o + math.floor((v - o) / resolution + SNAP_TOLERANCE) * resolution

    def up(v: float, o: float) -> float:
        return o + math.ceil((v - o) / resolution - SNAP_TOLERANCE) * resolution

    return down(box[0], x0), down(box[1], y0), up(box[2], x0), up(box[3], y0)


def _overlaps(polygon: ogr.Geometry, box: ogr.Geometry, least: float) -> bool:
    """Whether they share more than ``least`` of area (not only an edge, give or take rounding)."""
    if not polygon.Intersects(box):
        return False
    if polygon.Contains(box):
        return True
    return _surface(polygon.Intersection(box)) > least


# --- geometry helpers ------------------------------------------------------------------------------------------


def _lonlat_area(area: dict[str, Any]) -> ogr.Geometry:
    """A GeoJSON geometry's polygons, as one valid multipolygon in longitude and latitude."""
    shape = ogr.CreateGeometryFromJson(json.dumps(area))
    if shape is None:
        raise InputError("the area of interest is not valid GeoJSON")
    parts = polygons_of(shape)
    if parts.IsEmpty():
        raise InputError("the area of interest has no polygon with an area")
    return parts


def _area_in(lonlat: ogr.Geometry, epsg: int) -> ogr.Geometry:
    """An area (longitude, latitude) densified and transformed to ``epsg``."""
    placed = lonlat.Clone()
    placed.Segmentize(DENSIFY_DEGREES)
    if placed.Transform(_transformer(epsg)) != 0:
        raise InputError(f"the area of interest cannot be transformed to EPSG:{epsg}")
    return placed if placed.IsValid() else placed.MakeValid()


@lru_cache(maxsize=None)
def _srs(epsg: int) -> osr.SpatialReference:
    srs = osr.SpatialReference()
    if srs.ImportFromEPSG(epsg) != 0:
        raise InputError(f"EPSG:{epsg}: unknown CRS")
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


@lru_cache(maxsize=None)
def _transformer(epsg: int, to_lonlat: bool = False) -> osr.CoordinateTransformation:
    """Longitude and latitude to ``epsg`` (or back)."""
    pair = (_srs(epsg), _srs(4326)) if to_lonlat else (_srs(4326), _srs(epsg))
    return osr.CoordinateTransformation(*pair)


def _transform(points: list[tuple[float, float]], transformer: osr.CoordinateTransformation
               ) -> list[tuple[float, float]]:
    return [(p[0], p[1]) for p in transformer.TransformPoints(points)]


def _outline(bounds: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    """The rectangle's outline, counter-clockwise from the south-west, :data:`OUTLINE_POINTS` per side."""
    xmin, ymin, xmax, ymax = bounds
    return _densify([(xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax)], OUTLINE_POINTS)


def _densify(corners: list[tuple[float, float]], per_side: int) -> list[tuple[float, float]]:
    points = []
    for (xa, ya), (xb, yb) in zip(corners, corners[1:] + corners[:1], strict=True):
        points += [(xa + (xb - xa) * i / per_side, ya + (yb - ya) * i / per_side) for i in range(per_side)]
    return points


def _polygon(points: list[tuple[float, float]]) -> ogr.Geometry:
    ring = ogr.Geometry(ogr.wkbLinearRing)
    for x, y in points + points[:1]:
        ring.AddPoint_2D(x, y)
    polygon = ogr.Geometry(ogr.wkbPolygon)
    polygon.AddGeometry(ring)
    return polygon


def _surface(geometry: ogr.Geometry | None) -> float:
    """The area of a geometry's polygons (0 for lines and points, which OGR would warn about)."""
    if geometry is None or geometry.IsEmpty():
        return 0.0
    kind = ogr.GT_Flatten(geometry.GetGeometryType())
    if kind in (ogr.wkbPolygon, ogr.wkbMultiPolygon):
        return float(geometry.GetArea())
    if kind == ogr.wkbGeometryCollection:
        return sum(_surface(geometry.GetGeometryRef(i)) for i in range(geometry.GetGeometryCount()))
    return 0.0


def _box(bounds: tuple[float, float, float, float]) -> ogr.Geometry:
    xmin, ymin, xmax, ymax = bounds
    return _polygon([(xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax)])
