"""An area of interest (``--aoi FILE.geojson``) on the output grid: pure geometry, no MPI.

The planner reads the file (:func:`mpi_s2.inputs.area.read_aoi`: a polygon in longitude and latitude) and
:func:`place_aoi` puts it on the mosaic's grid:

* Its edges are straight in longitude and latitude (GeoJSON): they are densified every :data:`DENSIFY_DEGREES`
  before the vertices are transformed to the output CRS, so they stay within a millimetre of that.
* The output is the mosaic cut to the polygon's envelope, snapped outward to the mosaic's pixels (same origin and
  resolution: the output's pixels are the inputs' pixels, nothing is resampled) and intersected with it.
* A pixel is inside when its centre is inside the polygon (GDAL's rasterization rule, without ALL_TOUCHED).

:class:`AoiMask` tells, for a window of the output, which of its pixels are inside: a window is
:data:`INSIDE` (every pixel), :data:`OUTSIDE` (none: never read, left as nodata like the gaps of a mosaic) or
:data:`PARTIAL` (read, and the pixels outside are nodata). The planner and the workers ask the same question of
the same polygon, so they agree.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from osgeo import gdal, ogr, osr

from mpi_s2.errors import InputError
from mpi_s2.inputs.bands import Grid
from mpi_s2.windows import Window

gdal.UseExceptions()  # (OGR and OSR keep their return codes: this module checks them)

#: Longest edge (degrees) transformed as a straight line: a chord of 0.001 degree strays less than a millimetre
#: from the edge it stands for in a UTM zone (3.6 cm at 0.01 degree, 3.6 m at 0.1 degree).
DENSIFY_DEGREES = 0.001
#: How close (in pixels) an envelope edge may be to a pixel edge and count as on it (not one more pixel out).
SNAP_TOLERANCE = 1e-6

INSIDE, PARTIAL, OUTSIDE = "inside", "partial", "outside"


@dataclass(frozen=True)
class AreaOfInterest:
    """The AOI on the output grid, as the plan carries it to every rank (small: no pixels)."""

    path: str  # the --aoi file, for messages
    wkt: str  # its polygon in the output CRS, cut to the output's extent (one pixel beyond)
    geotransform: tuple[float, float, float, float, float, float]  # the output grid's
    crs_wkt: str  # the output grid's

    @property
    def digest(self) -> str:
        """What identifies the polygon in the run's fingerprint (a resume with another AOI is refused)."""
        return hashlib.sha256(self.wkt.encode()).hexdigest()


def place_aoi(path: str, geometry: dict[str, Any], grid: Grid) -> tuple[Window, AreaOfInterest]:
    """The part of ``grid`` (the mosaic) that the AOI ``geometry`` (GeoJSON, longitude and latitude) covers: its
    envelope snapped outward to ``grid``'s pixels and cut to it; and the AOI on that part's grid.
    :class:`InputError` naming ``--aoi path`` when it cannot be placed or misses the mosaic."""
    if not grid.crs_wkt:
        raise InputError(f"--aoi {path}: the inputs have no CRS, so they cannot be clipped to it")
    gt = grid.geotransform
    if gt[2] or gt[4]:
        raise InputError(f"--aoi {path}: the output grid is rotated (not north-up), so it cannot be clipped")
    polygon = _in_crs(_lonlat_area(geometry, path), grid.crs_wkt, path)
    window = envelope_window(polygon.GetEnvelope(), gt, grid.size)
    if window is not None:
        part_gt = (gt[0] + window.col_off * gt[1], gt[1], 0.0, gt[3] + window.row_off * gt[5], 0.0, gt[5])
        polygon = polygons_of(polygon.Intersection(_rectangle(part_gt, Window(0, 0, window.width, window.height),
                                                        margin=1)))
    if window is None or polygon.IsEmpty():
        raise InputError(f"--aoi {path}: does not intersect the inputs{_where(grid)}")
    return window, AreaOfInterest(path, polygon.ExportToWkt(), part_gt, grid.crs_wkt)


def envelope_window(envelope: tuple[float, float, float, float], geotransform, size: tuple[int, int]
                    ) -> Window | None:
    """The pixels of a north-up grid (``geotransform``, ``size``) that an ``envelope`` (OGR's order: min x, max x,
    min y, max y, in the grid's CRS) touches, snapped outward to whole pixels; None when it misses the grid."""
    minx, maxx, miny, maxy = envelope
    x0, dx, _, y0, _, dy = geotransform
    cols = sorted(((minx - x0) / dx, (maxx - x0) / dx))
    rows = sorted(((miny - y0) / dy, (maxy - y0) / dy))
    c0, c1 = max(0, math.floor(cols[0] + SNAP_TOLERANCE)), min(size[0], math.ceil(cols[1] - SNAP_TOLERANCE))
    r0, r1 = max(0, math.floor(rows[0] + SNAP_TOLERANCE)), min(size[1], math.ceil(rows[1] - SNAP_TOLERANCE))
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


