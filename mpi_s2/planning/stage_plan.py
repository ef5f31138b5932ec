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
import hashlib
import os
import shutil
from dataclasses import dataclass

from osgeo import gdal

from mpi_s2.errors import OutputError
from mpi_s2.inputs.bands import Grid, inspect_mask
from mpi_s2.planning.mosaic import TileSource
from mpi_s2.windows import Window, choose_window_size, plan_windows

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


def staging_directory(output: str, parent: str | None = None) -> str:
    """Where staged copies live: beside the output (hidden), or in ``parent`` under a name made from the output.

    Every rank must see it: a shared file system in a multi-node job, or node-local memory (``/dev/shm``) when
    all ranks share one node.
    """
    head, tail = os.path.split(os.path.abspath(output))
    if parent is None:
        return os.path.join(head, f".{tail}.staging")
    digest = hashlib.sha1(os.path.abspath(output).encode()).hexdigest()[:12]
    return os.path.join(parent, f"mpi_s2-{tail}-{digest}.staging")


def check_staging_parent(output: str, explicit: str | None) -> None:
    """Raise :class:`OutputError` when staged copies could not be made: ``--staging-dir`` must be a writable
    directory; the default one beside the output must not be a file. (Node-local memory is used only when it is
    writable, see :func:`choose_staging_parent`; the output's directory is checked with the output.)"""
    if explicit:
        if not (os.path.isdir(explicit) and os.access(explicit, os.W_OK)):
            raise OutputError(f"{explicit}: --staging-dir is not a writable directory")
        return
    beside = staging_directory(output)
    if os.path.lexists(beside) and not os.path.isdir(beside):
        raise OutputError(f"{beside}: the staging directory of {output} is a file; move it away")


def remove_staging(directory: str | None) -> None:
    """Best-effort removal of a staging directory (after the run, or when it fails)."""
    if directory:
        shutil.rmtree(directory, ignore_errors=True)


#: Node-local memory: the default place for staged copies when every rank runs on one node.
SHARED_MEMORY = "/dev/shm"


def _available_memory() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def choose_staging_parent(explicit: str | None, single_node: bool, needed: int) -> str | None:
    """Where the staging directory goes: ``explicit`` if given; else node-local memory when all ranks share one
    node and it holds twice the copies with memory to spare; else None (beside the output, which every node of
    a cluster sees)."""
    if explicit:
        return explicit
    if not single_node or not os.path.isdir(SHARED_MEMORY) or not os.access(SHARED_MEMORY, os.W_OK):
        return None
    fs = os.statvfs(SHARED_MEMORY)
    if fs.f_bavail * fs.f_frsize >= 2 * needed and _available_memory() >= 2 * needed:
        return SHARED_MEMORY
    return None


def _staged_files(sources: list[TileSource], window_size: tuple[int, int], cloud_mask: bool):
    """What to stage: ``(source index, kind, file, data type, block size, grid)`` in staging order."""
    plan = []
    for i, source in enumerate(sources):
        if not reads_directly(source, window_size):
            for band, f in zip(("red", "green", "blue"), source.files, strict=True):
                plan.append((i, band, f, "UInt16", source.block_size, source.band_grid))
        if cloud_mask and source.scl and source.mask_warp:
            info = inspect_mask(source.scl)
            plan.append((i, "scl", source.scl, "Byte", info.block_size, info.grid))
    return plan


def reads_directly(source: TileSource, window_size: tuple[int, int]) -> bool:
    """True when every block of the source's band files lies inside exactly one output window."""
    if source.reprojected:
        return False
    (bx, by), (ww, wh) = source.block_size, window_size
    p = source.placement
    # (an input cut by --aoi is read from file_offset: its blocks start there, not at its placement)
    return ((p.col_off - source.file_offset[0]) % bx == 0 and (p.row_off - source.file_offset[1]) % by == 0
            and ww % bx == 0 and wh % by == 0)


def unit_windows(grid: Grid, block_size: tuple[int, int]) -> list[Window]:
    """Units of whole blocks (the multiple of the block closest to 1024 px), row-major, covering ``grid``."""
    return plan_windows(grid.size, choose_window_size(block_size, grid.size))


def _write_raw_vrt(original: str, vrt: str, raw: str, data_type: str) -> None:
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


def plan_staging(sources: list[TileSource], window_size: tuple[int, int], output: str, *, cloud_mask: bool,
                 parent: str | None = None, single_node: bool = False, extra_bytes: int = 0
                 ) -> tuple[list[TileSource], list[StagedFile], list[StageUnit], str | None]:
    """Decide what to stage and where, create the copies' VRTs, and point the sources at them.

    Returns the sources (staged ones now open the copies), the staged files, the units (in source order,
    bands then SCL, row-major) and the staging directory (None when nothing is staged and ``extra_bytes``, the
    room something else of the run needs there, is 0).
    """
    todo = _staged_files(sources, window_size, cloud_mask)
    if not todo and not extra_bytes:
        return list(sources), [], [], None
    needed = extra_bytes + sum(grid.width * grid.height * _ITEMSIZE[dtype] for *_, dtype, _block, grid in todo)
    directory = staging_directory(output, choose_staging_parent(parent, single_node, needed))
    shutil.rmtree(directory, ignore_errors=True)  # left by a run that was killed
    try:
        os.makedirs(directory)
    except OSError as exc:
        raise OutputError(f"{output}: cannot create the staging directory {directory}: {exc.strerror}") from None
    staged: list[StagedFile] = []
    units: list[StageUnit] = []
    changes: dict[int, dict] = {i: {} for i in range(len(sources))}
    for i, kind, original, dtype, block, grid in todo:
        stem = os.path.join(directory, f"source{i}-{kind}")
        try:
            _write_raw_vrt(original, stem + ".vrt", stem + ".raw", dtype)
        except (OSError, RuntimeError) as exc:
            remove_staging(directory)
            raise OutputError(f"{output}: cannot create the staged copy of {original} in {directory}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
        staged.append(StagedFile(original, stem + ".vrt", stem + ".raw", grid, block, dtype))
        k = len(staged) - 1
        if kind == "scl":
            units += [StageUnit(i, (k,), w) for w in unit_windows(grid, block)]
            changes[i]["mask_dataset"] = (staged[k].vrt if sources[i].mask_factor
                                          else sources[i].mask_warp.xml(staged[k].vrt))
        elif kind == "blue":
            idx = (k - 2, k - 1, k)
            units += [StageUnit(i, idx, w) for w in unit_windows(grid, block)]
            copies = tuple(staged[j].vrt for j in idx)
            warp = sources[i].band_warp
            changes[i]["datasets"] = tuple(warp.xml(v) for v in copies) if warp else copies
    result = [dataclasses.replace(s, **changes[i]) if changes[i] else s for i, s in enumerate(sources)]
    return result, staged, units, directory
