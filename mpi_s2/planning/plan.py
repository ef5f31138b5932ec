"""The planner's work: resolve inputs, check the output, lay out the mosaic, cut it into windows, stage.

Runs on rank 0 only; the resulting :class:`Plan` (small metadata, no pixels) is broadcast to every rank,
without its work lists: each worker learns its work from the scatter and from rank 0's answers.
"""

from __future__ import annotations

import os
import dataclasses
from dataclasses import dataclass

import numpy as np

from mpi_s2.config import ComposeConfig
from mpi_s2.errors import InputError, OutputError
from mpi_s2.inputs.metadata import RGB_BANDS
from mpi_s2.planning.fingerprint import run_fingerprint
from mpi_s2.planning.mosaic import TileInput, TileSource, layout_mosaic
from mpi_s2.inputs.products import open_product
from mpi_s2.output.profiles import creation_options
from mpi_s2.output.quicklook import quicklook_format
from mpi_s2.output.overviews import check_window_size, level_count, worker_levels
from mpi_s2.output.tiles import tile_size, workers_can_compress
from mpi_s2.pixels.radiometry import LUT_SIZE, Stretch, build_lut
from mpi_s2.planning.stage_plan import StagedFile, StageUnit, plan_staging
from mpi_s2.inputs.bands import Grid, inspect_mask
from mpi_s2.inputs.decoding import block_count
from mpi_s2.planning.windows import Window, choose_window_size, intersection, plan_windows
from mpi_s2.output.writer import OutputSpec, check_output_path, validate_creation_options


@dataclass(frozen=True)
class Plan:
    config: ComposeConfig
    grid: Grid
    sources: tuple[TileSource, ...]
    block_size: tuple[int, int]
    window_size: tuple[int, int]
    windows: tuple[Window, ...]  # only the windows that some input covers
    output: OutputSpec
    empty_windows: int  # windows no input covers: never read, left as nodata
    staged: tuple[StagedFile, ...] = ()  # files decoded once into raw copies before windows are composed
    stage_units: tuple[StageUnit, ...] = ()
    independent: tuple[bool, ...] = ()  # per window: reads no staged copy (may start before staging ends)
    blocks_total: tuple[int, ...] = ()  # per source: blocks of its band files (and SCL when masking)
    staging_directory: str | None = None  # where the staged copies are (removed at the end)
    writer_encodes_because: str | None = None  # None: workers encode whole output tiles; else why not
    overview_levels: int = 0  # --cog: internal overview levels (see mpi_s2.output.overviews)
    worker_overview_levels: int = 0  # --cog: levels 1 .. this one are encoded by the workers with the windows
    fingerprint: dict | None = None  # what identifies the result (see mpi_s2.planning.fingerprint), rank 0 only


def _stretch(config: ComposeConfig, offset: float, scale: float) -> Stretch:
    return Stretch(offset=offset if config.offset is None else config.offset,
                   scale=scale if config.scale is None else config.scale,
                   max_reflectance=config.max_reflectance, gamma=config.gamma)


def resolve_inputs(config: ComposeConfig) -> list[TileInput]:
    """Products and band sets as :class:`TileInput`, in mosaic order, with their radiometry."""
    if not config.products and not config.band_sets:
        raise InputError("no input: give one or more products (.SAFE or .zip) or --red/--green/--blue files")
    tiles: list[TileInput] = []
    products = [open_product(p) for p in config.products]
    levels = {p.level for p in products}
    if len(levels) > 1:
        first = {lvl: next(p.path for p in products if p.level == lvl) for lvl in sorted(levels)}
        raise InputError("cannot mix L1C and L2A products in one mosaic: "
                         + ", ".join(f"{path} is {lvl}" for lvl, path in first.items()))
    for product in products:
        md = product.metadata
        stretches = tuple(_stretch(config, md.radiometry[b].offset, md.radiometry[b].quantification)
                          for b in RGB_BANDS)
        source = "metadata" if config.offset is None and config.scale is None else "metadata, overridden by options"
        note = (f"{md.level} baseline {md.baseline}: offsets "
                f"{'/'.join(f'{s.offset:g}' for s in stretches)} (B04/B03/B02), quantification "
                f"{stretches[0].scale:g}, from {source}")
        scl = product.scl_file(config.resolution) if config.cloud_mask else None
        tiles.append(TileInput(product.path, product.rgb_files(config.resolution), scl, stretches, note))  # type: ignore[arg-type]
    for bands in config.band_sets:
        if config.cloud_mask and not bands.scl:
            raise InputError(f"{bands.red}: --cloud-mask with band files needs --scl FILE for each band set")
        stretch = _stretch(config, 0.0, 10000.0)
        note = f"band files: offset {stretch.offset:g}, scale {stretch.scale:g}, from options"
        files = tuple(os.path.abspath(f) for f in (bands.red, bands.green, bands.blue))
        scl = os.path.abspath(bands.scl) if bands.scl and config.cloud_mask else None
        tiles.append(TileInput(bands.red, files, scl, (stretch, stretch, stretch), note))  # type: ignore[arg-type]
    return tiles


