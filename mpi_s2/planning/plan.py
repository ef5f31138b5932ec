"""The planner's work: resolve inputs, check the output, lay out the mosaic, cut it into windows, stage.

Runs on rank 0 only; the resulting :class:`Plan` (small metadata, no pixels) is broadcast to every rank,
without its work lists: each worker learns its work from the scatter and from rank 0's answers. Everything the
output needs comes from one question to the output side (:func:`mpi_s2.output.plan.plan_output`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpi_s2.config import BandFiles, ComposeConfig
from mpi_s2.errors import InputError, OutputError
from mpi_s2.inputs.area import read_aoi
from mpi_s2.inputs.bands import Grid, gdal_path, inspect_mask
from mpi_s2.inputs.block_counts import block_count
from mpi_s2.inputs.cloudmask import masked_fraction
from mpi_s2.inputs.metadata import RGB_BANDS
from mpi_s2.inputs.products import open_product
from mpi_s2.inputs.stac import band_sets, items_from
from mpi_s2.inputs.stac_search import save_items, search_items
from mpi_s2.output.fingerprint import fingerprint_digest, run_fingerprint, stored_digest
from mpi_s2.output.hdf5_store import h5_path
from mpi_s2.output.paths import spool_path
from mpi_s2.output.plan import (
    OutputPlan,
    OutputRequest,
    check_hdf5_file,
    check_output_request,
    check_written_paths,
    plan_output,
)
from mpi_s2.output.run_lock import wait_until_free
from mpi_s2.pixels.composite import STACK_BYTES_PER_SAMPLE, check_stretches, window_budget_side
from mpi_s2.pixels.radiometry import LUT_SIZE, Stretch, build_lut
from mpi_s2.pixels.stretch import StretchLimits, check_offsets, dn_luts, parse_stretch, read_limits
from mpi_s2.planning.aoi import OUTSIDE, AoiMask, AreaOfInterest, envelope_window, place_aoi
from mpi_s2.planning.mosaic import TileInput, TileSource, clip_mosaic, footprint, layout_mosaic
from mpi_s2.planning.observations import order_inputs, select_inputs, with_cloud_cover
from mpi_s2.planning.scheduling import WorkPlan
from mpi_s2.planning.stage_plan import StagedFile, StageUnit, check_staging_parent, plan_staging, remove_staging
from mpi_s2.text import plural
from mpi_s2.windows import Window, intersection, tile_size

log = logging.getLogger("mpi_s2")

#: bytes of a composite's stack a rank may hold (one window's observations), within 300 MB of peak RSS per rank
#: with the interpreter, GDAL's block cache and the window's output (measured by make bench)
COMPOSITE_STACK_BUDGET = 100 * 1024 * 1024


@dataclass(frozen=True)
class Plan:
    config: ComposeConfig
    grid: Grid
    sources: tuple[TileSource, ...]
    block_size: tuple[int, int]
    output: OutputPlan  # the file, its windows, COG levels, quicklook, fingerprint
    staged: tuple[StagedFile, ...] = ()  # files decoded once into raw copies before windows are composed
    stage_units: tuple[StageUnit, ...] = ()
    independent: tuple[bool, ...] = ()  # per window: reads no staged copy (may start before staging ends)
    blocks_total: tuple[int, ...] = ()  # per source: blocks of its band files (and SCL when masking)
    staging_directory: str | None = None  # where the staged copies are (removed at the end)
    complete: bool = False  # --resume=auto: the output is already complete with this fingerprint; nothing to do
    observations: int = 1  # the most inputs covering one window (a --composite median/medoid stack's depth)
    inputs: tuple[dict, ...] = ()  # per input, in the order used: its label, date and cloud cover (the report)
    aoi: AreaOfInterest | None = None  # --aoi: the output is cut to it, pixels outside it are nodata

    @property
    def windows(self) -> tuple[Window, ...]:
        return self.output.windows

    @property
    def window_size(self) -> tuple[int, int]:
        return self.output.window_size

    @property
    def work(self) -> WorkPlan:
        """What the scheduler hands out: staging units, then windows."""
        return WorkPlan(self.output.windows, self.stage_units, self.independent, self.config.schedule)

    def for_workers(self) -> Plan:
        """The plan without its work lists, as rank 0 broadcasts it."""
        return dataclasses.replace(self, output=self.output.without_windows(), stage_units=(), independent=())


def _stretch(config: ComposeConfig, offset: float, scale: float) -> Stretch:
    return Stretch(offset=offset if config.offset is None else config.offset,
                   scale=scale if config.scale is None else config.scale,
                   max_reflectance=config.max_reflectance, gamma=config.gamma)


def catalogue_band_sets(config: ComposeConfig) -> list[BandFiles]:
    """The band sets of the items ``--stac`` names and ``--stac-search`` finds (saved with ``--save-items``)."""
    catalogue = config.catalogue
    if catalogue is None:
        return []
    entries = items_from(catalogue.sources)
    if catalogue.search_url:
        found = search_items(catalogue, config.dates, config.max_cloud_cover)
        log.info("--stac-search %s: %s", catalogue.search_url, plural(len(found), "item"))
        if catalogue.save_items:
            save_items(found, catalogue.save_items)
            log.info("saved the items found to %s (run from them with --stac %s)", catalogue.save_items,
                     catalogue.save_items)
        entries += found
    return band_sets(entries, dict(catalogue.assets) or None, config.cloud_mask)


def _band_set_radiometry(config: ComposeConfig, bands: BandFiles) -> tuple[tuple[Stretch, ...], str]:
    """A band set's stretches and the note saying where its offsets and scales come from."""
    overridden = ", overridden by options" if config.offset is not None or config.scale is not None else ""
    if bands.radiometry is None:
        stretch = _stretch(config, 0.0, 10000.0)
        return (stretch,) * 3, f"band files: offset {stretch.offset:g}, scale {stretch.scale:g}, from options"
    stretches = tuple(_stretch(config, offset, scale) for offset, scale in bands.radiometry)
    return stretches, (f"offsets {'/'.join(f'{s.offset:g}' for s in stretches)} (B04/B03/B02), scale "
                       f"{stretches[0].scale:g}, from {bands.radiometry_from}{overridden}")


