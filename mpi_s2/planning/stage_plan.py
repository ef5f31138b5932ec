"""Staging plan: which source files are decoded once into an uncompressed copy before windows are composed.

A JPEG 2000 block costs about 0.46 s of CPU per 1024 x 1024 band to decode, so each must be decoded once per
run. A source whose blocks line up with the output windows (on the output grid, every block inside one window)
is read directly by the windows: each block is then decoded by exactly one window. Every other file is
*staged*: a neighbouring tile of the same UTM zone (its blocks are 784 px off the first tile's), a tile
reprojected from another zone (its blocks are rotated against the windows), and every scene classification
(20 m blocks under 10 m windows). Staging cuts such a file into units of whole blocks; a worker decodes each
unit once and writes its pixels into a raw file on the file's own grid, described by a VRT that carries the
original georeferencing. Windows, reprojection and masks then read that copy exactly as they would read the
original, at the cost of a memory copy instead of a decode. The pixels are the same, so the output is too.

Pure planning, plus writing the small VRT files and sizing the raw files (rank 0, before any pixel is read).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass

from osgeo import gdal

from mpi_s2.errors import OutputError
from mpi_s2.inputs.bands import Grid, inspect_mask
from mpi_s2.planning.mosaic import TileSource
from mpi_s2.planning.windows import Window, choose_window_size, plan_windows

gdal.UseExceptions()

_ITEMSIZE = {"UInt16": 2, "Byte": 1}


@dataclass(frozen=True, slots=True)
class StagedFile:
    """A source file and its uncompressed copy: ``raw`` (row-major pixels) described by ``vrt``."""

    original: str  # what GDAL opens to decode it
    vrt: str
    raw: str
    grid: Grid
    block_size: tuple[int, int]
    data_type: str  # "UInt16" (bands) or "Byte" (scene classification)

    @property
    def itemsize(self) -> int:
        return _ITEMSIZE[self.data_type]


@dataclass(frozen=True, slots=True)
class StageUnit:
    """Whole blocks of one or more files of one grid (red, green, blue; or the SCL) to decode and copy."""

    source: int
    files: tuple[int, ...]  # indices into the plan's staged files
    window: Window  # in the files' own pixel coordinates


def staging_directory(output: str) -> str:
    """Where staged copies live: beside the output (a shared file system in a cluster job), hidden."""
    head, tail = os.path.split(os.path.abspath(output))
    return os.path.join(head, f".{tail}.staging")


def remove_staging(output: str) -> None:
    """Best-effort removal of the staged copies of ``output`` (after the run, or when it fails)."""
    shutil.rmtree(staging_directory(output), ignore_errors=True)


def reads_directly(source: TileSource, window_size: tuple[int, int]) -> bool:
    """True when every block of the source's band files lies inside exactly one output window."""
    if source.reprojected:
        return False
    (bx, by), (ww, wh) = source.block_size, window_size
    p = source.placement
    return p.col_off % bx == 0 and p.row_off % by == 0 and ww % bx == 0 and wh % by == 0


def unit_windows(grid: Grid, block_size: tuple[int, int]) -> list[Window]:
    """Units of whole blocks (the multiple of the block closest to 1024 px), row-major, covering ``grid``."""
    return plan_windows(grid.size, choose_window_size(block_size, grid.size))


def _write_raw_vrt(original: str, vrt: str, raw: str, data_type: str) -> Grid:
    """Create ``raw`` (sparse, full size) and a VRT over it with ``original``'s size and georeferencing."""
    src = gdal.Open(original)
    width, height = src.RasterXSize, src.RasterYSize
    itemsize = _ITEMSIZE[data_type]
    with open(raw, "wb") as fh:
        fh.truncate(width * height * itemsize)
    ds = gdal.GetDriverByName("VRT").Create(vrt, width, height, 0)
    ds.SetGeoTransform(src.GetGeoTransform())
    if src.GetProjection():
        ds.SetProjection(src.GetProjection())
    ds.AddBand(gdal.GetDataTypeByName(data_type), options=[
        "subclass=VRTRawRasterBand", f"SourceFilename={os.path.basename(raw)}", "relativeToVRT=1",
        "ImageOffset=0", f"PixelOffset={itemsize}", f"LineOffset={itemsize * width}", "ByteOrder=LSB"])
    ds = None  # writes the VRT
    return Grid(width, height, tuple(src.GetGeoTransform()), src.GetProjection() or "")  # type: ignore[arg-type]


def plan_staging(sources: list[TileSource], window_size: tuple[int, int], output: str, *, cloud_mask: bool
                 ) -> tuple[list[TileSource], list[StagedFile], list[StageUnit]]:
    """Decide what to stage, create the copies' VRTs, and point the sources at them.

    Returns the sources (staged ones now open the copies), the staged files and the units, band units first
    (in source order, row-major), then the scene classifications.
    """
    directory = staging_directory(output)
    staged: list[StagedFile] = []
    band_units: list[StageUnit] = []
    mask_units: list[StageUnit] = []
    result: list[TileSource] = []

    def stage(source_index: int, kind: str, original: str, data_type: str, block: tuple[int, int]) -> int:
        if not staged:
            shutil.rmtree(directory, ignore_errors=True)  # left by a run that was killed
            try:
                os.makedirs(directory)
            except OSError as exc:
                raise OutputError(f"{output}: cannot create the staging directory {directory}: "
                                  f"{exc.strerror}") from None
        stem = os.path.join(directory, f"source{source_index}-{kind}")
        grid = _write_raw_vrt(original, stem + ".vrt", stem + ".raw", data_type)
        staged.append(StagedFile(original, stem + ".vrt", stem + ".raw", grid, block, data_type))
        return len(staged) - 1

    for i, source in enumerate(sources):
        changes: dict = {}
        if not reads_directly(source, window_size):
            idx = tuple(stage(i, band, f, "UInt16", source.block_size)
                        for band, f in zip(("red", "green", "blue"), source.files))
            band_units += [StageUnit(i, idx, w) for w in unit_windows(source.band_grid, source.block_size)]
            copies = tuple(staged[k].vrt for k in idx)
            changes["datasets"] = (tuple(source.band_warp.xml(v) for v in copies) if source.band_warp
                                   else copies)
        if cloud_mask and source.scl and source.mask_warp:
            info = inspect_mask(source.scl)
            k = stage(i, "scl", source.scl, "Byte", info.block_size)
            mask_units += [StageUnit(i, (k,), w) for w in unit_windows(info.grid, info.block_size)]
            changes["mask_dataset"] = source.mask_warp.xml(staged[k].vrt)
        result.append(dataclasses.replace(source, **changes) if changes else source)
    return result, staged, band_units + mask_units
