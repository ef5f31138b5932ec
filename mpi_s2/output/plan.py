"""What the output stage needs to know, as one explicit value (:class:`OutputPlan`), and the one function that
makes it from what the user asked (:func:`plan_output`).

The planner asks :func:`check_output_request` before it reads any input (cheap checks of every path the run
writes), then :func:`plan_output` once the grid is known. ``mpi-s2 convert`` builds its plan from an HDF5 file
the same way. The output stage itself (:mod:`mpi_s2.parallel.output_stage`) reads nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from mpi_s2.config import DEFAULT_PROFILE
from mpi_s2.errors import OutputError, PathError
from mpi_s2.inputs.bands import Grid
from mpi_s2.output.overviews import check_window_size, level_count, worker_levels
from mpi_s2.output.paths import check_output_path, check_side_file
from mpi_s2.output.profiles import creation_options, validate_creation_options
from mpi_s2.output.quicklook import DEFAULT_SIZE, quicklook_format, reduction_factor
from mpi_s2.output.tile_encoding import workers_can_compress
from mpi_s2.windows import Window, choose_window_size, plan_windows, tile_size


@dataclass(frozen=True)
class OutputSpec:
    """Everything needed to create the output file: where, its grid, bands, creation options and metadata."""

    path: str
    grid: Grid
    band_count: int  # 3 (RGB) or 4 (RGBA)
    creation_options: Mapping[str, str]
    metadata: Mapping[str, str]
    # the run's fingerprint digest, kept in the GDAL metadata domain MPI_S2 (see mpi_s2.output.fingerprint)
    fingerprint_digest: str | None = None


@dataclass(frozen=True)
class OutputRequest:
    """What the user asked of the output (``compose``'s output options)."""

    path: str
    band_count: int = 4
    profile: str = DEFAULT_PROFILE
    creation_options: Mapping[str, str] = field(default_factory=dict)
    window: int | None = None  # --window: forces the window edge
    cog: bool = False
    quicklook: str | None = None
    quicklook_size: int = DEFAULT_SIZE
    overwrite: bool = False
    resume: bool = False
    inputs: tuple[str, ...] = ()  # input paths the output must not overwrite
    report: str | None = None  # --report: the run report's path
    progress_file: str | None = None  # --progress-file


@dataclass(frozen=True)
class OutputPlan:
    """Everything the output stage needs: the file, the windows it is written in, how tiles are encoded, COG
    overview levels, the quicklook, and whether the run resumes (and what identifies it)."""

    spec: OutputSpec
    window_size: tuple[int, int]
    windows: tuple[Window, ...]  # only the windows something covers
    empty_windows: int = 0  # windows nothing covers: never read, left as nodata (sparse tiles)
    writer_encodes_because: str | None = None  # None: workers encode whole output tiles; else why not
    cog: bool = False
    overview_levels: int = 0  # --cog: internal overview levels (see mpi_s2.output.overviews)
    worker_overview_levels: int = 0  # --cog: levels 1 .. this one are encoded by the workers with the windows
    quicklook: str | None = None
    quicklook_size: int = DEFAULT_SIZE
    resume: bool = False
    fingerprint: dict[str, Any] | None = None  # what identifies the result (mpi_s2.output.fingerprint)

    @property
    def path(self) -> str:
        return self.spec.path

    @property
    def band_count(self) -> int:
        return self.spec.band_count

    @property
    def max_pixels(self) -> int:
        return self.window_size[0] * self.window_size[1]

    @property
    def quicklook_factor(self) -> int:
        """The quicklook's cell edge in output pixels; 0 when no quicklook is asked for."""
        return reduction_factor(*self.spec.grid.size, self.quicklook_size) if self.quicklook else 0

    @property
    def resumable(self) -> bool:
        """Whether the run keeps a journal: workers encode whole tiles (see mpi_s2.output.tiff_assembly)."""
        return self.writer_encodes_because is None

    def without_windows(self) -> OutputPlan:
        """The plan as the other ranks get it: they learn their windows from rank 0."""
        return replace(self, windows=())


def check_output_request(request: OutputRequest) -> None:
    """Raise :class:`OutputError`/:class:`InputError` for an output, quicklook, report or progress file path that
    cannot be written."""
    for option, side in (("--report", request.report), ("--progress-file", request.progress_file)):
        if side:
            check_side_file(side, option)
    check_output_path(request.path, overwrite=request.overwrite, inputs=request.inputs)
    if request.quicklook:
        quicklook_format(request.quicklook)
        check_output_path(request.quicklook, overwrite=request.overwrite, inputs=request.inputs)


def check_written_paths(paths: Mapping[str, str | None], inputs: tuple[str, ...] = ()) -> None:
    """Raise :class:`OutputError` when two files the run writes are one (``paths``: option -> path, e.g.
    ``{"-o": OUT, "--report": R}``), or when a file it writes besides its output is one of its ``inputs``."""
    seen: dict[str, str] = {}
    for option, path in paths.items():
        if not path:
            continue
        real = os.path.realpath(path)
        if real in seen:
            raise PathError(f"{path}: given as both {seen[real]} and {option}; each file the run writes needs "
                            f"its own path", path)
        seen[real] = option
        for source in inputs:
            if os.path.realpath(source) == real:
                raise PathError(f"{path}: {option} would overwrite the input {source}", path)


def check_hdf5_file(path: str, output: str, *, keep: bool, overwrite: bool, resume: bool) -> None:
    """Raise :class:`OutputError` when the HDF5 backend's file ``path`` (beside ``output``) cannot or must not
    be written: its directory must be writable, it must not be a directory, and a file kept by ``--keep-h5``
    replaces an existing one only with ``--overwrite`` (``--resume`` continues it)."""
    check_side_file(path, "--backend hdf5")
    if keep and os.path.exists(path) and not (overwrite or resume):
        raise OutputError(f"{path}: already exists, and --keep-h5 would replace it with the HDF5 file of {output} "
                          f"(use --overwrite to replace it, or --resume to finish its run)")


def plan_output(request: OutputRequest, grid: Grid, block_size: tuple[int, int], metadata: Mapping[str, str],
                covers: Callable[[Window], bool] = lambda window: True) -> OutputPlan:
    """The output plan of a ``grid`` read in blocks of ``block_size``: creation options (checked by GDAL), windows
    (only those ``covers`` keeps), COG levels and how tiles are encoded."""
    options = creation_options(request.profile, request.creation_options, alpha=request.band_count == 4)
    validate_creation_options(request.path, options, request.band_count)
    window_size = choose_window_size(block_size, grid.size, request.window)
    levels = encoded = 0
    if request.cog:
        window_size, levels, encoded = plan_cog(request.path, options, window_size, grid.size,
                                                window_given=request.window is not None)
    every = plan_windows(grid.size, window_size)
    windows = tuple(w for w in every if covers(w))
    return OutputPlan(OutputSpec(request.path, grid, request.band_count, options, dict(metadata)), window_size,
                      windows, empty_windows=len(every) - len(windows),
                      writer_encodes_because=workers_can_compress(options, window_size, grid.size),
                      cog=request.cog, overview_levels=levels, worker_overview_levels=encoded,
                      quicklook=request.quicklook, quicklook_size=request.quicklook_size, resume=request.resume)


def plan_cog(path: str, options: Mapping[str, str], window_size: tuple[int, int], raster_size: tuple[int, int],
             window_given: bool = False) -> tuple[tuple[int, int], int, int]:
    """Windows, overview levels and worker-encoded levels of a ``--cog`` run; :class:`OutputError` when the
    options or ``--window`` cannot make one.

    Unless ``--window`` was given, windows are rounded to whole output tiles (the nearest multiple, at least one).
    """
    if options.get("TILED", "NO").upper() not in ("YES", "TRUE", "ON", "1"):
        raise OutputError(f"{path}: --cog needs a tiled output (got TILED={options.get('TILED')})")
    tile = tile_size(options)
    if not window_given:
        window_size = (min(raster_size[0], tile[0] * max(1, round(window_size[0] / tile[0]))),
                       min(raster_size[1], tile[1] * max(1, round(window_size[1] / tile[1]))))
    reason = workers_can_compress(options, window_size, raster_size)
    if reason:
        raise OutputError(f"{path}: --cog: {reason}")
    levels = level_count(*raster_size, tile)
    check_window_size(window_size, raster_size, levels)
    return window_size, levels, worker_levels(window_size, raster_size, tile, levels)
