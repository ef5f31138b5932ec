"""``mpi-s2 campaign assemble``: one result over every done tile, and a STAC Collection of the outputs.

- ``-o mosaic.vrt``: a VRT of the done tiles' GeoTIFFs (no pixel copied). Tiles in another UTM zone than the
  mosaic's (the first done tile's, or ``--crs``) enter it as warped VRTs onto its grid (nearest neighbour, exact
  transformer, on the same 10 m lattice), only where no tile of its own zone lies: each pixel is computed in one
  CRS, resampled once at most.
- ``-o mosaic.tif [--cog]``: that VRT written as one tiled GeoTIFF (or COG) by ``mpi-s2 convert``, the MPI output
  stage (workers read windows of the VRT and encode them, rank 0 writes), under a launcher.
- Always ``DIR/stac/collection.json``, with one Item per done tile (``DIR/stac/T/T.json``): the tile's footprint,
  its GeoTIFF as the ``visual`` asset with its size and SHA-256 (``file:`` extension), its grid (``proj:``
  extension), and the campaign's stretch limits: the product is itself catalogued.
"""

from __future__ import annotations

import datetime
import logging
import os
import shlex
import subprocess
import sys
from typing import Any

from osgeo import gdal, osr

from mpi_s2.campaign.commands import open_campaign, refresh
from mpi_s2.campaign.layout import read_json, write_json
from mpi_s2.campaign.slurm import Slurm
from mpi_s2.errors import InputError, OutputError
from mpi_s2.text import plural

log = logging.getLogger("mpi_s2")
gdal.UseExceptions()

FILE_EXTENSION = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
PROJECTION_EXTENSION = "https://stac-extensions.github.io/projection/v1.1.0/schema.json"


def assemble(root: str, output: str | None, cog: bool = False, crs: str | None = None, overwrite: bool = False,
             launcher: list[str] | None = None, slurm: Slurm | None = None) -> dict[str, Any]:
    """The mosaic (when ``output``) and the STAC Collection of the done tiles; ``launcher`` runs the conversion of a
    GeoTIFF or COG mosaic (e.g. ``mpirun -n 8``)."""
    campaign = open_campaign(root, slurm)
    try:
        if campaign.store.tiles(states=["submitted", "running"]) and not campaign.slurm.missing():
            refresh(campaign)
        done = campaign.store.tiles(states=["done"])
        rows = campaign.store.tiles()
    finally:
        campaign.close()
    if not done:
        raise InputError(f"campaign assemble {root}: no tile is done yet (see mpi-s2 campaign status {root})")
    missing = [r.tile for r in rows if r.state not in ("done", "empty")]
    if missing:
        log.warning("campaign assemble: %s not done yet, left out: %s", plural(len(missing), "tile"),
                    ", ".join(missing))
    settings, directory = campaign.settings, campaign.directory
    collection = _catalogue(directory, settings, done)
    result: dict[str, Any] = {"tiles": len(done), "left_out": missing, "collection": collection}
    if output:
        if os.path.exists(output) and not overwrite:
            raise InputError(f"-o {output}: exists (give --overwrite to replace it)")
        result["output"] = _mosaic([r.output or directory.output(r.tile) for r in done], output, cog, crs,
                                   launcher or [])
    return result


def _mosaic(paths: list[str], output: str, cog: bool, crs: str | None, launcher: list[str]) -> str:
    """A VRT of ``paths``; unless ``output`` is that VRT, written as a GeoTIFF or COG by ``mpi-s2 convert`` under
    ``launcher`` (the MPI output stage: workers encode, rank 0 writes).

    Tiles in the mosaic's CRS (the first tile's, or ``crs``) enter as they are. A tile of another CRS is warped
    onto the mosaic's lattice and enters only where no tile of the mosaic's CRS lies (MGRS tiles overlap, across
    zones too): every pixel is then computed in one CRS only, with no second resampling."""
    target = osr.SpatialReference()
    if crs:
        target.SetFromUserInput(crs)
    else:
        target.ImportFromWkt(gdal.Open(paths[0]).GetProjection())
    folder = os.path.dirname(os.path.abspath(output))
    hidden = os.path.join(folder, f".{os.path.basename(output)}")
    vrt = output if output.lower().endswith(".vrt") else f"{hidden}.vrt"
    made: list[str] = []
    try:
        native, foreign = [], []
        for path in paths:
            ds = gdal.Open(path)
            if osr.SpatialReference(wkt=ds.GetProjection()).IsSame(target):
                native.append(path)
                continue
            res = ds.GetGeoTransform()[1]
            made.append(f"{hidden}.{os.path.basename(path)}.vrt")
            gdal.Warp(made[-1], ds, options=gdal.WarpOptions(
                format="VRT", dstSRS=target.ExportToWkt(), xRes=res, yRes=res, targetAlignedPixels=True,
                resampleAlg="near", errorThreshold=0))
            foreign.append(made[-1])
        covered = [_cells(p) for p in native]
        parts = []
        for path in foreign:
            whole = _cells(path)
            for k, (c0, r0, c1, r1) in enumerate(_uncovered(whole, covered)):
                made.append(f"{path[:-4]}.{k}.vrt")
                gdal.Translate(made[-1], path, options=gdal.TranslateOptions(
                    format="VRT", srcWin=[c0 - whole[0], r0 - whole[1], c1 - c0, r1 - r0]))
                parts.append(made[-1])
        gdal.BuildVRT(f"{vrt}.tmp", parts + native)
        os.replace(f"{vrt}.tmp", vrt)
        if vrt == output:
            made = []  # the VRT refers to them
            return output
        command = [*launcher, sys.executable, "-m", "mpi_s2", "convert", vrt, "-o", output, "--overwrite", "-q",
                   *(["--cog"] if cog else [])]
        log.info("campaign assemble: %s", shlex.join(command))
        done = subprocess.run(command, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.startswith("mpi_s2: error")]
            raise OutputError(f"campaign assemble -o {output}: " + (lines[-1].removeprefix("mpi_s2: error: ")
                                                                    if lines else f"exit status {done.returncode}"))
        return output
    finally:
        for leftover in [*made, *([vrt] if vrt != output else []), f"{vrt}.tmp"]:
            if os.path.exists(leftover):
                os.unlink(leftover)


