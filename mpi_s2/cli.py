"""The ``mpi-s2`` command line: parses and validates options, builds a config, calls the library.

MPI is imported only by ``compose``, so ``synth`` and ``--help`` work without a launcher.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from . import __version__
from .errors import MpiS2Error

COMPOSE_EXAMPLE = """\
example:
  mpi-s2 synth scene --size 2048
  mpirun -n 4 .venv/bin/python -m mpi_s2 compose \\
      --red scene/B04.tif --green scene/B03.tif --blue scene/B02.tif -o rgb.tif --report run.json

Rank 0 plans and then writes the GeoTIFF; every other rank reads and transforms windows.
Per band: out = floor(255 * clip(((DN + offset) / scale) / max_reflectance, 0, 1) ** (1/gamma) + 0.5).
Pixels where any band is 0 (nodata) are 0 in all bands and transparent in the alpha band.
"""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are printed by launcher rank 0 only (not once per rank)."""

    def error(self, message: str):  # type: ignore[override]
        from .mpi_runtime import launcher_rank

        if launcher_rank() == 0:
            self.print_usage(sys.stderr)
            sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mpi-s2", description="MPI-parallel Sentinel-2 true-colour GeoTIFFs.")
    parser.add_argument("--version", action="version", version=f"mpi_s2 {__version__}")
    verbosity = argparse.ArgumentParser(add_help=False)
    verbosity.add_argument("-v", "--verbose", action="store_true", help="log more")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="only errors, no progress line")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    compose = sub.add_parser(
        "compose", parents=[verbosity], help="compose an RGB GeoTIFF from red, green and blue bands",
        description="Compose a true-colour GeoTIFF from Sentinel-2 B04 (red), B03 (green), B02 (blue).",
        epilog=COMPOSE_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bands = compose.add_argument_group("inputs")
    bands.add_argument("--red", required=True, metavar="B04", help="red band file (uint16)")
    bands.add_argument("--green", required=True, metavar="B03", help="green band file (uint16)")
    bands.add_argument("--blue", required=True, metavar="B02", help="blue band file (uint16)")
    compose.add_argument("-o", "--output", required=True, help="output GeoTIFF")
    radio = compose.add_argument_group("radiometry")
    radio.add_argument("--max-reflectance", type=float, default=1.0,
                       help="reflectance shown as full brightness (default 1.0, i.e. DN 10000)")
    radio.add_argument("--gamma", type=float, default=2.2, help="display gamma (default 2.2)")
    radio.add_argument("--offset", type=float, default=0.0,
                       help="DN offset added before scaling (default 0; -1000 for baseline >= 04.00)")
    radio.add_argument("--scale", type=float, default=10000.0,
                       help="quantification value: reflectance = (DN + offset) / scale (default 10000)")
    out = compose.add_argument_group("output")
    out.add_argument("--no-alpha", action="store_true",
                     help="write 3 bands; valid pixels are >= 1 so that 0 means nodata (like ESA's TCI)")
    out.add_argument("--co", action="append", default=[], metavar="KEY=VALUE",
                     help="GDAL GeoTIFF creation option (repeatable), e.g. --co COMPRESS=DEFLATE")
    out.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    out.add_argument("--report", metavar="JSON", help="write per-rank timings and throughput here")
    compose.add_argument("--window", type=_positive_int, metavar="N",
                         help="window edge in pixels (default: the multiple of the block size closest to 1024)")

    synth = sub.add_parser(
        "synth", parents=[verbosity], help="write a synthetic Sentinel-2-like scene (B04, B03, B02)",
        description="Write three georeferenced uint16 GeoTIFFs (UTM 32N, 10 m) that look like a Sentinel-2 tile.",
    )
    synth.add_argument("outdir", help="directory to write B04.tif, B03.tif, B02.tif into")
    synth.add_argument("--size", type=_positive_int, default=1024, help="width in pixels (default 1024)")
    synth.add_argument("--height", type=_positive_int, help="height in pixels (default: --size)")
    synth.add_argument("--block", type=_positive_int, default=512, help="tile size (default 512)")
    synth.add_argument("--compress", default="NONE", help="GeoTIFF compression (default NONE)")
    return parser


def compose_config(args: argparse.Namespace):
    from .config import ComposeConfig
    from .profiles import parse_creation_option
    from .radiometry import Stretch

    stretch = Stretch(offset=args.offset, scale=args.scale, max_reflectance=args.max_reflectance,
                      gamma=args.gamma)
    options = dict(parse_creation_option(text) for text in args.co)
    return ComposeConfig(
        red=args.red, green=args.green, blue=args.blue, output=args.output, stretch=stretch,
        alpha=not args.no_alpha, window=args.window, creation_options=options,
        overwrite=args.overwrite, report=args.report, progress=not args.quiet,
    )


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="mpi_s2: %(message)s", stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    from .mpi_runtime import launcher_rank, report_error

    args = build_parser().parse_args(argv)
    _setup_logging(args)
    try:
        if args.command == "synth":
            from .synth import SynthOptions, synthesize

            paths = synthesize(args.outdir, SynthOptions(args.size, args.height, args.block, args.compress))
            logging.getLogger("mpi_s2").info("wrote %s", ", ".join(paths.values()))
            return 0
        config = compose_config(args)
    except MpiS2Error as exc:
        if launcher_rank() == 0:
            report_error(str(exc))
        return exc.exit_code

    from .mpi_runtime import run_job
    from .pipeline import compose

    return run_job(lambda comm: compose(config, comm))


if __name__ == "__main__":
    sys.exit(main())