def make_plan(config: ComposeConfig, single_node: bool = False) -> Plan:
    """Check everything that can be checked before any pixel is read, and plan the run."""
    check_output_path(config.output, overwrite=config.overwrite, inputs=config.input_paths)
    if config.quicklook:
        quicklook_format(config.quicklook)
        check_output_path(config.quicklook, overwrite=config.overwrite, inputs=config.input_paths)
    if config.staging_dir and not (os.path.isdir(config.staging_dir) and os.access(config.staging_dir, os.W_OK)):
        raise OutputError(f"{config.staging_dir}: --staging-dir is not a writable directory")
    tiles = resolve_inputs(config)
    grid, sources, block_size = layout_mosaic(tiles, config.crs, config.resampling)
    options = creation_options(config.profile, config.creation_options, alpha=config.alpha)
    validate_creation_options(config.output, options, config.band_count)
    window_size = choose_window_size(block_size, grid.size, config.window)
    levels = encoded_levels = 0
    if config.cog:
        window_size, levels, encoded_levels = plan_cog(config, options, window_size, grid.size)
    all_windows = plan_windows(grid.size, window_size)
    windows = tuple(w for w in all_windows if any(intersection(w, s.placement) for s in sources))
    metadata = {
        "MPI_S2_MAX_REFLECTANCE": repr(config.max_reflectance),
        "MPI_S2_GAMMA": repr(config.gamma),
        "MPI_S2_RADIOMETRY": " | ".join(f"{s.label}: {s.radiometry_note}" for s in sources),
    }
    if config.cloud_mask:
        metadata["MPI_S2_MASKED_SCL_CLASSES"] = ",".join(map(str, config.mask_classes))
    output = OutputSpec(config.output, grid, config.band_count, options, metadata)
    blocks_total = tuple(_blocks_total(s, config.cloud_mask) for s in sources)
    placed = sources
    sources, staged, units, staging = plan_staging(sources, window_size, config.output,
                                                   cloud_mask=config.cloud_mask, parent=config.staging_dir,
                                                   single_node=single_node)
    copied = [s.placement for s, before in zip(sources, placed) if s != before]
    independent = tuple(not any(intersection(w, p) for p in copied) for w in windows)
    plan = Plan(config, grid, tuple(sources), block_size, window_size, windows, output,
                empty_windows=len(all_windows) - len(windows), staged=tuple(staged), stage_units=tuple(units),
                independent=independent, blocks_total=blocks_total, staging_directory=staging,
                writer_encodes_because=workers_can_compress(options, window_size, grid.size),
                overview_levels=levels, worker_overview_levels=encoded_levels)
    return dataclasses.replace(plan, fingerprint=run_fingerprint(plan))


def plan_cog(config: ComposeConfig, options: dict[str, str], window_size: tuple[int, int],
             raster_size: tuple[int, int]) -> tuple[tuple[int, int], int, int]:
    """Windows, overview levels and worker-encoded levels of a ``--cog`` run; :class:`OutputError` when the
    options or ``--window`` cannot make one.

    Without ``--window``, windows are rounded to whole output tiles (the nearest multiple, at least one).
    """
    if options.get("TILED", "NO").upper() not in ("YES", "TRUE", "ON", "1"):
        raise OutputError(f"{config.output}: --cog needs a tiled output (got TILED={options.get('TILED')})")
    tile = tile_size(options)
    if config.window is None:
        window_size = tuple(min(full, t * max(1, round(edge / t)))  # type: ignore[assignment]
                            for edge, t, full in zip(window_size, tile, raster_size))
    reason = workers_can_compress(options, window_size, raster_size)
    if reason:
        raise OutputError(f"{config.output}: --cog: {reason}")
    levels = level_count(*raster_size, tile)
    check_window_size(window_size, raster_size, levels)
    return window_size, levels, worker_levels(window_size, raster_size, tile, levels)


def _blocks_total(source: TileSource, cloud_mask: bool) -> int:
    total = 3 * block_count(source.band_grid.size, source.block_size)
    if cloud_mask and source.scl:
        info = inspect_mask(source.scl)
        total += block_count(info.grid.size, info.block_size)
    return total


def plan_luts(plan: Plan) -> np.ndarray:
    """``(n_sources, 3, 65536)`` uint8 lookup tables (red, green, blue per source), built once by the planner."""
    luts = np.empty((len(plan.sources), 3, LUT_SIZE), dtype=np.uint8)
    for i, source in enumerate(plan.sources):
        for b, stretch in enumerate(source.stretches):
            luts[i, b] = build_lut(stretch, reserve_zero=not plan.config.alpha)
    return luts