class AoiMask:
    """Which pixels of the output's windows are inside an :class:`AreaOfInterest` (their centres), by GDAL's
    rasterizer onto each window; made by each rank for itself (it holds OGR objects: never sent)."""

    def __init__(self, aoi: AreaOfInterest):
        self.aoi = aoi
        self._polygon = ogr.CreateGeometryFromWkt(aoi.wkt)
        self._srs = _srs(aoi.crs_wkt)
        self._source = ogr.GetDriverByName("Memory").CreateDataSource("aoi")
        self._layer = self._source.CreateLayer("aoi", srs=self._srs, geom_type=ogr.wkbMultiPolygon)
        feature = ogr.Feature(self._layer.GetLayerDefn())
        feature.SetGeometry(self._polygon)
        self._layer.CreateFeature(feature)

    def inside(self, window: Window) -> np.ndarray | None:
        """None when every pixel of ``window`` is inside; else a ``window.shape`` bool array, True inside."""
        rectangle = _rectangle(self.aoi.geotransform, window)
        if self._polygon.Contains(rectangle):  # every centre is in the rectangle's interior, so in the polygon's
            return None
        if not self._polygon.Intersects(rectangle):
            return np.zeros(window.shape, dtype=bool)
        return self._rasterize(window)

    def classify(self, window: Window) -> str:
        """:data:`INSIDE`, :data:`PARTIAL` or :data:`OUTSIDE`: whether every, some or none of its pixels are in."""
        mask = self.inside(window)
        if mask is None:
            return INSIDE
        n = int(np.count_nonzero(mask))
        return OUTSIDE if n == 0 else INSIDE if n == mask.size else PARTIAL

    def _rasterize(self, window: Window) -> np.ndarray:
        x0, dx, _, y0, _, dy = self.aoi.geotransform
        ds = gdal.GetDriverByName("MEM").Create("", window.width, window.height, 1, gdal.GDT_Byte)
        ds.SetGeoTransform((x0 + window.col_off * dx, dx, 0.0, y0 + window.row_off * dy, 0.0, dy))
        ds.SetSpatialRef(self._srs)
        gdal.RasterizeLayer(ds, [1], self._layer, burn_values=[1])
        return ds.GetRasterBand(1).ReadAsArray().astype(bool)


def _rectangle(geotransform, window: Window, margin: int = 0) -> ogr.Geometry:
    """The area of ``window``'s pixels (``margin`` pixels more on every side) as a polygon."""
    x0, dx, _, y0, _, dy = geotransform
    xa, xb = x0 + (window.col_off - margin) * dx, x0 + (window.col_off + window.width + margin) * dx
    ya, yb = y0 + (window.row_off - margin) * dy, y0 + (window.row_off + window.height + margin) * dy
    ring = ogr.Geometry(ogr.wkbLinearRing)
    for x, y in ((xa, ya), (xb, ya), (xb, yb), (xa, yb), (xa, ya)):
        ring.AddPoint_2D(x, y)
    rectangle = ogr.Geometry(ogr.wkbPolygon)
    rectangle.AddGeometry(ring)
    return rectangle


def _lonlat_area(geometry: dict[str, Any], path: str) -> ogr.Geometry:
    """The GeoJSON ``geometry``'s area as one valid (multi)polygon in longitude and latitude."""
    shape = ogr.CreateGeometryFromJson(json.dumps(geometry))
    if shape is None:
        raise InputError(f"--aoi {path}: its geometry is not valid GeoJSON")
    minx, maxx, miny, maxy = shape.GetEnvelope()
    if not (-180 <= minx and maxx <= 180 and -90 <= miny and maxy <= 90):
        raise InputError(f"--aoi {path}: coordinates beyond longitude -180..180 and latitude -90..90 (GeoJSON is "
                         f"in degrees)")
    area = polygons_of(shape)
    if area.IsEmpty():
        raise InputError(f"--aoi {path}: its polygons have no area")
    return area


def polygons_of(shape: ogr.Geometry) -> ogr.Geometry:
    """The polygons of ``shape`` (made valid; lines and points dropped) as one multipolygon, overlaps merged."""
    if not shape.IsValid():
        shape = shape.MakeValid()
    parts = ogr.Geometry(ogr.wkbMultiPolygon)
    _add_polygons(shape, parts)
    merged = parts.UnionCascaded() if parts.GetGeometryCount() > 1 else parts
    return ogr.ForceToMultiPolygon(merged) if merged.GetArea() > 0 else ogr.Geometry(ogr.wkbMultiPolygon)


def _add_polygons(shape: ogr.Geometry, into: ogr.Geometry) -> None:
    kind = ogr.GT_Flatten(shape.GetGeometryType())
    if kind == ogr.wkbPolygon:
        if shape.GetArea() > 0:
            into.AddGeometry(shape)
    elif kind in (ogr.wkbMultiPolygon, ogr.wkbGeometryCollection):
        for i in range(shape.GetGeometryCount()):
            _add_polygons(shape.GetGeometryRef(i), into)


def _lonlat() -> osr.SpatialReference:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def _srs(wkt: str) -> osr.SpatialReference:
    srs = osr.SpatialReference()
    srs.ImportFromWkt(wkt)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def _in_crs(area: ogr.Geometry, crs_wkt: str, path: str) -> ogr.Geometry:
    """``area`` (longitude, latitude) densified and transformed to ``crs_wkt`` (x, y)."""
    placed = area.Clone()
    placed.Segmentize(DENSIFY_DEGREES)
    if placed.Transform(osr.CoordinateTransformation(_lonlat(), _srs(crs_wkt))) != 0:
        raise InputError(f"--aoi {path}: cannot be transformed to the output's CRS (is it far outside its zone?)")
    return polygons_of(placed)  # (a polygon beyond the projection's domain may fold over itself)


def _where(grid: Grid) -> str:
    """Where the mosaic lies, in longitude and latitude, for the error message."""
    x0, dx, _, y0, _, dy = grid.geotransform
    xs, ys = sorted((x0, x0 + dx * grid.width)), sorted((y0, y0 + dy * grid.height))
    try:
        minx, miny, maxx, maxy = osr.CoordinateTransformation(_srs(grid.crs_wkt), _lonlat()).TransformBounds(
            xs[0], ys[0], xs[1], ys[1], 21)
    except Exception:  # (only the message's detail)
        return ""
    return f" (they lie within longitude {minx:.4f} to {maxx:.4f}, latitude {miny:.4f} to {maxy:.4f})"