def resolve_inputs(config: ComposeConfig) -> list[TileInput]:
    """Products, band sets and catalogue items as :class:`TileInput`, in mosaic order, with their radiometry."""
    if not config.products and not config.band_sets and config.catalogue is None:
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
        tiles.append(TileInput(product.path, product.rgb_files(config.resolution), scl, stretches, note,  # type: ignore[arg-type]
                               date=md.sensing_time[:10] if md.sensing_time else None, sensing_time=md.sensing_time,
                               cloud_cover=md.cloud_cover, cloud_cover_from="metadata"))
    for bands in (*config.band_sets, *catalogue_band_sets(config)):
        if config.cloud_mask and not bands.scl:
            raise InputError(f"{bands.red}: --cloud-mask with band files needs --scl FILE for each band set")
        stretches, note = _band_set_radiometry(config, bands)
        files = tuple(gdal_path(f) for f in (bands.red, bands.green, bands.blue))
        scl = gdal_path(bands.scl) if bands.scl and config.cloud_mask else None
        tile = TileInput(bands.label or bands.red, files, scl, stretches, note, date=bands.date,  # type: ignore[arg-type]
                         sensing_time=bands.sensing_time, cloud_cover=bands.cloud_cover,
                         cloud_cover_from="metadata" if bands.cloud_cover is not None else "")
        if (bands.scl and bands.cloud_cover is None
                and (config.order == "cloud-cover" or config.max_cloud_cover is not None)):
            tile = with_cloud_cover(tile, masked_fraction(gdal_path(bands.scl), config.mask_classes))
        tiles.append(tile)
    tiles, notes = select_inputs(tiles, config.dates, config.max_cloud_cover)
    for note in notes:
        log.info("%s", note)
    return order_inputs(tiles, config.order)


def output_request(config: ComposeConfig) -> OutputRequest:
    """What ``config`` asks of the output."""
    return OutputRequest(config.output, band_count=config.band_count, profile=config.profile,
                         creation_options=config.creation_options, window=config.window, cog=config.cog,
                         quicklook=config.quicklook, quicklook_size=config.quicklook_size,
                         overwrite=config.overwrite, resume=config.resume, inputs=config.input_paths,
                         report=config.report, progress_file=config.progress_file)


def check_paths(config: ComposeConfig, request: OutputRequest) -> None:
    """Check every path the run writes, before any input is opened: the output, quicklook, report and progress
    file (:func:`check_output_request`), that no two of them are one file and none is an input, the HDF5
    backend's file (``--keep-h5``) and the staging directory. :class:`OutputError` names the path."""
    check_output_request(request)
    h5 = h5_path(config.output) if config.backend == "hdf5" else None
    check_written_paths({"-o": config.output, "--quicklook": config.quicklook, "--report": config.report,
                         "--progress-file": config.progress_file, "the HDF5 file (--backend hdf5)": h5},
                        inputs=config.input_paths)
    if h5:
        check_hdf5_file(h5, config.output, keep=config.keep_h5, overwrite=config.overwrite, resume=config.resume)
    check_staging_parent(config.output, config.staging_dir)


