"""A small campaign scene for the campaign tests: synthetic L2A series of 3 dates in two UTM zones (31 and 32,
meeting at 6 degrees east), described by an ItemCollection of STAC items whose assets are the products' own band
files, and an area of interest across the zone boundary."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from osgeo import gdal, osr

SIZE = 256
#: (tile, EPSG, upper-left corner, size, dates): 31 reaches just east of 6 E, 32 just west of it (they overlap
#: ~400 m); a small product of one date lies inside the north-west output tile only (the corrupt one of a test)
SERIES = (("31TGL", 32631, (729960.0, 5100040.0), SIZE, 3), ("32TLR", 32632, (267600.0, 5100040.0), SIZE, 3),
          ("31TGK", 32631, (730390.0, 5099520.0), 64, 1))
SMALL = "31TGK"
#: lon/lat box across the zone boundary, inside both series' union
AOI = (5.972, 45.992, 6.028, 46.012)


@dataclass(frozen=True)
class Scene:
    root: Path
    items: Path  # the ItemCollection (absolute file hrefs)
    aoi: Path
    products: list[str]

    def small_red(self) -> Path:
        """The red band of the small product (inside the north-west output tile only)."""
        return next(self.root.glob(f"products-{SMALL}/*.SAFE/GRANULE/*/IMG_DATA/R10m/*_B04_10m.jp2"))


def lonlat_footprint(path: str) -> dict:
    ds = gdal.Open(path)
    gt = ds.GetGeoTransform()
    srs = osr.SpatialReference(wkt=ds.GetProjection())
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    lonlat = osr.SpatialReference()
    lonlat.ImportFromEPSG(4326)
    lonlat.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    to = osr.CoordinateTransformation(srs, lonlat)
    x0, y0 = gt[0], gt[3]
    x1, y1 = x0 + gt[1] * ds.RasterXSize, y0 + gt[5] * ds.RasterYSize
    ring = [to.TransformPoint(x, y)[:2] for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0))]
    return {"type": "Polygon", "coordinates": [[list(p) for p in ring]]}


def make_scene(root: Path) -> Scene:
    """The scene under ``root``."""
    from mpi_s2.inputs.products import open_product
    from mpi_s2.tools.synth import SeriesOptions, synthesize_series

    items, products = [], []
    for k, (tile, epsg, origin, size, dates) in enumerate(SERIES):
        series = synthesize_series(str(root / f"products-{tile}"), SeriesOptions(
            dates=dates, size=size, jp2_block=min(128, size), tile=tile, epsg=epsg, origin=origin, seed=k + 5,
            start=f"2023060{k + 1}T102559"))
        for path in series.products:
            product = open_product(path)
            md = product.metadata
            files = dict(zip(("red", "green", "blue"), product.rgb_files(10), strict=True))
            files["scl"] = product.scl_file(20)
            item_id = f"{tile}-{md.sensing_time[:10]}"
            items.append({
                "type": "Feature", "stac_version": "1.0.0", "id": item_id,
                "geometry": lonlat_footprint(files["red"]),
                "properties": {"datetime": md.sensing_time, "eo:cloud_cover": md.cloud_cover,
                               "s2:processing_baseline": md.baseline},
                "links": [], "assets": {role: {"href": "file://" + str(Path(f).resolve()),
                                               "type": "image/jp2"} for role, f in files.items()}})
            products.append(path)
    items_path = root / "catalogue" / "items.json"
    items_path.parent.mkdir(parents=True, exist_ok=True)
    items_path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    w, s, e, n = AOI
    aoi = root / "aoi.geojson"
    aoi.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": {
        "type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}}))
    return Scene(root, items_path, aoi, products)
