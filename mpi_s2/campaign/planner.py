"""``mpi-s2 campaign plan``: cut an area into output tiles, give each tile its items, fix the options and the
stretch every tile shares, and create the status database.

Everything a tile's job needs is written into the campaign directory here, on the login node: its items
(``tiles/T/items.json``: those whose footprint meets the tile's part of the area, so jobs never query the
catalogue) and the settings (the tile's CRS and extent, on whole pixels of one lattice: tiles meet without a gap or
an overlap). Tiles that no item covers are planned ``empty``: reported, never submitted.

The global stretch (``--stretch percentile:...``, the campaign's default) is counted once over the whole area by
``mpi-s2 stretch`` (under ``MPI_S2_LAUNCHER``, e.g. ``mpirun -n 8``, when set), and every tile applies it with
``--stretch-from``: the tiles then meet without seams.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import shlex
import shutil
import subprocess
import sys
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from osgeo import gdal, ogr

from mpi_s2.campaign.grid import OutputTile, clip_to_area, count_mgrs_tiles, mgrs_tiles, square_tiles
from mpi_s2.campaign.layout import CampaignDir, write_json
from mpi_s2.campaign.store import open_store
from mpi_s2.config import Catalogue
from mpi_s2.errors import InputError
from mpi_s2.inputs.area import read_aoi
from mpi_s2.inputs.stac import CatalogueItem, item_band_set, items_from
from mpi_s2.inputs.stac_search import save_items, search_items, wanted
from mpi_s2.scaling.model import WindowCosts, predict_wall
from mpi_s2.text import plural

log = logging.getLogger("mpi_s2")
gdal.UseExceptions()
ogr.UseExceptions()

#: Per-window costs of a full-tile run on one core, from make bench's series case (2026-12-02: JPEG 2000 L2A,
#: 1024 x 1024 windows, per date: decode and SCL staging 154 s / 6 dates / 61 windows per worker; the median and
#: the encoding per window), for the dry run's projection. Remote COGs decode faster; cloudier dates cost the same.
PER_DATE_DECODE_S = 0.42
MEDIAN_S = 0.09
ENCODE_S = 0.02
PLACE_S = 0.001
TILE_PX = 10980
WINDOW_PX = 1024


@dataclass(frozen=True)
class PlanRequest:
    directory: str
    aoi: str
    grid: str | float  # "mgrs" or kilometres
    catalogue: Catalogue
    compose_args: tuple[str, ...]  # the options every tile's compose gets (checked by the command line)
    stretch: str = "percentile:2,98"  # the compose options' stretch, as parsed
    stretch_from: str | None = None
    dates: tuple[str, str] | None = None
    max_cloud_cover: float | None = None
    cloud_mask: bool = False
    db: str | None = None
    overwrite: bool = False
    resolution: int = 10
    assets: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TilePlan:
    tile: OutputTile
    items: list[CatalogueItem]
    area: dict[str, Any]  # the tile's part of the AOI (GeoJSON, lon/lat)


def check_directory(request: PlanRequest) -> None:
    if os.path.lexists(request.directory) and not request.overwrite:
        raise InputError(f"campaign directory {request.directory} exists (give --overwrite to replace it, or use "
                         "the campaign commands on it)")


def area_of(path: str) -> tuple[dict[str, Any], ogr.Geometry]:
    """The AOI's geometry (GeoJSON) and as an OGR geometry in lon/lat; an area that covers nothing is an error."""
    geometry = read_aoi(path)
    gdal.PushErrorHandler("CPLQuietErrorHandler")  # GEOS's warnings on a degenerate ring: the line below says it
    try:
        shape = ogr.CreateGeometryFromJson(json.dumps(geometry))
        empty = shape is None or shape.IsEmpty() or not shape.IsValid() or shape.GetArea() <= 0
    finally:
        gdal.PopErrorHandler()
    if empty:
        raise InputError(f"--aoi {path}: covers nothing (an empty, invalid or zero-area geometry)")
    return geometry, shape


def plan_campaign(request: PlanRequest, launcher: list[str] | None = None) -> dict[str, Any]:
    """Plan the campaign into ``request.directory`` (created here; removed again if planning fails)."""
    check_directory(request)
    geometry, shape = area_of(request.aoi)
    items = _items(request)
    tiles = _tiles(request, geometry, items)
    index = FootprintIndex(items)
    plans = [_tile_plan(tile, shape, index) for tile in tiles]
    directory = CampaignDir(os.path.abspath(request.directory))
    if request.overwrite and os.path.lexists(directory.root):
        _remove_campaign(directory.root)
    os.makedirs(directory.root)
    planning = os.path.join(directory.root, PLANNING_MARK)
    open(planning, "w").close()  # a plan killed midway leaves a directory --overwrite may replace
    try:
        settings = _write(request, directory, geometry, items, plans, launcher)
    except BaseException:
        shutil.rmtree(directory.root, ignore_errors=True)
        raise
    os.unlink(planning)
    return settings