def partial_run_of(config: ComposeConfig) -> bool:
    """Whether a partial run of ``config``'s output is there for ``--resume`` (its journal, or its HDF5 file)."""
    return os.path.exists(_resume_key(config))


def _resume_key(config: ComposeConfig) -> str:
    """The file a resume starts from, which a live run holds locked (:mod:`mpi_s2.output.run_lock`)."""
    return h5_path(config.output) if config.backend == "hdf5" else spool_path(config.output, "journal")


def decide_resume(config: ComposeConfig) -> tuple[ComposeConfig, bool]:
    """``--resume=auto``: resume when a partial run is there, else start fresh. Returns the config with
    ``resume`` decided, and whether a complete output is there (then its fingerprint decides, see
    :func:`make_plan`). Other configs are returned as they are."""
    if not config.resume_auto:
        return config, False
    return dataclasses.replace(config, resume=partial_run_of(config)), os.path.exists(config.output)


def make_plan(config: ComposeConfig, single_node: bool = False) -> Plan:
    """Check everything that can be checked before any pixel is read, and plan the run.

    With ``--resume=auto`` and a complete output in place, the output's stored fingerprint decides: the same as
    this run's gives a plan that is :attr:`Plan.complete` (nothing to do); another is an error, unless
    ``--overwrite``, which starts over (or resumes a partial run)."""
    wait_until_free(_resume_key(config), config.output)  # a stopped run may still be committing its work
    config, existing = decide_resume(config)
    request = output_request(config)
    if existing:  # judged by its fingerprint once planned (below), not by its existence
        request = dataclasses.replace(request, overwrite=True)
    check_paths(config, request)
    tiles = resolve_inputs(config)
    grid, placed, block_size = layout_mosaic(tiles, config.crs, config.resampling)
    if config.extent:
        grid, placed, tiles = _clip_to_extent(config.extent, grid, placed, tiles)
    aoi = None
    if config.aoi:
        grid, placed, tiles, aoi = _clip_to_aoi(config.aoi, grid, placed, tiles)
    inside = AoiMask(aoi) if aoi else None
    covers = lambda w: (any(intersection(w, s.placement) for s in placed)  # noqa: E731
                        and (inside is None or inside.classify(w) != OUTSIDE))
    output = plan_output(request, grid, block_size, _metadata(config, placed), covers=covers)
    if aoi and not output.windows:
        raise InputError(f"--aoi {config.aoi}: covers no pixel of the inputs")
    observations = 1
    if config.composite != "first":
        check_stretches([s.stretches for s in placed], [s.label for s in placed])
        output, observations = _fit_composite(config, request, output, grid, block_size, placed, covers)
    blocks_total = tuple(_blocks_total(s, config.cloud_mask) for s in placed)
    counts = config.stretch != "fixed" and not config.stretch_from  # a counting pass, then a rendering pass
    if counts:
        parse_stretch(config.stretch, config.stretch_bands)
        check_offsets([st.offset for s in placed for st in s.stretches],
                      [s.label for s in placed for _ in s.stretches])
    kept = 3 * 2 * grid.width * grid.height if counts and not config.stretch_only else 0  # its values, uint16
    sources, staged, units, staging = plan_staging(placed, output.window_size, config.output,
                                                   cloud_mask=config.cloud_mask, parent=config.staging_dir,
                                                   single_node=single_node, extra_bytes=kept)
    if aoi:
        units = _units_needed(units, staged, sources, output, grid)
    copied = [s.placement for s, before in zip(sources, placed, strict=True) if s != before]
    independent = tuple(not any(intersection(w, p) for p in copied) for w in output.windows)
    fingerprint = _fingerprint(config, sources, output, aoi)
    digest = fingerprint_digest(fingerprint)
    output = dataclasses.replace(output, fingerprint=fingerprint,
                                 spec=dataclasses.replace(output.spec, fingerprint_digest=digest))
    complete = existing and _complete_with(config, digest)
    if complete:
        remove_staging(staging)
        staging = None
    inputs = tuple({"input": t.label, "date": t.date, "cloud_cover": t.cloud_cover,
                    "cloud_cover_from": t.cloud_cover_from or None} for t in tiles)
    return Plan(config, grid, tuple(sources), block_size, output, staged=tuple(staged), stage_units=tuple(units),
                independent=independent, blocks_total=blocks_total, staging_directory=staging, complete=complete,
                observations=observations, inputs=inputs, aoi=aoi)


