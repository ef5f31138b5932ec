"""``python -m mpi_s2.scaling run|plot|report``: the scaling studies behind ``make scaling-*``.

    run strong|weak --ranks 1,2,3,4 [--size N] [--repeat K] [--input jp2|gtiff] [--window N]
        [--backend writer|hdf5] [--launcher mpirun|srun] --dir DIR     -> DIR/KIND.csv and DIR/KIND.png
    plot DIR/KIND.csv [-o PNG]                                         -> the plot again (other assumptions)
    report DIR                                                         -> DIR/REPORT.md from DIR/*.csv
"""

from __future__ import annotations

import argparse
import os
import sys

from mpi_s2.errors import StudyError
from mpi_s2.scaling.markdown import report
from mpi_s2.scaling.model import Cluster
from mpi_s2.scaling.plot import plot
from mpi_s2.scaling.study import INPUTS, LAUNCHERS, STUDIES, Study, read_csv, run_study


def _ranks(text: str) -> list[int]:
    try:
        ranks = [int(part) for part in text.replace(" ", ",").split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of rank counts: {text!r}") from None
    if not ranks or min(ranks) < 1:
        raise argparse.ArgumentTypeError(f"rank counts must be >= 1: {text!r}")
    return ranks


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _cluster_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("projection assumptions")
    group.add_argument("--ranks-per-node", type=_positive, default=Cluster.ranks_per_node)
    group.add_argument("--link-gbs", type=float, default=Cluster.link_bytes_per_s / 1e9,
                       help="node link bandwidth, GB/s (default 1.25: 10 Gb/s)")
    group.add_argument("--fs-gbs", type=float, default=Cluster.fs_bytes_per_s / 1e9,
                       help="parallel file system aggregate bandwidth, GB/s (default 10)")


def _cluster(args: argparse.Namespace) -> Cluster:
    return Cluster(args.ranks_per_node, args.link_gbs * 1e9, args.fs_gbs * 1e9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpi_s2.scaling", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a strong or weak scaling study")
    run.add_argument("kind", choices=STUDIES)
    run.add_argument("--ranks", type=_ranks, required=True, help="comma-separated rank counts, e.g. 1,2,3,4")
    run.add_argument("--dir", required=True, help="where inputs, run reports, the CSV and the plot go")
    run.add_argument("--size", type=_positive, default=2048, help="input edge in pixels (weak: the width; the "
                     "height grows with the ranks)")
    run.add_argument("--repeat", type=_positive, default=1)
    run.add_argument("--input", choices=INPUTS, default="jp2", help="jp2: a synthetic L2A product (JPEG 2000); "
                     "gtiff: three uncompressed GeoTIFFs")
    run.add_argument("--window", type=_positive, default=512, help="window edge, also the input's block edge")
    run.add_argument("--backend", choices=("writer", "hdf5"), default="writer")
    run.add_argument("--launcher", choices=LAUNCHERS, default="mpirun")
    _cluster_options(run)
    again = sub.add_parser("plot", help="plot a study's CSV again")
    again.add_argument("csv")
    again.add_argument("-o", "--output", help="PNG path (default: the CSV's, .png)")
    _cluster_options(again)
    rep = sub.add_parser("report", help="the studies' CSV files in DIR as DIR/REPORT.md")
    rep.add_argument("dir")
    _cluster_options(rep)
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            study = Study(args.kind, args.ranks, args.dir, size=args.size, repeat=args.repeat, input=args.input,
                          window=args.window, backend=args.backend, launcher=args.launcher)
            rows = run_study(study, log=lambda line: print(line, flush=True))
            png = os.path.join(args.dir, f"{args.kind}.png")
            plot([{k: str(v) for k, v in row.items()} for row in rows], png, _cluster(args))
            print(f"wrote {os.path.join(args.dir, args.kind + '.csv')} and {png}")
        elif args.command == "plot":
            png = args.output or os.path.splitext(args.csv)[0] + ".png"
            plot(read_csv(args.csv), png, _cluster(args))
            print(f"wrote {png}")
        else:
            paths = [os.path.join(args.dir, f"{kind}.csv") for kind in STUDIES]
            sections = [read_csv(p) for p in paths if os.path.exists(p)]
            if not sections:
                raise StudyError(f"{args.dir}: no strong.csv or weak.csv (run make scaling-strong or scaling-weak)")
            text = report(sections, _cluster(args))
            with open(os.path.join(args.dir, "REPORT.md"), "w", encoding="utf-8") as fh:
                fh.write(text)
            print(text)
    except (StudyError, ValueError, OSError) as exc:
        print(f"mpi_s2.scaling: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
