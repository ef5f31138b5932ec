"""HDF5 -> GeoTIFF/COG conversion: the last step of ``compose --backend hdf5``, and ``mpi-s2 convert``.

Conversion is the output stage (:mod:`mpi_s2.parallel.output_stage`) with another source of pixels: rank 0
schedules the windows and places the encoded tiles; workers read their windows from the HDF5 file (independent
reads) and encode whole tiles, COG overviews included. The result is the writer backend's file, pixel for pixel
and in its georeferencing and metadata. A conversion is never resumed: a failure or a signal leaves nothing.

``mpi-s2 convert`` also takes an 8-bit RGB or RGBA raster GDAL reads (a campaign's VRT of its tiles, see
``campaign assemble``): workers read their windows with GDAL, the same output stage writes the GeoTIFF or COG.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from mpi4py import MPI
from osgeo import gdal

from mpi_s2.errors import CollectiveFailure, MpiS2Error, OutputError
from mpi_s2.inputs.bands import Grid, epsg_code
from mpi_s2.inputs.block_counts import DecodeCounter
from mpi_s2.output.free_space import full_disk_error
from mpi_s2.output.hdf5_store import WindowReader, read_attrs
from mpi_s2.output.paths import check_output_path, check_side_file, remove_partial
from mpi_s2.output.plan import OutputPlan, OutputSpec, check_written_paths, plan_cog
from mpi_s2.output.profiles import creation_options as profile_options
from mpi_s2.output.profiles import validate_creation_options
from mpi_s2.output.tile_encoding import workers_can_compress
from mpi_s2.parallel import termination
from mpi_s2.parallel.output_stage import open_output, write_output
from mpi_s2.parallel.progress import Progress
from mpi_s2.parallel.roles import PLANNER_RANK, Roles
from mpi_s2.parallel.run_report import RunReport
from mpi_s2.planning.scheduling import WorkPlan
from mpi_s2.report import RankStats, build_report
from mpi_s2.text import plural
from mpi_s2.windows import DEFAULT_WINDOW_TARGET, Window, intersection, plan_windows
from mpi_s2.worker.items import ItemWorker

log = logging.getLogger("mpi_s2")


def convert_store(comm: MPI.Comm, roles: Roles, out: OutputPlan, work: WorkPlan, path: str, stats: RankStats,
                  progress: Progress) -> tuple[int, int] | None:
    """Write ``out`` from the HDF5 file at ``path``: workers read and encode, rank 0 places.

    Returns the quicklook's size on the writer rank when ``out`` asks for one."""
    assembler = open_output(comm, roles, out)
    reader: WindowReader | RasterWindowReader | None = None
    if roles.is_worker:
        reader = WindowReader(path) if is_hdf5(path) else RasterWindowReader(path)
    try:
        worker = ItemWorker(reader, stats, DecodeCounter()) if reader is not None else None
        return write_output(comm, roles, out, work, worker, stats, progress, assembler,
                            list(range(len(out.windows))))
    finally:
        if reader is not None:
            reader.close()


def plan_from_raster(path: str, output: str, *, cog: bool, overrides: dict[str, str],
                     overwrite: bool, side_files: Mapping[str, str | None] | None = None) -> OutputPlan:
    """``mpi-s2 convert MOSAIC.vrt``: the output plan of an 8-bit RGB(A) raster (rank 0), in windows of whole
    512 x 512 tiles (the deflate profile, the user's ``--co`` over it)."""
    for option, side in (side_files or {}).items():
        if side:
            check_side_file(side, option)
    check_written_paths({"-o": output, **(side_files or {})}, inputs=(path,))
    try:
        ds = gdal.Open(path)
    except RuntimeError as exc:
        raise OutputError(f"{path}: cannot be read as a raster ({str(exc).strip()})") from None
    bands = ds.RasterCount
    if bands not in (3, 4) or any(ds.GetRasterBand(b + 1).DataType != gdal.GDT_Byte for b in range(bands)):
        raise OutputError(f"{path}: not an 8-bit RGB or RGBA raster ({bands} bands of "
                          f"{gdal.GetDataTypeName(ds.GetRasterBand(1).DataType)})")
    check_output_path(output, overwrite=overwrite, inputs=(path,))
    options = profile_options("deflate", overrides, alpha=bands == 4)
    validate_creation_options(output, options, bands)
    grid = Grid(ds.RasterXSize, ds.RasterYSize, tuple(ds.GetGeoTransform()), ds.GetProjection())
    window_size = (DEFAULT_WINDOW_TARGET, DEFAULT_WINDOW_TARGET)
    levels = encoded = 0
    if cog:
        window_size, levels, encoded = plan_cog(output, options, window_size, grid.size)
    windows = tuple(plan_windows(grid.size, window_size))
    spec = OutputSpec(output, grid, bands, options, {})
    return OutputPlan(spec, window_size, windows, writer_encodes_because=workers_can_compress(
        options, window_size, grid.size), cog=cog, overview_levels=levels, worker_overview_levels=encoded)


class RasterWindowReader:
    """Conversion of a raster: a rank reads windows of it with GDAL."""

    def __init__(self, path: str):
        self.dataset = gdal.Open(path)

    def render(self, window: Window, block: np.ndarray, stats: RankStats | None = None) -> None:
        with stats.timer("read") if stats is not None else contextlib.nullcontext():
            self.dataset.ReadAsArray(window.col_off, window.row_off, window.width, window.height, buf_obj=block)

    def close(self) -> None:
        self.dataset = None


