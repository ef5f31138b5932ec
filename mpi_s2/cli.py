"""The ``mpi-s2`` command line: parses and validates options, builds a config, calls the library.

MPI is imported only by ``compose``, so ``synth`` and ``--help`` work without a launcher.
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import logging
import os
import re
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from mpi_s2 import __version__
from mpi_s2.config import DEFAULT_MASK_CLASSES, ComposeConfig
from mpi_s2.errors import InputError, MpiS2Error, UsageError
from mpi_s2.output.profiles import parse_creation_option
from mpi_s2.pixels.composite import COMPOSITES
from mpi_s2.planning.mosaic import RESAMPLING
from mpi_s2.planning.observations import ORDERS
from mpi_s2.planning.scheduling import SCHEDULES

COMPOSE_EXAMPLE = """\
examples:
  mpi-s2 synth scene --size 2048                # writes scene/B04.tif, scene/B03.tif, scene/B02.tif
  mpirun -n 4 .venv/bin/python -m mpi_s2 compose \\
      --red scene/B04.tif --green scene/B03.tif --blue scene/B02.tif -o rgb.tif --report run.json
  mpirun -n 3 .venv/bin/python -m mpi_s2 compose --cloud-mask \\
      S2A_MSIL2A_..._T32TMS_....SAFE S2B_MSIL2A_..._T32TLS_....zip -o central-switzerland.tif

Rank 0 plans and then writes the GeoTIFF; every other rank reads and transforms windows.
Per band: out = floor(255 * clip(((DN + offset) / scale) / max_reflectance, 0, 1) ** (1/gamma) + 0.5).
Pixels where any band is 0 (nodata) are 0 in all bands and transparent in the alpha band; DN 65535
(saturated) is full brightness. Offsets and quantification come from each product's metadata.
Mosaics: products first, then band sets, in the order given; where they overlap the first valid pixel wins.
"""


SYNTH_EXAMPLE = """\
examples:
  mpi-s2 synth scene --size 2048                 # scene/B04.tif, scene/B03.tif, scene/B02.tif
  mpi-s2 synth products --product --zip          # products/S2B_MSIL2A_..._T32TMS_....zip