PLANNING_MARK = ".planning"


def _remove_campaign(root: str) -> None:
    ours = any(os.path.isfile(os.path.join(root, name)) for name in ("campaign.json", PLANNING_MARK))
    if not ours and os.listdir(root):
        raise InputError(f"campaign directory {root} exists and is not a campaign: not replaced")
    shutil.rmtree(root)


def _items(request: PlanRequest) -> list[CatalogueItem]:
    catalogue = request.catalogue
    entries = items_from(catalogue.sources)
    if catalogue.search_url:
        entries += search_items(catalogue, request.dates, request.max_cloud_cover)
    entries = [e for e in entries if wanted(e.item, request.dates, request.max_cloud_cover)]
    if not entries:
        raise InputError("the catalogue has no items within --dates and --max-cloud-cover")
    return entries


def _tiles(request: PlanRequest, geometry: dict[str, Any], items: list[CatalogueItem]) -> list[OutputTile]:
    if request.grid == "mgrs":
        tiles = [t for t in (clip_to_area(t, geometry) for t in mgrs_tiles(geometry, request.resolution)) if t]
    else:
        epsg, origin = _first_grid(items[0], request)
        tiles = square_tiles(geometry, float(request.grid), epsg, origin, request.resolution)
    if not tiles:
        raise InputError(f"--aoi {request.aoi}: no output tile of the grid covers it")
    return tiles


def _first_grid(entry: CatalogueItem, request: PlanRequest) -> tuple[int, tuple[float, float]]:
    """The CRS (EPSG code) and a pixel corner of the first item's red band: the square grid's lattice."""
    red = item_band_set(entry, request.assets or None).red
    try:
        ds = gdal.Open(red)
    except RuntimeError as exc:
        raise InputError(f"{entry.name}: {red}: cannot be opened ({str(exc).strip()})") from None
    srs = ds.GetSpatialRef()
    epsg = None
    if srs is not None:
        srs.AutoIdentifyEPSG()
        code = srs.GetAuthorityCode(None)
        epsg = int(code) if code else None
    if epsg is None:
        raise InputError(f"{entry.name}: {red} has no EPSG CRS, so the square grid cannot be laid on it")
    gt = ds.GetGeoTransform()
    return epsg, (gt[0], gt[3])


class FootprintIndex:
    """The items' footprints (lon/lat), bucketed by whole degrees: a tile asks only the items near it, so planning
    thousands of tiles against tens of thousands of items stays linear."""

    def __init__(self, items: list[CatalogueItem]):
        self.items = items
        self.shapes = [_footprint(entry) for entry in items]
        self.cells: dict[tuple[int, int], list[int]] = defaultdict(list)
        for k, shape in enumerate(self.shapes):
            for cell in _degree_cells(shape):
                self.cells[cell].append(k)

    def meeting(self, shape: ogr.Geometry) -> list[CatalogueItem]:
        """The items whose footprint meets ``shape``, in the catalogue's order."""
        near = sorted({k for cell in _degree_cells(shape) for k in self.cells.get(cell, ())})
        return [self.items[k] for k in near if self.shapes[k].Intersects(shape)]


def _degree_cells(shape: ogr.Geometry) -> list[tuple[int, int]]:
    minx, maxx, miny, maxy = shape.GetEnvelope()
    return [(x, y) for x in range(math.floor(minx), math.floor(maxx) + 1)
            for y in range(math.floor(miny), math.floor(maxy) + 1)]


def _tile_plan(tile: OutputTile, area: ogr.Geometry, index: FootprintIndex) -> TilePlan:
    """The tile's part of ``area`` (in lon/lat), and the items whose footprint meets it."""
    outline = ogr.CreateGeometryFromJson(json.dumps(tile.lonlat_polygon()))
    part = area.Intersection(outline)
    return TilePlan(tile, index.meeting(part) if not part.IsEmpty() else [], json.loads(part.ExportToJson()))


def _footprint(entry: CatalogueItem) -> ogr.Geometry:
    """An item's footprint in lon/lat: its geometry, else its bbox."""
    item = entry.item
    if item.geometry:
        return ogr.CreateGeometryFromJson(json.dumps(item.geometry))
    if item.bbox:
        box = item.bbox
        w, s, e, n = (box[0], box[1], box[3], box[4]) if len(box) == 6 else box
        return ogr.CreateGeometryFromWkt(f"POLYGON(({w} {s},{e} {s},{e} {n},{w} {n},{w} {s}))")
    raise InputError(f"{entry.name}: has neither a geometry nor a bbox, so it cannot be given to a tile")