def is_hdf5(path: str) -> bool:
    return path.lower().endswith((".h5", ".hdf5"))


def plan_from_store(path: str, output: str, *, cog: bool, overrides: dict[str, str],
                    overwrite: bool, side_files: Mapping[str, str | None] | None = None) -> OutputPlan:
    """``mpi-s2 convert``: the output plan of a complete HDF5 file (rank 0); ``side_files``: the other files
    the run writes, by option (``--report``, ``--progress-file``), checked first."""
    for option, side in (side_files or {}).items():
        if side:
            check_side_file(side, option)
    check_written_paths({"-o": output, **(side_files or {})}, inputs=(path,))
    if not os.path.isfile(path):
        raise OutputError(f"{path}: no such HDF5 file")
    attrs = read_attrs(path)
    status = attrs["window_status"]
    if not status.all():
        written = f"{int(status.sum())} of {plural(status.size, 'window')} written"
        raise OutputError(f"{path}: incomplete ({written}); finish it "
                          f"with 'compose --backend hdf5 --resume' and the same arguments")
    check_output_path(output, overwrite=overwrite, inputs=(path,))
    bands, height, width = attrs["shape"]
    options = {**attrs["creation_options"], **overrides}
    options = profile_options("raw", options, alpha=bands == 4)  # the stored options, then the user's
    validate_creation_options(output, options, bands)
    grid = Grid(width, height, tuple(attrs["geotransform"]), attrs["crs_wkt"])
    window_size = tuple(attrs["plan"]["window_size"])
    levels = encoded = 0
    if cog:
        window_size, levels, encoded = plan_cog(output, options, window_size, grid.size)
    stored = [Window(*w) for w in attrs["plan"]["windows"]]
    windows = tuple(w for w in plan_windows(grid.size, window_size)
                    if any(intersection(w, v) for v in stored))
    spec = OutputSpec(output, grid, bands, options, attrs["gdal_metadata"])
    return OutputPlan(spec, window_size, windows, writer_encodes_because=workers_can_compress(
        options, window_size, grid.size), cog=cog, overview_levels=levels, worker_overview_levels=encoded)


def convert(path: str, output: str, comm: MPI.Comm, *, cog: bool = False, overrides: dict[str, str] | None = None,
            overwrite: bool = False, schedule: str = "dynamic", progress: bool = True,
            progress_file: str | None = None, report: str | None = None) -> dict[str, Any] | None:
    """``mpi-s2 convert RUN.h5 -o OUT.tif``: the report on rank 0, None elsewhere.

    Rank 0 writes the report (``report``) whatever the outcome (:mod:`mpi_s2.parallel.run_report`)."""
    with RunReport(report, comm.rank, comm.size) as run:
        run.learn(output=output, converted_from=os.path.abspath(path))
        return _convert(path, output, comm, run, cog=cog, overrides=overrides, overwrite=overwrite,
                        schedule=schedule, progress=progress, progress_file=progress_file, report=report)


def _convert(path: str, output: str, comm: MPI.Comm, run: RunReport, *, cog: bool, overrides: dict[str, str] | None,
             overwrite: bool, schedule: str, progress: bool, progress_file: str | None,
             report: str | None) -> dict[str, Any] | None:
    start = time.perf_counter()
    roles = Roles(comm.rank, comm.size)
    stats = RankStats(comm.rank, roles.describe())
    outcome: OutputPlan | MpiS2Error | None = None
    if roles.is_planner:
        try:
            planner = plan_from_store if is_hdf5(path) else plan_from_raster
            outcome = planner(path, output, cog=cog, overrides=overrides or {}, overwrite=overwrite,
                              side_files={"--report": report, "--progress-file": progress_file})
        except MpiS2Error as exc:
            outcome = exc
    shared = comm.bcast(outcome.without_windows() if isinstance(outcome, OutputPlan) else outcome,
                        root=PLANNER_RANK)
    if isinstance(shared, MpiS2Error):
        raise CollectiveFailure(shared)
    out = outcome if roles.is_planner else shared
    assert isinstance(out, OutputPlan)
    if run.writes:
        run.learn(crs_epsg=epsg_code(out.spec.grid.crs_wkt), size=list(out.spec.grid.size), windows=len(out.windows))
    work = WorkPlan(out.windows, schedule=schedule)
    # a conversion is never resumed (the HDF5 file is the source): a failure or a signal leaves nothing beside it
    forget_cleanup = termination.on_signal(lambda signum: remove_partial(output) if roles.is_writer else None)
    shown = Progress(len(out.windows), enabled=progress and roles.is_writer,
                     progress_file=progress_file if roles.is_writer else None)
    run.progress = shown
    try:
        convert_store(comm, roles, out, work, path, stats, shown)
    except BaseException as exc:
        full = full_disk_error(exc, output, [output]) if roles.is_writer else None
        if roles.is_writer:
            remove_partial(output)
        if full:
            raise full from exc
        raise
    finally:
        shown.close()
        forget_cleanup()
    ranks = comm.gather(stats.finish(), root=PLANNER_RANK)
    if not roles.is_planner:
        return None
    assert ranks is not None
    wall = time.perf_counter() - start
    result = build_report({"output": output, "converted_from": os.path.abspath(path), "size": list(out.spec.grid.size),
                           "pixels": out.spec.grid.width * out.spec.grid.height,
                           "windows": len(out.windows), "mpi_ranks": comm.size, "cog": cog,
                           "creation_options": dict(out.spec.creation_options)}, ranks, wall)
    result = run.ok(result)
    log.info("converted %s to %s in %.1f s", path, output, wall)
    return result