OUTDIR is a directory (made if missing), not a subcommand: 'scene' and 'products' above are just names.
"""


SEARCH_EXAMPLE = """\
example (on a login node; the job's nodes need no access to the catalogue):
  mpi-s2 search https://earth-search.aws.element84.com/v1 --collection sentinel-2-l2a \\
      --bbox 8.0,46.6,8.9,47.2 --dates 2023-06-01/2023-08-31 --max-cloud-cover 60 --save-items items.json
  sbatch jobs/compose.sbatch --stac items.json --composite median --cloud-mask -o region.tif
"""


_NEGATIVE_NUMBERS = re.compile(r"^-\d+$|^-\d*\.?\d+(,[-+\d.eE]*)*$")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, printed by launcher rank 0 only (not once per
    rank): ``mpi_s2: error: COMMAND: MESSAGE (see mpi-s2 COMMAND --help)``, naming the closest known option
    or choice when one was misspelt."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}  # the subcommands' parsers, on the top one
        # a value that starts with a negative number, "--bbox -11.3,24.8,-10.2,25.3", is a value, not an option
        self._negative_number_matcher = _NEGATIVE_NUMBERS

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if getattr(parsed, "action", None) == "plan":  # campaign plan: the rest are the tiles' compose options
            parsed.compose_options, extras = extras, []
        if extras:  # left over by the subcommand: name it, not the top-level parser
            parser = self.commands.get(getattr(parsed, "command", None) or "", self)
            parser.error(_unrecognized(parser, extras))
        return parsed

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as exc:
            close = difflib.get_close_matches(str(value), [str(c) for c in action.choices or ()], n=1)
            if not close:
                raise
            raise argparse.ArgumentError(action, f"{exc.message} (did you mean {close[0]}?)") from None

    def error(self, message: str):
        """Raise the usage error instead of printing it and exiting: :func:`main` has every rank agree on it first,
        so that the one line is printed before any rank's exit ends the job."""
        command = self.prog.partition(" ")[2]  # "mpi-s2 compose" -> "compose"; "" for mpi-s2 itself
        where = f"{command}: " if command else ""
        message = message.replace("\n", " ")
        raise UsageError(f"{where}{message} (see {self.prog} --help)")


def _unrecognized(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    """``unrecognized argument --quicklok (did you mean --quicklook?)``, for each of ``extras``."""
    known = [name[2:] for action in parser._actions for name in action.option_strings
             if name.startswith("--")]
    # argparse takes compose's PRODUCTs once: those after an option are left over (unless the value of a
    # misspelt option)
    split_products = parser.prog.endswith(" compose") and not any(e.startswith("-") for e in extras)
    words = []
    for extra in extras:
        word = shlex.quote(extra)
        if extra.startswith("-"):  # compared without dashes: "--" alone would make "--foo" close to "--co"
            close = difflib.get_close_matches(extra.partition("=")[0].lstrip("-"), known, n=1)
            if close:
                word += f" (did you mean --{close[0]}?)"
        elif split_products:
            word += " (give all PRODUCTs together, before or after the options)"
        words.append(word)
    return f"unrecognized argument{'s' if len(extras) > 1 else ''} {', '.join(words)}"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number > 0, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _resume_mode(text: str) -> str:
    """``--resume``'s optional value: only ``auto`` (a bare ``--resume`` keeps its meaning)."""
    if text != "auto":
        raise argparse.ArgumentTypeError(f"expected --resume or --resume=auto, got the value {text!r} (give "
                                         f"PRODUCTs before --resume)")
    return text


def _creation_option(text: str) -> tuple[str, str]:
    """``--co``'s type: ``'KEY=VALUE'`` -> ``('KEY', 'VALUE')``; a bad one is a usage error (exit 2)."""
    try:
        return parse_creation_option(text)
    except InputError as exc:  # "--co 'X': expected ..." -> "argument --co: 'X': expected ..."
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--co ")) from None


class _StoreInDict(argparse.Action):
    """Accumulates the ``(key, value)`` pairs of a repeatable option in a dict (a key's last value wins)."""

    def __call__(self, parser, namespace, values, option_string=None):
        options = dict(getattr(namespace, self.dest, None) or {})  # a copy: the default is shared
        key, value = values
        options[key] = value
        setattr(namespace, self.dest, options)


def _group(parser: argparse.ArgumentParser, title: str):
    """``parser``'s argument group ``title``: the one a parent parser brought, else a new one."""
    for group in parser._action_groups:
        if group.title == title:
            return group
    return parser.add_argument_group(title)


def _output_options() -> _Parser:
    """The options compose and convert share: declared once, a parent parser of both."""
    shared = _Parser(add_help=False)
    shared.add_argument("--schedule", choices=SCHEDULES, default="dynamic",
                        help="dynamic (default): workers ask rank 0 for more work in small batches; static: "
                             "each worker gets a fixed contiguous share")
    out = shared.add_argument_group("output")
    out.add_argument("-o", "--output", required=True, help="output GeoTIFF")
    out.add_argument("--co", action=_StoreInDict, type=_creation_option, default={}, metavar="KEY=VALUE",
                     help="GDAL GeoTIFF creation option (repeatable), e.g. --co COMPRESS=DEFLATE (convert: "
                          "it overrides the one stored in the HDF5 file)")
    out.add_argument("--cog", action="store_true",
                     help="write a Cloud-Optimized GeoTIFF: internal overviews (valid pixels averaged) until "
                          "the image fits one tile, overviews' data before the full resolution")
    out.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    out.add_argument("--report", metavar="JSON", help="write per-rank timings and throughput here")
    out.add_argument("--progress-file", metavar="FILE",
                     help="append JSON progress lines (time, phase, done, total, eta_s) here, to follow a "
                          "run from another node")
    return shared


def _date(text: str, option: str) -> str:
    """An ISO date (YYYY-MM-DD), as given."""
    try:
        datetime.date.fromisoformat(text)
    except ValueError:
        raise InputError(f"{option}: {text!r} is not a date (YYYY-MM-DD)") from None
    return text


def _date_range(text: str) -> tuple[str, str]:
    start, sep, end = text.partition("/")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not FROM/TO (e.g. 2023-06-01/2023-08-31)")
    try:
        first, last = datetime.date.fromisoformat(start), datetime.date.fromisoformat(end)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: FROM and TO must be dates (YYYY-MM-DD)") from None
    if last < first:
        raise argparse.ArgumentTypeError(f"{text!r}: TO is before FROM")
    return start, end


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r}: a percentage from 0 to 100")
    return value


def _bbox(text: str) -> tuple[float, float, float, float]:
    try:
        west, south, east, north = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not W,S,E,N (four numbers, degrees)") from None
    if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
        raise argparse.ArgumentTypeError(f"{text!r}: W < E within -180..180 and S < N within -90..90 (degrees)")
    return west, south, east, north


def _extent(text: str) -> tuple[float, float, float, float]:
    try:
        xmin, ymin, xmax, ymax = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not XMIN,YMIN,XMAX,YMAX (four numbers)") from None
    if not (xmin < xmax and ymin < ymax):
        raise argparse.ArgumentTypeError(f"{text!r}: needs XMIN < XMAX and YMIN < YMAX")
    return xmin, ymin, xmax, ymax


def _search_arguments(group, url_option: bool) -> None:
    """The options of a STAC API search: ``--stac-search URL`` in compose, ``URL`` in mpi-s2 search."""
    if url_option:
        group.add_argument("--stac-search", metavar="URL",
                           help="search this STAC API (e.g. https://earth-search.aws.element84.com/v1) for the "
                                "items of --collection within --bbox or --aoi, --dates and --max-cloud-cover")
    group.add_argument("--collection", metavar="C", help="the collection to search, e.g. sentinel-2-l2a")
    group.add_argument("--bbox", type=_bbox, metavar="W,S,E,N", help="search within this box (degrees)")
    group.add_argument("--aoi", metavar="FILE.geojson",
                       help="search where the items intersect this area (a GeoJSON polygon, feature or "
                            "feature collection, in degrees)" if not url_option else
                            "the area of interest (a GeoJSON polygon, feature or feature collection, in degrees): "
                            "the output is cut to it, pixels outside it are nodata and windows outside it are "
                            "never read; with --stac-search, the search is within it too")
    group.add_argument("--save-items", metavar="FILE.json",
                       help="save the items found (an ItemCollection): a job whose nodes cannot reach the "
                            "catalogue then runs from --stac FILE.json")


def _catalogue_arguments(group) -> None:
    group.add_argument("--stac", nargs="+", action="extend", default=[], metavar="FILE_OR_URL",
                       help="STAC Item, ItemCollection (FeatureCollection), or static Catalog or Collection "
                            "(followed recursively), in a file or at a URL; hrefs may be paths, file://, "
                            "http(s):// or s3:// (AWS_* variables: credentials, AWS_S3_ENDPOINT, "
                            "AWS_NO_SIGN_REQUEST=YES)")
    _search_arguments(group, url_option=True)
    group.add_argument("--assets", metavar="red=KEY,green=KEY,blue=KEY[,scl=KEY]",
                       help="the items' asset keys (default: Earth Search's red/green/blue/scl, else the "
                            "Planetary Computer's B04/B03/B02/SCL)")


def _catalogue(args: argparse.Namespace):
    """The catalogue options as a :class:`~mpi_s2.config.Catalogue`, or None; checked as far as can be without
    reading anything."""
    from mpi_s2.config import Catalogue
    from mpi_s2.inputs.stac import parse_assets

    search_only = [f"--{name.replace('_', '-')}" for name in ("collection", "bbox", "save_items")
                   if getattr(args, name) is not None]
    if not args.stac and not args.stac_search:
        if search_only or args.assets:
            raise InputError(f"{(search_only or ['--assets'])[0]} needs --stac-search URL"
                             f"{' or --stac' if not search_only else ''}")
        return None
    if search_only and not args.stac_search:
        raise InputError(f"{search_only[0]} needs --stac-search URL")
    if args.bbox and args.aoi:
        raise InputError("give --bbox or --aoi, not both")
    assets = tuple(parse_assets(args.assets).items()) if args.assets else ()
    return Catalogue(sources=tuple(args.stac), search_url=args.stac_search, collection=args.collection,
                     bbox=args.bbox, aoi=args.aoi, assets=assets, save_items=args.save_items)


def _compose_arguments(compose: argparse.ArgumentParser) -> None:
    """The inputs, radiometry, selection, contrast and output options of compose (and of stretch, which counts
    what compose would write)."""
    compose.add_argument("products", nargs="*", metavar="PRODUCT",
                         help="Sentinel-2 product: a .SAFE folder or a .zip of one (read in place)")
    bands = compose.add_argument_group("band files (repeat the three options for each band set of a mosaic)")
    bands.add_argument("--red", action="append", default=[], metavar="B04", help="red band file (uint16)")
    bands.add_argument("--green", action="append", default=[], metavar="B03", help="green band file (uint16)")
    bands.add_argument("--blue", action="append", default=[], metavar="B02", help="blue band file (uint16)")
    bands.add_argument("--scl", action="append", default=[], metavar="SCL",
                       help="scene classification of the band set (implies --cloud-mask)")
    radio = compose.add_argument_group("radiometry")
    radio.add_argument("--max-reflectance", type=float, default=1.0,
                       help="reflectance shown as full brightness (default 1.0, i.e. DN 10000 without offset)")
    radio.add_argument("--gamma", type=float, default=2.2, help="display gamma (default 2.2)")
    radio.add_argument("--offset", type=float, default=None,
                       help="DN offset: reflectance = (DN + offset) / scale (default: product metadata, "
                            "BOA_/RADIO_ADD_OFFSET; 0 for band files)")
    radio.add_argument("--scale", type=float, default=None,
                       help="quantification value (default: product metadata; 10000 for band files)")
    select = compose.add_argument_group("products, masks and mosaics")
    select.add_argument("--resolution", type=int, choices=(10, 20, 60), default=10,
                        help="band resolution to read from products, metres (default 10)")
    select.add_argument("--cloud-mask", action="store_true",
                        help="make pixels invalid where the L2A scene classification (SCL) is a masked class")
    select.add_argument("--mask-classes", default=",".join(map(str, DEFAULT_MASK_CLASSES)), metavar="LIST",
                        help="SCL classes to mask (default 3,8,9,10: cloud shadow, medium and high "
                             "probability cloud, thin cirrus)")
    select.add_argument("--extent", type=_extent, metavar="XMIN,YMIN,XMAX,YMAX",
                        help="cut the output to this box, in the output CRS's units (snapped outward to whole "
                             "pixels; a campaign's tiles are such boxes)")
    select.add_argument("--crs", help="output CRS, e.g. EPSG:32632 (default: the first input's); inputs in "
                                      "another CRS are reprojected")
    select.add_argument("--resampling", default="near", choices=RESAMPLING,
                        help="resampling of reprojected inputs (default near: digital numbers stay exact)")
    series = compose.add_argument_group("dates: cloud-free composites from a season of acquisitions")
    series.add_argument("--composite", choices=COMPOSITES, default="first",
                        help="first (default): the first valid observation in --order; median: per band the "
                             "median of the valid observations (DN + offset); medoid: the valid observation "
                             "nearest to the medians (all three bands from one date)")
    series.add_argument("--order", choices=ORDERS, default="given",
                        help="order of the inputs: given (default), cloud-cover (least cloudy first: product "
                             "metadata, or the masked fraction of a band set's --scl), date, date-desc")
    series.add_argument("--dates", type=_date_range, metavar="FROM/TO",
                        help="only products acquired from FROM to TO (ISO dates, inclusive)")
    series.add_argument("--max-cloud-cover", type=_percent, metavar="P",
                        help="only products whose metadata's cloud cover is at most P %%")
    contrast = compose.add_argument_group("contrast: one stretch for the whole run")
    contrast.add_argument("--stretch", default="fixed", metavar="fixed|percentile:LOW,HIGH",
                          help="fixed (default): the linear clamp at --max-reflectance; percentile:2,98: the "
                               "2nd and 98th percentiles of every valid output pixel's DN + offset, counted "
                               "exactly over the whole run (all ranks), become black and white")
    contrast.add_argument("--stretch-bands", choices=("linked", "per-band"), default="linked",
                          help="linked (default): one pair of limits for the three bands pooled (hues kept); "
                               "per-band: one pair per band (white balanced too)")
    contrast.add_argument("--stretch-from", metavar="JSON",
                          help="apply the limits of this file (mpi-s2 stretch's output, or the report of a "
                               "--stretch percentile run) instead of counting: separate jobs then match")
    _catalogue_arguments(compose.add_argument_group(
        "catalogue: inputs from STAC items, or from a STAC API search (one band set per item)"))
    bands.add_argument("--date", action="append", default=[], metavar="YYYY-MM-DD",
                       help="acquisition date of the band set (once per set, for --order date and --dates)")
    out = _group(compose, "output")  # with the shared -o, --co, --cog, --overwrite, --report, --progress-file
    out.add_argument("--no-alpha", action="store_true",
                     help="write 3 bands; valid pixels are >= 1 so that 0 means nodata (like ESA's TCI)")
    out.add_argument("--quicklook", metavar="FILE.png|.jpg",
                     help="also write a small preview: valid pixels averaged, nodata transparent (PNG) or black")
    out.add_argument("--quicklook-size", type=_positive_int, default=1024, metavar="N",
                     help="longest side of the preview at most N pixels (default 1024)")
    out.add_argument("--resume", nargs="?", const=True, default=False, type=_resume_mode, metavar="auto",
                     help="finish a run that was killed: same arguments; only the windows it had not durably "
                          "written are computed (an error if inputs or parameters differ). --resume=auto (for "
                          "job scripts that are requeued): resume a partial run if there is one, else start "
                          "fresh; exit 0 at once if the output is already complete with the same inputs and "
                          "options")
    compose.add_argument("--window", type=_positive_int, metavar="N",
                         help="window edge in pixels (default: the multiple of the block size closest to 1024)")
    compose.add_argument("--staging-dir", metavar="DIR",
                         help="where misaligned sources are decoded once into raw copies; every rank must "
                              "see it. Default: /dev/shm when all ranks run on one node and it has room for "
                              "twice the copies (free space and available memory); otherwise a hidden "
                              ".OUTPUT.staging folder beside the output (across nodes: a shared file system)")

    compose.add_argument("--backend", choices=("writer", "hdf5"), default="writer",
                         help="writer (default): rank 0 alone writes the GeoTIFF from the tiles the workers "
                              "encode; hdf5: all workers write one parallel-HDF5 file collectively (OUTPUT with "
                              ".h5), then it is converted to the GeoTIFF in the same job")
    compose.add_argument("--keep-h5", action="store_true", help="hdf5 backend: keep the HDF5 file")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mpi-s2", description="MPI-parallel Sentinel-2 true-colour GeoTIFFs.")
    parser.add_argument("--version", action="version", version=f"mpi_s2 {__version__}")
    verbosity = _Parser(add_help=False)
    verbosity.add_argument("-v", "--verbose", action="store_true", help="log more")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="only errors, no progress line")
    output = _output_options()
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    compose = sub.add_parser(
        "compose", parents=[verbosity, output],
        help="compose an RGB GeoTIFF from Sentinel-2 products or band files",
        description="Compose a true-colour GeoTIFF from Sentinel-2 products (.SAFE folders or zips, L2A or "
                    "L1C) and/or band files B04 (red), B03 (green), B02 (blue). Several inputs make one mosaic.",
        epilog=COMPOSE_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _compose_arguments(compose)
    stretch = sub.add_parser(
        "stretch", parents=[verbosity, output],
        help="count the percentile stretch of a region without writing an image (for --stretch-from)",
        description="Count, over every valid pixel the same compose command would write, the percentiles of "
                    "--stretch percentile:LOW,HIGH (default 2,98), and write the limits to -o FILE.json. Jobs "
                    "that compose parts of the region with --stretch-from FILE.json then match without seams.",
    )
    _compose_arguments(stretch)
    stretch.set_defaults(stretch="percentile:2,98")

    convert = sub.add_parser(
        "convert", parents=[verbosity, output],
        help="convert an HDF5 file of compose --backend hdf5 (or an RGB(A) raster) to a GeoTIFF or COG",
        description="Convert a complete HDF5 file written by 'compose --backend hdf5 --keep-h5', or an 8-bit "
                    "RGB(A) raster GDAL reads (e.g. a campaign's VRT), to a GeoTIFF (or COG), in parallel under "
                    "mpirun: workers read and encode tiles, rank 0 writes.",
    )
    convert.add_argument("h5", metavar="RUN.h5|MOSAIC.vrt", help="the HDF5 file, or the raster")

    search = sub.add_parser(
        "search", parents=[verbosity],
        help="search a STAC API and save the items found, for compose --stac (e.g. on a login node)",
        description="Search a STAC API for the items of a collection within --bbox or --aoi, --dates and "
                    "--max-cloud-cover, following its pages, and save them as one ItemCollection. A job on "
                    "nodes without access to the catalogue then composes them with --stac FILE.json.",
        epilog=SEARCH_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    search.add_argument("url", metavar="URL", help="the STAC API, e.g. https://earth-search.aws.element84.com/v1")
    _search_arguments(search, url_option=False)
    search.add_argument("--dates", type=_date_range, metavar="FROM/TO", help="acquired from FROM to TO (inclusive)")
    search.add_argument("--max-cloud-cover", type=_percent, metavar="P", help="cloud cover at most P %%")

    synth = sub.add_parser(
        "synth", parents=[verbosity], usage="%(prog)s OUTDIR [--product [--zip]] [options]",
        help="mpi-s2 synth OUTDIR [--product]: write a synthetic Sentinel-2-like scene (B04, B03, B02) or "
             "L2A product into the directory OUTDIR",
        description="mpi-s2 synth OUTDIR [--product]\n\n"
                    "Write three georeferenced uint16 GeoTIFFs (UTM 32N, 10 m) that look like a Sentinel-2\n"
                    "tile into the directory OUTDIR, or with --product an L2A product (SAFE layout,\n"
                    "JPEG 2000) of the same scene.",
        epilog=SYNTH_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    synth.add_argument("outdir", metavar="OUTDIR",
                       help="directory (made if missing) to write B04.tif, B03.tif, B02.tif, or with "
                            "--product the product, into")
    synth.add_argument("--size", type=_positive_int, default=1024, help="width in pixels (default 1024)")
    synth.add_argument("--height", type=_positive_int, help="height in pixels (default: --size)")
    synth.add_argument("--block", type=_positive_int, default=512, help="tile size (default 512)")
    synth.add_argument("--compress", default="NONE", help="GeoTIFF compression (default NONE)")
    synth.add_argument("--series", type=_positive_int, metavar="DATES",
                       help="write a time series of DATES L2A products of one tile (every 5 days from 2023-06-01, "
                            "baselines 02.14 and 05.09 in turn, moving clouds, shadows and cirrus with their SCL "
                            "and cloud cover), for --composite median|medoid")
    product = synth.add_argument_group("SAFE product (instead of band files)")
    product.add_argument("--product", action="store_true",
                         help="write an L2A product in SAFE layout: JPEG 2000 bands at 10/20/60 m, SCL, metadata")
    product.add_argument("--zip", action="store_true", help="zip the product (implies --product)")
    product.add_argument("--baseline", default="05.09",
                         help="processing baseline (default 05.09: offset -1000; before 04.00: no offset)")
    product.add_argument("--tile", default="32TMS", help="MGRS tile name (default 32TMS)")
    product.add_argument("--epsg", type=int, default=32632, help="UTM CRS of the tile (default 32632)")
    product.add_argument("--origin", type=float, nargs=2, metavar=("X", "Y"), default=(399960.0, 5300040.0),
                         help="upper-left corner (default: tile 32TMS, 399960 5300040)")
    product.add_argument("--jp2-block", type=_positive_int, default=1024,
                         help="JPEG 2000 tile size (default 1024, as ESA's products)")
    product.add_argument("--orbit-edge", type=float, default=0.0, metavar="F",
                         help="make fraction F of the tile nodata beyond a slanted swath edge (default 0)")
    _campaign_parsers(sub, verbosity)
    parser.commands = dict(sub.choices)
    return parser


CAMPAIGN_EXAMPLE = """\
example (on a login node; each tile is one task of a Slurm job array):
  mpi-s2 campaign plan europe/ --aoi europe.geojson --grid mgrs --stac-search \\
      https://earth-search.aws.element84.com/v1 --collection sentinel-2-l2a --dates 2023-06-01/2023-08-31 \\
      --max-cloud-cover 60 --cloud-mask --composite median
  mpi-s2 campaign submit europe/ --max-running 50 --ranks-per-tile 17 --sbatch-options "-p compute -t 2:00:00"
  mpi-s2 campaign status europe/
  mpi-s2 campaign retry europe/ --failed --max-attempts 3
  mpi-s2 campaign assemble europe/ -o europe.vrt
"""
#: Options a campaign sets for every tile itself: not allowed among a plan's compose options.
CAMPAIGN_SETS = ("-o", "--output", "--stac", "--stac-search", "--collection", "--bbox", "--save-items", "--aoi",
                 "--crs", "--extent", "--report", "--resume", "--overwrite", "--progress-file", "--quicklook",
                 "--red", "--green", "--blue", "--scl", "--date")


def _campaign_parsers(sub, verbosity: argparse.ArgumentParser) -> None:
    campaign = sub.add_parser(
        "campaign", parents=[verbosity],
        help="country- and continent-scale production: many tiles as Slurm job arrays, with a status database",
        description="A campaign cuts an area into output tiles, composes each as one task of a Slurm job array, "
                    "keeps one status per tile (SQLite, or PostgreSQL with --db), retries what failed and "
                    "assembles one seamless result. See docs/campaigns.md.",
        epilog=CAMPAIGN_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = campaign.add_subparsers(dest="action", required=True, parser_class=_Parser)
    plan = actions.add_parser(  # no abbreviations: the compose options pass through ("--co" is not --collection)
        "plan", parents=[verbosity], allow_abbrev=False, usage="%(prog)s DIR --aoi FILE.geojson [--grid mgrs|SIZE_KM] "
                                           "(--stac ... | --stac-search URL ...) [compose options...]",
        help="cut the area into tiles, give each its items, count the global stretch, create the database",
        description="Plan a campaign into DIR. Options this command does not know are compose options, the same "
                    "for every tile (e.g. --cloud-mask --composite median --cog). The stretch defaults to "
                    "percentile:2,98, counted once over the whole area.")
    plan.add_argument("directory", metavar="DIR", help="the campaign directory (created)")
    plan.add_argument("--aoi", required=True, metavar="FILE.geojson", help="the area (degrees)")
    plan.add_argument("--grid", default="mgrs", metavar="mgrs|SIZE_KM",
                      help="mgrs (default): one output per Sentinel-2 MGRS tile, on its own UTM grid; SIZE_KM: "
                           "square tiles of that size in the first item's CRS, on its pixel lattice")
    plan.add_argument("--db", metavar="URL", help="a PostgreSQL URL (postgresql://user@host/db) for the status "
                                                  "database (default: SQLite in DIR)")
    plan.add_argument("--overwrite", action="store_true", help="replace an existing campaign in DIR")
    plan.add_argument("--dry-run", action="store_true",
                      help="only count the MGRS tiles over the area and project the core-hours (reads nothing else)")
    plan.add_argument("--dates-per-tile", type=_positive_int, default=18,
                      help="--dry-run: dates per tile of the projection (default 18: a summer at a 5-day revisit)")
    plan.add_argument("--ranks-per-tile", type=_positive_int, default=17, help="--dry-run: ranks per tile job")
    catalogue = plan.add_argument_group("catalogue")
    catalogue.add_argument("--stac", nargs="+", action="extend", default=[], metavar="FILE_OR_URL",
                           help="STAC items, item collections or catalogs (as compose --stac)")
    catalogue.add_argument("--stac-search", metavar="URL", help="search this STAC API within --aoi")
    catalogue.add_argument("--collection", metavar="C", help="the collection to search")
    catalogue.add_argument("--assets", metavar="red=KEY,green=KEY,blue=KEY[,scl=KEY]", help="as compose --assets")
    catalogue.add_argument("--dates", type=_date_range, metavar="FROM/TO", help="items acquired from FROM to TO")
    catalogue.add_argument("--max-cloud-cover", type=_percent, metavar="P", help="items' cloud cover at most P %%")

    def launch_options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--max-running", type=_positive_int, metavar="N",
                            help="at most N tiles at a time (the array's %%N throttle)")
        parser.add_argument("--ranks-per-tile", type=_positive_int, default=3, metavar="R",
                            help="MPI ranks (Slurm tasks) per tile (default 3)")
        parser.add_argument("--sbatch-options", default="", metavar="'OPTIONS'",
                            help="more sbatch options, one quoted string (e.g. '-p compute -t 1:00:00')")
        parser.add_argument("--local", action="store_true",
                            help="no Slurm: run the tiles one after another here under mpirun -n R")

    submit = actions.add_parser("submit", parents=[verbosity], help="submit the planned tiles as a Slurm job array")
    submit.add_argument("directory", metavar="DIR")
    launch_options(submit)
    status = actions.add_parser("status", parents=[verbosity],
                                help="counts per state, throughput, ETA, failures and the slowest tiles")
    status.add_argument("directory", metavar="DIR")
    status.add_argument("--json", action="store_true", help="print the same as JSON")
    retry = actions.add_parser("retry", parents=[verbosity], help="plan failed (or named) tiles again and submit")
    retry.add_argument("directory", metavar="DIR")
    retry.add_argument("--failed", action="store_true", help="the failed and cancelled tiles")
    retry.add_argument("--tiles", nargs="+", default=[], metavar="TILE", help="these tiles")
    retry.add_argument("--max-attempts", type=_positive_int, metavar="K",
                       help="leave tiles that made K attempts already")
    launch_options(retry)
    assemble = actions.add_parser("assemble", parents=[verbosity],
                                  help="one VRT (or GeoTIFF/COG) of the done tiles, and a STAC Collection of them")
    assemble.add_argument("directory", metavar="DIR")
    assemble.add_argument("-o", "--output", metavar="mosaic.vrt|mosaic.tif",
                          help="the mosaic: a VRT, or a GeoTIFF (COG with --cog) written from it")
    assemble.add_argument("--cog", action="store_true", help="write a Cloud-Optimized GeoTIFF")
    assemble.add_argument("--crs", metavar="CRS", help="the mosaic's CRS (default: the first done tile's)")
    assemble.add_argument("--overwrite", action="store_true", help="replace an existing mosaic")
    assemble.add_argument("--ranks", type=_positive_int, default=3, metavar="R",
                          help="a GeoTIFF or COG mosaic is written under mpirun -n R (default 3; MPI_S2_LAUNCHER, "
                               "e.g. 'srun', replaces mpirun)")
    sub.choices["campaign"].commands = dict(actions.choices)


def compose_config(args: argparse.Namespace):
    from mpi_s2.config import BandFiles
    from mpi_s2.inputs.cloudmask import parse_mask_classes
    from mpi_s2.pixels.radiometry import Stretch
    from mpi_s2.pixels.stretch import parse_stretch, read_limits

    counts = {len(args.red), len(args.green), len(args.blue)}
    if len(counts) != 1:
        raise InputError(f"--red, --green and --blue must be given the same number of times (got "
                         f"{len(args.red)}, {len(args.green)}, {len(args.blue)})")
    if args.scl and len(args.scl) != len(args.red):
        raise InputError(f"--scl must be given once per band set ({len(args.red)}), got {len(args.scl)}")
    catalogue = _catalogue(args)
    if not args.products and not args.red and catalogue is None:
        raise InputError("no input: give one or more products (.SAFE or .zip), --red/--green/--blue files, "
                         "--stac FILE_OR_URL or --stac-search URL")
    if args.date and len(args.date) != len(args.red):
        raise InputError(f"--date must be given once per band set ({len(args.red)}), got {len(args.date)}")
    scls = args.scl or [None] * len(args.red)
    dates: list[str | None] = [_date(d, "--date") for d in args.date] or [None] * len(args.red)
    band_sets = tuple(BandFiles(r, g, b, s, d)
                      for r, g, b, s, d in zip(args.red, args.green, args.blue, scls, dates, strict=True))
    # validates the stretch options once, before any MPI work
    parse_stretch(args.stretch, args.stretch_bands)
    if args.stretch_from is not None:
        read_limits(args.stretch_from)
    Stretch(offset=args.offset or 0.0, scale=args.scale or 10000.0, max_reflectance=args.max_reflectance,
            gamma=args.gamma)
    if args.scale is not None and args.scale <= 0:
        raise InputError(f"--scale must be > 0, got {args.scale}")
    return ComposeConfig(
        output=args.output, products=tuple(args.products), band_sets=band_sets, catalogue=catalogue,
        offset=args.offset,
        scale=args.scale, max_reflectance=args.max_reflectance, gamma=args.gamma, resolution=args.resolution,
        cloud_mask=args.cloud_mask or bool(args.scl), mask_classes=parse_mask_classes(args.mask_classes),
        crs=args.crs, resampling=args.resampling, composite=args.composite, order=args.order, dates=args.dates,
        max_cloud_cover=args.max_cloud_cover, stretch=args.stretch, stretch_bands=args.stretch_bands,
        stretch_from=args.stretch_from, stretch_only=args.command == "stretch", alpha=not args.no_alpha,
        window=args.window,
        schedule=args.schedule, staging_dir=args.staging_dir, cog=args.cog, backend=args.backend,
        keep_h5=args.keep_h5, quicklook=args.quicklook,
        quicklook_size=args.quicklook_size,
        creation_options=dict(args.co), overwrite=args.overwrite, resume=args.resume is True,
        resume_auto=args.resume == "auto", report=args.report,
        progress=not args.quiet, progress_file=args.progress_file, aoi=args.aoi, extent=args.extent,
    )


def _setup_logging(args: argparse.Namespace) -> None:
    """Log lines as ``mpi_s2: 2026-12-02T04:40:00Z message`` on stderr (the progress lines' look).

    The lines that end a run keep a fixed start, without a time, for scripts to grep: ``mpi_s2: error...``
    (:func:`mpi_s2.parallel.runtime.report_error`) and ``mpi_s2: stopped...``; the report has the end time.
    """
    from mpi_s2.parallel.progress import LogFormatter

    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogFormatter())
    logging.basicConfig(level=level, handlers=[handler])


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mpi-s2 ARGV`` and return its exit code.

    Under a launcher every rank parses the command line; a usage or input error is agreed on by all ranks
    (:func:`~mpi_s2.parallel.runtime.start_together`) before any of them exits, so rank 0's one line is printed
    and not lost to mpirun ending the job on another rank's early exit."""
    from mpi_s2.parallel.runtime import report_error, run_job, start_together

    failure: MpiS2Error | None = None
    try:
        args = build_parser().parse_args(argv)
        _setup_logging(args)
        if args.command == "synth":  # serial, never under a launcher
            try:
                return _synth(args)
            except MpiS2Error as exc:
                report_error(str(exc))
                return exc.exit_code
        if args.command == "search":  # serial: a login node's step before the job
            try:
                return _search(args)
            except MpiS2Error as exc:
                report_error(str(exc))
                return exc.exit_code
        if args.command == "campaign":  # serial: a login node's commands
            try:
                return _campaign(args)
            except MpiS2Error as exc:
                report_error(str(exc))
                return exc.exit_code
        if args.command in ("compose", "stretch"):
            config = compose_config(args)
            warm_up_planner(config)
    except MpiS2Error as exc:
        failure = exc
    code = start_together(failure)
    if code:
        return code

    if args.command == "convert":
        from mpi_s2.parallel.convert import convert

        return run_job(lambda comm: convert(args.h5, args.output, comm, cog=args.cog, overrides=dict(args.co),
                                            overwrite=args.overwrite, schedule=args.schedule,
                                            progress=not args.quiet, progress_file=args.progress_file,
                                            report=args.report))
    from mpi_s2.parallel.compose import compose

    return run_job(lambda comm: compose(config, comm))


def warm_up_planner(config: ComposeConfig) -> None:
    """On the rank that will plan (launcher rank 0), while the other ranks are still starting: prepare what its
    planning needs first, so the workers wait less for the plan. Only the STAC reader needs it (its first item
    read costs about 60 ms, measured on make bench's remote case)."""
    from mpi_s2.parallel.roles import PLANNER_RANK
    from mpi_s2.parallel.runtime import launcher_rank

    if config.catalogue is not None and launcher_rank() == PLANNER_RANK:
        from mpi_s2.inputs.stac import warm_up

        warm_up(search=config.catalogue.search_url is not None)


def _search(args: argparse.Namespace) -> int:
    from mpi_s2.config import Catalogue
    from mpi_s2.inputs.stac_search import save_items, search_items

    if args.save_items is None:
        raise InputError("search: give --save-items FILE.json (where to save the items found)")
    if args.bbox and args.aoi:
        raise InputError("give --bbox or --aoi, not both")
    catalogue = Catalogue(search_url=args.url, collection=args.collection, bbox=args.bbox, aoi=args.aoi)
    found = search_items(catalogue, args.dates, args.max_cloud_cover)
    save_items(found, args.save_items)
    logging.getLogger("mpi_s2").info("saved %d item%s to %s (compose them with --stac %s)", len(found),
                                     "" if len(found) == 1 else "s", args.save_items, args.save_items)
    return 0


def _synth(args: argparse.Namespace) -> int:
    from mpi_s2.tools.synth import ProductOptions, SynthOptions, synthesize, synthesize_product

    if args.series:
        from mpi_s2.tools.synth import SeriesOptions, synthesize_series

        series = synthesize_series(args.outdir, SeriesOptions(dates=args.series, size=args.size,
                                                              jp2_block=args.jp2_block, zip=args.zip))
        written = series.products
    elif args.product or args.zip:
        options = ProductOptions(args.size, args.height, args.tile, args.epsg, tuple(args.origin),
                                 args.baseline, jp2_block=args.jp2_block, zip=args.zip,
                                 orbit_edge=args.orbit_edge)
        written = [synthesize_product(args.outdir, options)]
    else:
        paths = synthesize(args.outdir, SynthOptions(args.size, args.height, args.block, args.compress))
        written = list(paths.values())
    logging.getLogger("mpi_s2").info("wrote %s", ", ".join(written))
    return 0



def _campaign(args: argparse.Namespace) -> int:
    import json

    from mpi_s2.campaign import assemble, commands, planner
    from mpi_s2.campaign.grid import parse_grid

    if args.action == "plan":
        grid = parse_grid(args.grid)
        if args.dry_run:
            projection = planner.dry_run(args.aoi, grid, args.dates_per_tile, args.ranks_per_tile)
            print(f"{args.aoi}: {projection['tiles']} MGRS tiles; at {projection['dates_per_tile']} dates per tile "
                  f"and {projection['ranks_per_tile']} ranks per tile job, about {projection['wall_s_per_tile']:g} s "
                  f"per tile, {projection['core_hours']:g} core-hours in all (scaling model, mpi_s2.campaign.planner)")
            return 0
        request = _plan_request(args, grid)
        planner.plan_campaign(request, launcher=shlex.split(os.environ.get("MPI_S2_LAUNCHER", "")))
        return 0
    if args.action in ("submit", "retry"):
        options = {"max_running": args.max_running, "ranks_per_tile": args.ranks_per_tile,
                   "sbatch_options": shlex.split(args.sbatch_options), "local": args.local,
                   "launcher": _local_launcher(args.ranks_per_tile) if args.local else None}
        if args.action == "submit":
            commands.submit(args.directory, **options)
        else:
            commands.retry(args.directory, failed=args.failed, tiles=args.tiles, max_attempts=args.max_attempts,
                           **options)
        return 0
    if args.action == "status":
        report = commands.status(args.directory)
        if args.json:
            print(json.dumps(report, indent=1))
        else:
            commands.print_status(report)
        return 0
    launcher = shlex.split(os.environ.get("MPI_S2_LAUNCHER", "")) or _local_launcher(args.ranks)
    result = assemble.assemble(args.directory, args.output, cog=args.cog, crs=args.crs, overwrite=args.overwrite,
                               launcher=launcher)
    logging.getLogger("mpi_s2").info("campaign assemble: %d tiles%s; STAC collection %s", result["tiles"],
                                     f" in {result['output']}" if result.get("output") else "", result["collection"])
    return 0


def _local_launcher(ranks: int) -> list[str]:
    launcher = ["mpirun", "-n", str(ranks), "--oversubscribe"]
    return launcher + (["--allow-run-as-root"] if os.geteuid() == 0 else [])


def _plan_request(args: argparse.Namespace, grid):
    """The plan's request; its compose options checked by compose's own parser first."""
    from mpi_s2.campaign.planner import PlanRequest
    from mpi_s2.config import Catalogue
    from mpi_s2.inputs.stac import parse_assets

    options = list(args.compose_options)
    for option in options:
        name = option.partition("=")[0]
        if name in CAMPAIGN_SETS:
            raise UsageError(f"campaign plan: {name} is set by the campaign for each tile; leave it out")
        if not option.startswith("-") and options.index(option) == 0:
            raise UsageError(f"campaign plan: unexpected argument {option!r} (the inputs come from --stac or "
                             "--stac-search)")
    if not args.stac and not args.stac_search:
        raise UsageError("campaign plan: give --stac FILE_OR_URL... or --stac-search URL --collection C")
    if args.stac_search and not args.collection:
        raise UsageError(f"--stac-search {args.stac_search}: give --collection (e.g. sentinel-2-l2a)")
    assets = parse_assets(args.assets) if args.assets else {}
    tile_options = options + (["--assets", args.assets] if args.assets else [])
    parsed = build_parser().parse_args(["compose", *tile_options, "--stac", "items.json", "-o", "tile.tif"])
    stretch = parsed.stretch if any(o.partition("=")[0] == "--stretch" for o in options) else "percentile:2,98"
    if stretch != parsed.stretch:
        tile_options += ["--stretch", stretch]
    compose_config(parsed)  # every check compose makes, before anything is read
    catalogue = Catalogue(sources=tuple(args.stac), search_url=args.stac_search, collection=args.collection,
                          aoi=args.aoi, assets=tuple(assets.items()))
    return PlanRequest(directory=args.directory, aoi=args.aoi, grid=grid, catalogue=catalogue,
                       compose_args=tuple(tile_options), stretch=stretch, stretch_from=parsed.stretch_from,
                       dates=args.dates, max_cloud_cover=args.max_cloud_cover, cloud_mask=parsed.cloud_mask,
                       db=args.db, overwrite=args.overwrite, resolution=parsed.resolution, assets=assets)


if __name__ == "__main__":
    sys.exit(main())