def _clip_to_aoi(path: str, grid: Grid, placed: list[TileSource], tiles: list[TileInput]
                 ) -> tuple[Grid, list[TileSource], list[TileInput], AreaOfInterest]:
    """``--aoi``: the mosaic cut to the AOI's envelope (see :mod:`mpi_s2.planning.aoi`), without the inputs that
    lie outside it."""
    window, aoi = place_aoi(path, read_aoi(path), grid)
    clipped, kept, sources = clip_mosaic(grid, placed, window)
    left = len(tiles) - len(kept)
    log.info("--aoi %s: the output is cut to %d x %d of the mosaic's %d x %d pixels%s", path, clipped.width,
             clipped.height, grid.width, grid.height,
             f"; {plural(left, 'input')} outside it not read" if left else "")
    return clipped, sources, [tiles[i] for i in kept], aoi


def _clip_to_extent(extent: tuple[float, float, float, float], grid: Grid, placed: list[TileSource],
                    tiles: list[TileInput]) -> tuple[Grid, list[TileSource], list[TileInput]]:
    """``--extent``: the mosaic cut to a box of its CRS (snapped outward to whole pixels), without the inputs that
    lie outside it: a campaign's tiles are cells of one grid, cut exactly on its pixel edges."""
    xmin, ymin, xmax, ymax = extent
    window = envelope_window((xmin, xmax, ymin, ymax), grid.geotransform, grid.size)
    if window is None:
        raise InputError(f"--extent {','.join(f'{v:g}' for v in extent)}: does not intersect the inputs"
                         f" (their mosaic spans {_bounds_text(grid)})")
    clipped, kept, sources = clip_mosaic(grid, placed, window)
    return clipped, sources, [tiles[i] for i in kept]


def _bounds_text(grid: Grid) -> str:
    x0, dx, _, y0, _, dy = grid.geotransform
    return f"{x0:g},{y0 + dy * grid.height:g},{x0 + dx * grid.width:g},{y0:g}"


