"""Independent references the tests compute themselves from the inputs (never from mpi_s2's own code)."""

from __future__ import annotations

import numpy as np
from osgeo import gdal, osr

gdal.UseExceptions()


def mosaic_grid(rasters: list[str], epsg: int, res: float = 10.0) -> tuple[tuple[float, ...], int, int]:
    """The mosaic's grid computed from the inputs' corners (independently of mpi_s2's planner).

    ``rasters``: one band file of each input, in order. Pixels of ``res`` on a lattice anchored at the first
    input's upper-left corner when it is in ``epsg`` (else at that corner in ``epsg``, snapped outward to
    multiples of ``res``); the extent is the union of every input's bounds in ``epsg`` (an input in another CRS:
    its densified edges transformed), snapped outward to the lattice. Returns (geotransform, width, height).
    """
    target = osr.SpatialReference()
    target.ImportFromEPSG(epsg)
    target.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    boxes = []
    for raster in rasters:
        ds = gdal.Open(raster)
        gt = ds.GetGeoTransform()
        minx, maxx, maxy = gt[0], gt[0] + gt[1] * ds.RasterXSize, gt[3]
        miny = gt[3] + gt[5] * ds.RasterYSize
        src = ds.GetSpatialRef()
        src.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        same = src.IsSame(target)
        if not same:
            edge = np.linspace(0.0, 1.0, 101)
            xs = np.concatenate([minx + edge * (maxx - minx), np.full(101, maxx), maxx - edge * (maxx - minx),
                                 np.full(101, minx)])
            ys = np.concatenate([np.full(101, maxy), maxy - edge * (maxy - miny), np.full(101, miny),
                                 miny + edge * (maxy - miny)])
            ct = osr.CoordinateTransformation(src, target)
            pts = np.array([ct.TransformPoint(float(x), float(y))[:2] for x, y in zip(xs, ys, strict=True)])
            minx, miny, maxx, maxy = pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()
        boxes.append((minx, miny, maxx, maxy, same))
    first = boxes[0]
    anchor = (first[0], first[3]) if first[4] else (np.floor(first[0] / res) * res, np.ceil(first[3] / res) * res)
    cols, rows = [], []
    for minx, miny, maxx, maxy, _same in boxes:  # outward to the lattice (exact for an input on it)
        cols += [int(np.floor(round((minx - anchor[0]) / res, 6))), int(np.ceil(round((maxx - anchor[0]) / res, 6)))]
        rows += [int(np.floor(round((anchor[1] - maxy) / res, 6))), int(np.ceil(round((anchor[1] - miny) / res, 6)))]
    gt = (anchor[0] + min(cols) * res, res, 0.0, anchor[1] - min(rows) * res, 0.0, -res)
    return gt, max(cols) - min(cols), max(rows) - min(rows)