Cells = tuple[int, int, int, int]  # first column, first row, end column, end row on the CRS's pixel lattice


def _cells(path: str) -> Cells:
    """A north-up raster's extent in whole pixels of its lattice (column x / res, row -y / res)."""
    ds = gdal.Open(path)
    x0, res, _, y0, _, _ = ds.GetGeoTransform()
    c0, r0 = round(x0 / res), round(-y0 / res)
    return c0, r0, c0 + ds.RasterXSize, r0 + ds.RasterYSize


def _uncovered(cells: Cells, covers: list[Cells]) -> list[Cells]:
    """``cells`` minus every rectangle of ``covers``, as disjoint rectangles."""
    parts = [cells]
    for b0, s0, b1, s1 in covers:
        rest: list[Cells] = []
        for c0, r0, c1, r1 in parts:
            if b0 >= c1 or b1 <= c0 or s0 >= r1 or s1 <= r0:
                rest.append((c0, r0, c1, r1))
                continue
            mid0, mid1 = max(r0, s0), min(r1, s1)
            pieces = [(c0, r0, c1, s0), (c0, s1, c1, r1), (c0, mid0, b0, mid1), (b1, mid0, c1, mid1)]
            rest += [p for p in pieces if p[2] > p[0] and p[3] > p[1]]
        parts = rest
    return parts


def _catalogue(directory, settings: dict[str, Any], done) -> str:
    """``DIR/stac/collection.json`` and one item per done tile (absolute hrefs to the outputs)."""
    stretch = read_json(settings["stretch"]) if settings.get("stretch") and os.path.isfile(settings["stretch"]) \
        else None
    dates = settings.get("dates")
    created = settings["created"]
    items = []
    for row in done:
        tile = settings["tiles"][row.tile]
        polygon = tile["lonlat"]
        lons = [p[0] for p in polygon["coordinates"][0]]
        lats = [p[1] for p in polygon["coordinates"][0]]
        bbox = [min(lons), min(lats), max(lons), max(lats)]
        ds = gdal.Open(row.output or directory.output(row.tile))
        gt = ds.GetGeoTransform()
        item = {
            "type": "Feature", "stac_version": "1.0.0", "stac_extensions": [FILE_EXTENSION, PROJECTION_EXTENSION],
            "id": row.tile, "collection": f"mpi_s2-{settings['id']}", "geometry": polygon, "bbox": bbox,
            "properties": {
                "datetime": None, "start_datetime": f"{dates[0]}T00:00:00Z" if dates else created,
                "end_datetime": f"{dates[1]}T23:59:59Z" if dates else created,
                "created": row.ended, "proj:epsg": tile["epsg"], "proj:shape": [ds.RasterYSize, ds.RasterXSize],
                "proj:transform": [gt[1], gt[2], gt[0], gt[4], gt[5], gt[3]],
                "mpi_s2:items": tile["items"], "mpi_s2:stretch": stretch,
                "mpi_s2:compose_args": settings["compose_args"],
            },
            "links": [{"rel": "collection", "href": "../collection.json", "type": "application/json"},
                      {"rel": "parent", "href": "../collection.json", "type": "application/json"}],
            "assets": {"visual": {
                "href": os.path.abspath(row.output or directory.output(row.tile)),
                "type": "image/tiff; application=geotiff", "roles": ["visual", "data"],
                "file:size": row.size, "file:checksum": _multihash(row.checksum)}},
        }
        items.append(item)
        write_json(os.path.join(directory.stac, row.tile, f"{row.tile}.json"), item)
    boxes = [i["bbox"] for i in items]
    collection = {
        "type": "Collection", "stac_version": "1.0.0", "id": f"mpi_s2-{settings['id']}",
        "description": f"True-colour composites of campaign {directory.root} (mpi_s2), one item per output tile",
        "license": "proprietary", "stac_extensions": [],
        "extent": {"spatial": {"bbox": [[min(b[0] for b in boxes), min(b[1] for b in boxes),
                                         max(b[2] for b in boxes), max(b[3] for b in boxes)]]},
                   "temporal": {"interval": [[f"{dates[0]}T00:00:00Z", f"{dates[1]}T23:59:59Z"] if dates
                                             else [created, None]]}},
        "links": [{"rel": "root", "href": "./collection.json", "type": "application/json"}]
                 + [{"rel": "item", "href": f"./{i['id']}/{i['id']}.json", "type": "application/geo+json"}
                    for i in items],
        "summaries": {"mpi_s2:stretch": [stretch] if stretch else []},
        "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    path = os.path.join(directory.stac, "collection.json")
    write_json(path, collection)
    return path


def _multihash(checksum: str | None) -> str | None:
    """``sha256:HEX`` as the ``file:checksum`` multihash (0x12 = SHA-256, 0x20 = 32 bytes)."""
    if not checksum or not checksum.startswith("sha256:"):
        return None
    return "1220" + checksum.removeprefix("sha256:")