def _units_needed(units: list[StageUnit], staged: list[StagedFile], sources: list[TileSource],
                  output: OutputPlan, grid: Grid) -> list[StageUnit]:
    """The staging units under some window of ``output`` (those outside the AOI are never decoded)."""
    (ww, wh), kept = output.window_size, {(w.col_off, w.row_off) for w in output.windows}

    def under_a_window(c0: int, r0: int, c1: int, r1: int) -> bool:
        c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, grid.width), min(r1, grid.height)
        return any((col, row) in kept for row in range(r0 // wh * wh, r1, wh) for col in range(c0 // ww * ww, c1, ww))

    needed = []
    for unit in units:
        file, source = staged[unit.files[0]], sources[unit.source]
        if under_a_window(*footprint(source, file.grid, unit.window, grid, mask=file.original == source.scl)):
            needed.append(unit)
    if len(needed) < len(units):
        log.info("--aoi: %d of %s to stage (the rest lies outside it)", len(needed),
                 plural(len(units), "staging unit"))
    return needed


def _observations(windows: tuple[Window, ...], sources: list[TileSource]) -> int:
    """The most inputs that cover one window (a composite's stack depth)."""
    return max((sum(1 for s in sources if intersection(w, s.placement)) for w in windows), default=0)


def _fit_composite(config: ComposeConfig, request: OutputRequest, output: OutputPlan, grid: Grid,
                   block_size: tuple[int, int], sources: list[TileSource], covers) -> tuple[OutputPlan, int]:
    """A median or medoid stacks every observation of a window: windows (whole output tiles) small enough for
    :data:`COMPOSITE_STACK_BUDGET`; a --window above it is kept, with one warning line; a stack too deep for
    even one tile is an error."""
    depth = _observations(output.windows, sources)
    side = max(output.window_size)
    need = depth * STACK_BYTES_PER_SAMPLE * output.window_size[0] * output.window_size[1]
    if need <= COMPOSITE_STACK_BUDGET:
        return output, depth
    mb = 1024 * 1024
    if config.window is not None:
        log.warning("--window %d: a --composite %s window of %d observations takes %d MB per rank, above the "
                    "%d MB budget (omit --window to fit it)", config.window, config.composite, depth, need // mb,
                    COMPOSITE_STACK_BUDGET // mb)
        return output, depth
    tile = max(tile_size(output.spec.creation_options))
    fitted = window_budget_side(depth, tile, COMPOSITE_STACK_BUDGET, side)
    if fitted is None:
        raise InputError(f"--composite {config.composite}: {depth} observations of one {tile} x {tile} output tile "
                         f"take {depth * STACK_BYTES_PER_SAMPLE * tile * tile // mb} MB, above the "
                         f"{COMPOSITE_STACK_BUDGET // mb} MB a rank may hold: use fewer dates (--dates, "
                         f"--max-cloud-cover) or smaller tiles (--co BLOCKXSIZE=256 --co BLOCKYSIZE=256)")
    smaller = dataclasses.replace(request, window=fitted)
    output = plan_output(smaller, grid, block_size, output.spec.metadata, covers=covers)
    return output, _observations(output.windows, sources)


def _complete_with(config: ComposeConfig, digest: str) -> bool:
    """``--resume=auto`` found a complete output: True when it was made with this run's fingerprint; an error
    when not, unless ``--overwrite`` (then False: this run replaces it)."""
    stored = stored_digest(config.output)
    if stored == digest:
        return True
    if config.overwrite:
        return False
    why = ("it keeps no mpi_s2 fingerprint (another program's file, or an older mpi_s2's)" if stored is None
           else "it was made from other inputs or options (its fingerprint differs)")
    raise OutputError(f"{config.output}: --resume=auto: the output is already there, but {why}; use --overwrite "
                      f"to replace it, or another -o")


def _metadata(config: ComposeConfig, sources: list[TileSource]) -> dict[str, str]:
    """The GDAL metadata of the output: the radiometric parameters and where each input's came from."""
    metadata = {
        "MPI_S2_MAX_REFLECTANCE": repr(config.max_reflectance),
        "MPI_S2_GAMMA": repr(config.gamma),
        "MPI_S2_RADIOMETRY": " | ".join(f"{s.label}: {s.radiometry_note}" for s in sources),
    }
    if config.cloud_mask:
        metadata["MPI_S2_MASKED_SCL_CLASSES"] = ",".join(map(str, config.mask_classes))
    if config.composite != "first":  # (first: the metadata of before, byte for byte)
        metadata["MPI_S2_COMPOSITE"] = config.composite
    if config.order != "given":
        metadata["MPI_S2_ORDER"] = config.order
    return metadata


def _fingerprint(config: ComposeConfig, sources: list[TileSource], output: OutputPlan,
                 aoi: AreaOfInterest | None = None) -> dict:
    """What identifies the result (see :mod:`mpi_s2.output.fingerprint`)."""
    files = [path for source in sources for path in (*source.files, *([source.scl] if source.scl else []))]
    files += [p for p in config.products if os.path.isfile(p)]  # the metadata a product's radiometry came from
    radiometry = [[[s.offset, s.scale] for s in source.stretches] for source in sources]
    options: dict[str, Any] = {"max_reflectance": config.max_reflectance, "gamma": config.gamma,
               "resolution": config.resolution, "cloud_mask": config.cloud_mask,
               "mask_classes": list(config.mask_classes) if config.cloud_mask else None,
               "crs": config.crs, "resampling": config.resampling, "alpha": config.alpha, "cog": config.cog}
    if config.composite != "first":  # (first: the fingerprint of before, so that its outputs stay complete)
        options["composite"] = config.composite
    if config.stretch != "fixed" or config.stretch_from:  # (fixed: likewise)
        options["stretch"] = {"stretch": config.stretch, "bands": config.stretch_bands,
                              "from": read_limits(config.stretch_from).as_dict() if config.stretch_from else None}
    if aoi is not None:  # (without: the fingerprint of before)
        options["aoi"] = aoi.digest
    return run_fingerprint(files, output, radiometry, options)


def _blocks_total(source: TileSource, cloud_mask: bool) -> int:
    total = 3 * block_count(source.band_grid.size, source.block_size)
    if cloud_mask and source.scl:
        info = inspect_mask(source.scl)
        total += block_count(info.grid.size, info.block_size)
    return total


def plan_luts(plan: Plan, limits: StretchLimits | None = None) -> np.ndarray:
    """``(n_sources, 3, 65536)`` uint8 lookup tables (red, green, blue per source), built once by the planner:
    the contract's, or those of percentile ``limits``."""
    if limits is not None:
        return dn_luts(limits, [tuple(st.offset for st in s.stretches) for s in plan.sources], plan.config.gamma,
                       reserve_zero=not plan.config.alpha)
    luts = np.empty((len(plan.sources), 3, LUT_SIZE), dtype=np.uint8)
    for i, source in enumerate(plan.sources):
        for b, stretch in enumerate(source.stretches):
            luts[i, b] = build_lut(stretch, reserve_zero=not plan.config.alpha)
    return luts
