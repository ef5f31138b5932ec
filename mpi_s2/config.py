"""The configuration of one ``compose`` run: a plain value built by the CLI (or by a caller in Python)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

#: SCL classes masked by --cloud-mask: cloud shadow, medium and high probability cloud, thin cirrus.
DEFAULT_MASK_CLASSES = (3, 8, 9, 10)
#: The output profile (named creation options, see mpi_s2.output.profiles) used unless --co overrides it.
DEFAULT_PROFILE = "zstd"


@dataclass(frozen=True)
class BandFiles:
    """One set of plain band files (e.g. COGs), with its optional scene classification."""

    red: str
    green: str
    blue: str
    scl: str | None = None
    date: str | None = None  # --date: when it was acquired (ISO date), for --order date and --dates
    # From a catalogue item (mpi_s2.inputs.stac); band sets of the command line leave them unset:
    label: str | None = None  # how messages and the report name it (default: the red file)
    radiometry: tuple[tuple[float, float], ...] | None = None  # (offset, scale) in DN of red, green, blue
    radiometry_from: str = ""  # where they come from ("raster:bands", "processing baseline 05.09", ...)
    cloud_cover: float | None = None  # percent (eo:cloud_cover)
    sensing_time: str | None = None  # ISO date and time (ties of a date)

    @property
    def files(self) -> tuple[str, ...]:
        return (self.red, self.green, self.blue) + ((self.scl,) if self.scl else ())


@dataclass(frozen=True)
class Catalogue:
    """The inputs a STAC catalogue names (``--stac``) or a STAC API search finds (``--stac-search``); rank 0's
    planner reads them (see mpi_s2.inputs.stac and mpi_s2.inputs.stac_search)."""

    sources: tuple[str, ...] = ()  # --stac FILE_OR_URL ...
    search_url: str | None = None  # --stac-search URL
    collection: str | None = None  # --collection
    bbox: tuple[float, float, float, float] | None = None  # --bbox W,S,E,N (longitude, latitude)
    aoi: str | None = None  # --aoi FILE.geojson: searched with, and the output clipped to it
    assets: tuple[tuple[str, str], ...] = ()  # --assets red=KEY,...: (role, key)
    save_items: str | None = None  # --save-items FILE.json: the items found, for a later --stac


@dataclass(frozen=True)
class ComposeConfig:
    output: str
    products: tuple[str, ...] = ()  # .SAFE folders or zips, mosaicked in this order
    band_sets: tuple[BandFiles, ...] = ()  # after the products, in this order
    catalogue: Catalogue | None = None  # after the band sets: one band set per item
    offset: float | None = None  # None: from product metadata (band files: 0)
    scale: float | None = None  # None: from product metadata (band files: 10000)
    max_reflectance: float = 1.0
    gamma: float = 2.2
    resolution: int = 10
    cloud_mask: bool = False
    mask_classes: tuple[int, ...] = DEFAULT_MASK_CLASSES
    crs: str | None = None
    resampling: str = "near"
    # --aoi FILE.geojson: the output is cut to this area's envelope on the inputs' pixel grid, and its pixels
    # outside the area are nodata; windows wholly outside it are never read (see mpi_s2.planning.aoi)
    aoi: str | None = None
    # --extent XMIN,YMIN,XMAX,YMAX: the output cut to this box of its CRS, snapped outward to whole pixels
    extent: tuple[float, float, float, float] | None = None
    composite: str = "first"  # or "median", "medoid" over the observations of a pixel (mpi_s2.pixels.composite)
    order: str = "given"  # or "cloud-cover", "date", "date-desc" (mpi_s2.planning.observations)
    dates: tuple[str, str] | None = None  # --dates FROM/TO (ISO dates, inclusive)
    max_cloud_cover: float | None = None  # --max-cloud-cover P (percent)
    stretch: str = "fixed"  # or "percentile:LOW,HIGH" (see mpi_s2.pixels.stretch)
    stretch_bands: str = "linked"  # or "per-band"
    stretch_from: str | None = None  # apply the limits of this stretch file or report instead of counting
    stretch_only: bool = False  # mpi-s2 stretch: count and write the limits to ``output`` (JSON), no image
    alpha: bool = True
    window: int | None = None
    schedule: str = "dynamic"  # or "static" (see mpi_s2.planning.scheduling)
    staging_dir: str | None = None  # None: beside the output (see mpi_s2.planning.stage_plan)
    backend: str = "writer"  # or "hdf5" (see mpi_s2.parallel.hdf5_backend)
    keep_h5: bool = False  # hdf5 backend: keep the HDF5 file after converting it
    resume: bool = False  # continue a killed run (see mpi_s2.output.tiff_assembly)
    # --resume=auto: the planner decides: resume a partial run if there is one, else start fresh, or (output
    # complete with the same fingerprint) nothing to do (see mpi_s2.planning.plan.decide_resume)
    resume_auto: bool = False
    cog: bool = False  # a Cloud-Optimized GeoTIFF with internal overviews (see mpi_s2.output.coarse_levels)
    quicklook: str | None = None  # a .png or .jpg preview of the output (see mpi_s2.output.quicklook)
    quicklook_size: int = 1024
    profile: str = DEFAULT_PROFILE
    creation_options: Mapping[str, str] = field(default_factory=dict)
    overwrite: bool = False
    report: str | None = None
    progress: bool = True
    progress_file: str | None = None  # JSON progress lines appended here (see mpi_s2.progress)

    @property
    def input_paths(self) -> tuple[str, ...]:
        return self.products + tuple(f for bs in self.band_sets for f in bs.files)

    @property
    def band_count(self) -> int:
        return 4 if self.alpha else 3
