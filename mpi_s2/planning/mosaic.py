"""Mosaic layout: one output grid for all inputs, and where each input lies on it.

* Inputs on the output CRS and pixel grid (tiles of one UTM zone share the 10 m grid) are read in place:
  integer offsets, no resampling.
* Inputs in another CRS (another UTM zone, or ``--crs``) are reprojected on the fly by a warped VRT onto the
  output grid, with the resampling method the user chose (nearest by default: digital numbers stay exact).
* The scene classification (20 m) is put onto each input's 10 m grid by nearest neighbour in a warped VRT,
  which takes, for every 10 m pixel, the 20 m pixel that contains its centre.
Where inputs overlap, the first valid pixel in the given order wins (see :mod:`mpi_s2.worker.compose`).

:func:`clip_mosaic` cuts the mosaic to a window of its grid (``--aoi``, see :mod:`mpi_s2.planning.aoi`): whole
pixels, nothing resampled; an input on the grid is then read from an offset into its files
(:attr:`TileSource.file_offset`), a reprojected one through a warped VRT onto its part of the smaller grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

from osgeo import gdal, osr

from mpi_s2.errors import InputError
from mpi_s2.inputs.bands import BandInfo, Grid, inspect_band_sets, inspect_mask, open_all, opened, same_crs
from mpi_s2.pixels.radiometry import Stretch
from mpi_s2.windows import Window, intersection, relative_to

gdal.UseExceptions()

RESAMPLING = ("near", "bilinear", "cubic", "average", "mode")


@dataclass(frozen=True)
class TileInput:
    """One input (a product or a band set) as resolved by the planner, before it is placed."""

    label: str
    files: tuple[str, str, str]  # red, green, blue: GDAL paths
    scl: str | None
    stretches: tuple[Stretch, Stretch, Stretch]
    radiometry_note: str
    date: str | None = None  # acquisition date (YYYY-MM-DD): product metadata, or --date
    sensing_time: str | None = None  # the product's PRODUCT_START_TIME, when it has one (ties of a date)
    cloud_cover: float | None = None  # percent
    cloud_cover_from: str = ""  # "metadata", or "SCL" (the masked fraction of a band set's classification)


@dataclass(frozen=True)
class WarpSpec:
    """How a file is put onto the output grid by a warped VRT: target CRS, bounds, pixel size, resampling."""

    crs_wkt: str
    bounds: tuple[float, float, float, float]
    res: float
    resampling: str

    def xml(self, source: str) -> str:
        """The warped VRT (XML) of ``source`` (a path GDAL opens) on this grid."""
        return _warp_xml(source, self.crs_wkt, self.bounds, self.res, self.resampling)


@dataclass(frozen=True)
class TileSource:
    """An input placed on the output grid: what every worker opens for itself."""

    label: str
    files: tuple[str, str, str]  # real files, for messages
    datasets: tuple[str, str, str]  # what GDAL opens: the files, or warped VRT XML onto the output grid
    scl: str | None
    mask_dataset: str | None  # SCL on this source's grid (VRT XML)
    placement: Window  # the source's pixels in output-grid coordinates
    stretches: tuple[Stretch, Stretch, Stretch]
    radiometry_note: str
    reprojected: bool
    band_grid: Grid  # the grid of the band files
    block_size: tuple[int, int]  # of the band files
    band_warp: WarpSpec | None = None  # set when reprojected: datasets == band_warp.xml(file)
    mask_warp: WarpSpec | None = None  # set with a mask: mask_dataset == mask_warp.xml(scl), unless mask_factor
    # > 0: the SCL (or its staged copy) is read on its own grid, whose pixel (r, c) covers the band pixels
    # (r * f .. r * f + f - 1, c * f ..): Sentinel-2's 20 m SCL beside 10 m bands (f = 2), upsampled by numpy
    mask_factor: int = 0
    # the band files' pixel (col, row) at the placement's upper-left corner: (0, 0) but for an input on the
    # output grid that the mosaic was cut into (--aoi); the SCL is read in the band files' coordinates too
    file_offset: tuple[int, int] = (0, 0)

    def local(self, part: Window) -> Window:
        """``part`` (output pixel coordinates, within :attr:`placement`) in what :attr:`datasets` read."""
        local = relative_to(part, self.placement)
        if self.file_offset == (0, 0):
            return local
        return Window(local.col_off + self.file_offset[0], local.row_off + self.file_offset[1], local.width,
                      local.height)


def _srs(wkt_or_user: str, label: str) -> osr.SpatialReference:
    srs = osr.SpatialReference()
    try:
        if wkt_or_user.lstrip().startswith(("PROJCS", "GEOGCS", "PROJCRS", "GEOGCRS", "COMPOUNDCRS", "BOUNDCRS")):
            srs.ImportFromWkt(wkt_or_user)
        else:
            srs.SetFromUserInput(wkt_or_user)
    except RuntimeError:
        raise InputError(f"{label}: {wkt_or_user!r} is not a coordinate reference system GDAL knows") from None
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def _bounds(grid: Grid) -> tuple[float, float, float, float]:
    x0, dx, _, y0, _, dy = grid.geotransform
    return (x0, y0 + dy * grid.height, x0 + dx * grid.width, y0)


def _warp_xml(source: str, srs_wkt: str, bounds, res: float, resampling: str) -> str:
    options = gdal.WarpOptions(format="VRT", dstSRS=srs_wkt, outputBounds=bounds, xRes=res, yRes=res,
                               resampleAlg=resampling, srcNodata=0, dstNodata=0, multithread=False,
                               errorThreshold=0)  # exact transformer: the same pixels whatever the extent
    ds = gdal.Warp("", source, options=options)
    return ds.GetMetadata("xml:VRT")[0]


def layout_mosaic(tiles: list[TileInput], crs: str | None, resampling: str = "near"
                  ) -> tuple[Grid, list[TileSource], tuple[int, int]]:
    """Output grid, placed sources and the block size windows should align with."""
    if resampling not in RESAMPLING:
        raise InputError(f"--resampling {resampling!r}: choose one of {', '.join(RESAMPLING)}")
    inspected: list[tuple[Grid, tuple[BandInfo, ...]]] = inspect_band_sets([t.files for t in tiles])
    masks = open_all(inspect_mask, [t.scl for t in tiles if t.scl])
    for tile in tiles:
        if tile.scl:
            opened(masks[tile.scl])
    first_grid, first_infos = inspected[0]
    target = _srs(crs, "--crs") if crs else _srs(first_grid.crs_wkt, tiles[0].label) if first_grid.crs_wkt else None
    if target is None and len(tiles) > 1:
        raise InputError(f"{tiles[0].label}: has no CRS, so it cannot be mosaicked")
    for tile, (grid, _infos) in zip(tiles[1:], inspected[1:], strict=True):
        if not grid.crs_wkt:
            raise InputError(f"{tile.label}: has no CRS, so it cannot be placed on the grid of {tiles[0].label}")
    target_wkt = target.ExportToWkt() if target is not None else ""
    gt0 = first_grid.geotransform
    res = abs(gt0[1])
    square_north_up = abs(abs(gt0[5]) - res) <= 1e-9 * res and not gt0[2] and not gt0[4]
    if not square_north_up and (len(tiles) > 1 or crs):
        raise InputError(f"{tiles[0].label}: pixels are not square and north-up; cannot mosaic or reproject it")

    def aligned(grid: Grid) -> bool:
        gt = grid.geotransform
        return (same_crs(grid.crs_wkt, target_wkt) and not gt[2] and not gt[4]
                and abs(gt[1] - res) <= 1e-9 * res and abs(-gt[5] - res) <= 1e-9 * res)

    if aligned(first_grid) or target is None:
        origin = (first_grid.geotransform[0], first_grid.geotransform[3])
    else:
        src = _srs(first_grid.crs_wkt, tiles[0].label)
        minx, miny, maxx, maxy = osr.CoordinateTransformation(src, target).TransformBounds(*_bounds(first_grid), 21)
        origin = (math.floor(minx / res) * res, math.ceil(maxy / res) * res)

    placed: list[tuple] = []
    for tile, (grid, _infos) in zip(tiles, inspected, strict=True):
        gt = grid.geotransform
        col = (gt[0] - origin[0]) / res
        row = (origin[1] - gt[3]) / res
        on_grid = target is None or (aligned(grid) and abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6)
        band_warp = None
        if on_grid:
            placement = _Cells(round(col), round(row), grid.width, grid.height)
            datasets = tile.files
            reprojected = False
        else:
            src = _srs(grid.crs_wkt, tile.label)
            minx, miny, maxx, maxy = osr.CoordinateTransformation(src, target).TransformBounds(*_bounds(grid), 21)
            c0, c1 = math.floor((minx - origin[0]) / res), math.ceil((maxx - origin[0]) / res)
            r0, r1 = math.floor((origin[1] - maxy) / res), math.ceil((origin[1] - miny) / res)
            placement = _Cells(c0, r0, c1 - c0, r1 - r0)
            band_warp = WarpSpec(target_wkt, _placement_bounds(placement, origin, res), res, resampling)
            datasets = tuple(band_warp.xml(f) for f in tile.files)  # type: ignore[assignment]
            reprojected = True
        mask = mask_warp = None
        factor = 0
        if tile.scl:
            mask_warp = WarpSpec(target_wkt or grid.crs_wkt,
                                 _placement_bounds(placement, origin, res) if target is not None else _bounds(grid),
                                 res, "near")
            factor = 0 if reprojected else mask_factor(grid, inspect_mask(tile.scl).grid)
            mask = tile.scl if factor else mask_warp.xml(tile.scl)
        placed.append((tile, placement, datasets, mask, reprojected, band_warp if reprojected else None,
                       mask_warp, grid, _infos[0].block_size, factor))

    min_col = min(p[1].col_off for p in placed)
    min_row = min(p[1].row_off for p in placed)
    width = max(p[1].col_off + p[1].width for p in placed) - min_col
    height = max(p[1].row_off + p[1].height for p in placed) - min_row
    geotransform = (origin[0] + min_col * res, res, 0.0, origin[1] - min_row * res, 0.0, -res)
    if target is None:
        geotransform = first_grid.geotransform
    grid = Grid(width, height, geotransform, target_wkt)
    sources = [
        TileSource(label=tile.label, files=tile.files, datasets=datasets, scl=tile.scl, mask_dataset=mask,
                   placement=Window(p.col_off - min_col, p.row_off - min_row, p.width, p.height),
                   stretches=tile.stretches, radiometry_note=tile.radiometry_note, reprojected=reprojected,
                   band_grid=band_grid, block_size=block_size, band_warp=band_warp, mask_warp=mask_warp,
                   mask_factor=factor)
        for tile, p, datasets, mask, reprojected, band_warp, mask_warp, band_grid, block_size, factor in placed
    ]
    return grid, sources, first_infos[0].block_size


def mask_factor(bands: Grid, mask: Grid) -> int:
    """``f`` when the mask's pixels are whole ``f x f`` blocks of the bands' pixels (same CRS and origin,
    north-up, a whole multiple of their size, covering them), else 0 (it is warped onto the bands' grid)."""
    gb, gm = bands.geotransform, mask.geotransform
    res = gb[1]
    if gb[2] or gb[4] or gm[2] or gm[4] or gb[5] != -res or gm[5] != -gm[1] or not same_crs(bands.crs_wkt,
                                                                                         mask.crs_wkt):
        return 0
    f = round(gm[1] / res)
    if f < 1 or abs(gm[1] - f * res) > 1e-9 * res or abs(gm[0] - gb[0]) > 1e-6 * res or abs(gm[3] - gb[3]) > 1e-6 * res:
        return 0
    if mask.width * f < bands.width or mask.height * f < bands.height:
        return 0
    return f


class _Cells(NamedTuple):
    """Pixels of the output grid from the first input's corner: negative for an input west or north of it (the
    grid's own corner is known once every input is placed)."""

    col_off: int
    row_off: int
    width: int
    height: int


def _placement_bounds(w: Window | _Cells, origin: tuple[float, float], res: float) -> tuple[float, float, float, float]:
    return (origin[0] + w.col_off * res, origin[1] - (w.row_off + w.height) * res,
            origin[0] + (w.col_off + w.width) * res, origin[1] - w.row_off * res)


def clip_mosaic(grid: Grid, sources: list[TileSource], window: Window
                ) -> tuple[Grid, list[int], list[TileSource]]:
    """The mosaic cut to ``window`` of its ``grid`` (whole pixels: the output's pixels stay the inputs'): the
    smaller grid, the indices of the ``sources`` that lie in it, and those sources placed on it (an input on
    the grid keeps its files and reads them from :attr:`TileSource.file_offset`; a reprojected one is warped onto
    its part of the smaller grid, which gives the same pixels: the warp's transformer is exact)."""
    x0, res, _, y0, _, dy = grid.geotransform
    geotransform = (x0 + window.col_off * res, res, 0.0, y0 + window.row_off * dy, 0.0, dy)
    origin = (geotransform[0], geotransform[3])
    kept: list[int] = []
    placed: list[TileSource] = []
    for i, source in enumerate(sources):
        part = intersection(source.placement, window)
        if part is None:
            continue
        placement = relative_to(part, window)
        if source.band_warp is not None:
            warp = replace(source.band_warp, bounds=_placement_bounds(placement, origin, res))
            changes: dict = {"band_warp": warp, "datasets": tuple(warp.xml(f) for f in source.files)}
            if source.mask_warp is not None and source.scl and not source.mask_factor:
                mask_warp = replace(source.mask_warp, bounds=warp.bounds)
                changes.update(mask_warp=mask_warp, mask_dataset=mask_warp.xml(source.scl))
        else:  # (its SCL warp, if any, is on the band files' own extent: read in their coordinates)
            offset = source.local(part)
            changes = {"file_offset": (offset.col_off, offset.row_off)}
        kept.append(i)
        placed.append(replace(source, placement=placement, **changes))
    return Grid(window.width, window.height, geotransform, grid.crs_wkt), kept, placed


def footprint(source: TileSource, file_grid: Grid, file_window: Window, grid: Grid, *, mask: bool
              ) -> tuple[int, int, int, int]:
    """The output pixels ``(col0, row0, col1, row1)`` (ends excluded; may reach beyond the grid) whose values
    may depend on ``file_window`` of one of ``source``'s files (on ``file_grid``; ``mask``: its SCL): exact for
    a file read in its own coordinates, else its georeferenced extent with a margin for the warp's kernel."""
    shift_c = source.placement.col_off - source.file_offset[0]
    shift_r = source.placement.row_off - source.file_offset[1]
    w = file_window
    if not source.reprojected and not mask:
        return (w.col_off + shift_c, w.row_off + shift_r, w.col_off + w.width + shift_c,
                w.row_off + w.height + shift_r)
    if not source.reprojected and source.mask_factor:
        f = source.mask_factor
        return (w.col_off * f + shift_c, w.row_off * f + shift_r, (w.col_off + w.width) * f + shift_c,
                (w.row_off + w.height) * f + shift_r)
    margin = _WARP_MARGIN
    gt = file_grid.geotransform
    xs = sorted((gt[0] + (w.col_off - margin) * gt[1], gt[0] + (w.col_off + w.width + margin) * gt[1]))
    ys = sorted((gt[3] + (w.row_off - margin) * gt[5], gt[3] + (w.row_off + w.height + margin) * gt[5]))
    if same_crs(file_grid.crs_wkt, grid.crs_wkt):
        minx, miny, maxx, maxy = xs[0], ys[0], xs[1], ys[1]
    else:
        transform = osr.CoordinateTransformation(_srs(file_grid.crs_wkt, source.label), _srs(grid.crs_wkt, "--crs"))
        minx, miny, maxx, maxy = transform.TransformBounds(xs[0], ys[0], xs[1], ys[1], 21)
    x0, res, _, y0, _, dy = grid.geotransform
    cols = sorted(((minx - x0) / res, (maxx - x0) / res))
    rows = sorted(((miny - y0) / dy, (maxy - y0) / dy))
    return math.floor(cols[0]) - 1, math.floor(rows[0]) - 1, math.ceil(cols[1]) + 1, math.ceil(rows[1]) + 1


#: Source pixels around a unit that a warp may still read for the output pixels beside it (cubic: 2)
_WARP_MARGIN = 8