def _write(request: PlanRequest, directory: CampaignDir, geometry: dict[str, Any], items: list[CatalogueItem],
           plans: list[TilePlan], launcher: list[str] | None) -> dict[str, Any]:
    with open(directory.aoi, "w") as fh:
        json.dump({"type": "Feature", "properties": {}, "geometry": geometry}, fh)
    save_items(items, directory.items)
    tiles: dict[str, Any] = {}
    for plan in plans:
        name = plan.tile.name
        os.makedirs(directory.tile(name))
        if plan.items:
            save_items(plan.items, directory.tile_items(name))
        tiles[name] = {"epsg": plan.tile.epsg, "bounds": list(plan.tile.bounds), "items": len(plan.items),
                       "lonlat": plan.tile.lonlat_polygon()}
    compose_args = list(request.compose_args)
    stretch = None
    if request.stretch_from:
        stretch = request.stretch_from
    elif request.stretch.startswith("percentile"):
        _count_stretch(request, directory, plans, launcher)
        compose_args = _without_option(compose_args, "--stretch") + ["--stretch-from", directory.stretch]
        stretch = directory.stretch
    settings = {
        "id": uuid.uuid4().hex[:12], "created": _now(), "aoi": os.path.abspath(request.aoi),
        "grid": request.grid, "resolution": request.resolution, "compose_args": compose_args,
        "stretch": stretch, "dates": list(request.dates) if request.dates else None,
        "db": request.db, "tiles": tiles,
    }
    write_json(directory.settings, settings)
    os.makedirs(directory.logs)
    os.makedirs(directory.outputs)
    with open_store(directory.root, request.db) as store:
        store.create({k: v for k, v in settings.items() if k != "tiles"},
                     [(name, tile["items"]) for name, tile in tiles.items()])
    empty = [name for name, tile in tiles.items() if not tile["items"]]
    log.info("campaign %s: %s planned%s, %s in all", directory.root, plural(len(tiles) - len(empty), "tile"),
             f" ({plural(len(empty), 'tile')} empty: no item covers {', '.join(empty)})" if empty else "",
             plural(len(items), "item"))
    return settings


def _count_stretch(request: PlanRequest, directory: CampaignDir, plans: list[TilePlan],
                   launcher: list[str] | None) -> None:
    """``mpi-s2 stretch`` over the whole area, with the tiles' options, into ``DIR/stretch.json``."""
    epsg = plans[0].tile.epsg
    command = [*(launcher or []), sys.executable, "-m", "mpi_s2", "stretch", "--stac", directory.items,
               "--aoi", directory.aoi, "--crs", f"EPSG:{epsg}", *request.compose_args, "-o", directory.stretch, "-q"]
    log.info("campaign: counting the global stretch over the whole area: %s", shlex.join(command))
    done = subprocess.run(command, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.startswith("mpi_s2: error")]
        reason = lines[-1].removeprefix("mpi_s2: error: ") if lines else f"exit status {done.returncode}"
        raise InputError(f"campaign plan: the global stretch could not be counted: {reason}")


def _without_option(args: list[str], option: str) -> list[str]:
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            kept.append(arg)
    return kept


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def dry_run(aoi: str, grid: str | float, dates_per_tile: int, ranks_per_tile: int) -> dict[str, Any]:
    """The tile count of the MGRS grid over ``aoi`` (computed, nothing read but the AOI) and the core-hours the
    scaling model projects for them, each tile a full 10980 x 10980 tile of ``dates_per_tile`` dates."""
    geometry, _shape = area_of(aoi)
    if grid != "mgrs":
        raise InputError("--dry-run: needs --grid mgrs (a square grid needs the first item's grid)")
    tiles = count_mgrs_tiles(geometry)
    windows = math.ceil(TILE_PX / WINDOW_PX) ** 2
    costs = WindowCosts(decode=PER_DATE_DECODE_S * dates_per_tile, compose=MEDIAN_S * dates_per_tile / 6,
                        encode=ENCODE_S, place=PLACE_S, encoded_bytes=0.56e6, raw_bytes=3 * 2 * WINDOW_PX ** 2,
                        setup=10.0)
    wall = predict_wall(costs, windows, ranks_per_tile)
    core_hours = tiles * wall * ranks_per_tile / 3600
    return {"tiles": tiles, "dates_per_tile": dates_per_tile, "ranks_per_tile": ranks_per_tile,
            "windows_per_tile": windows, "wall_s_per_tile": round(wall, 1), "core_hours": round(core_hours, 1)}
