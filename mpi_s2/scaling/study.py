"""Strong and weak scaling studies: run ``mpi-s2 compose`` at several rank counts, one CSV row per rank count.

* strong: one input of ``size x size`` pixels, the same for every rank count;
* weak: ``size`` wide and ``size * ranks`` high, so that the pixels per rank stay the same.

Each run is launched as a user launches it (``mpirun -n N`` or, inside a Slurm allocation, ``srun -n N``), timed
from launch to exit, and writes its ``--report``; the CSV row holds the median wall time over the repetitions and
the per-phase seconds of that median run's report. Each rank decodes with one GDAL thread (``GDAL_NUM_THREADS``
overrides it), so that n ranks use n cores. Speed-up and efficiency are relative to the one-rank row
(strong: ``T1 / Tn`` and ``T1 / (n Tn)``; weak: the scaled speed-up ``n T1 / Tn`` and ``T1 / Tn``).
"""

from __future__ import annotations

import csv
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from mpi_s2.errors import InputError, StudyError
from mpi_s2.scaling.model import add_ratios

STUDIES = ("strong", "weak")
INPUTS = ("jp2", "gtiff")
LAUNCHERS = ("mpirun", "srun")

COLUMNS = ("study", "backend", "input", "ranks", "workers", "nodes", "cores_per_node", "width", "height",
           "windows", "repeats", "wall_s", "report_wall_s", "read_s", "compute_s", "encode_s", "worker_wait_s",
           "writer_write_s", "writer_wait_s", "hdf5_write_phase_s", "convert_s", "output_bytes", "max_rss_mb",
           "n_star", "speedup", "efficiency")


@dataclass
class Study:
    kind: str
    ranks: list[int]
    directory: str
    size: int = 2048
    repeat: int = 1
    input: str = "jp2"
    window: int = 512
    backend: str = "writer"
    launcher: str = "mpirun"
    extra: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in STUDIES:
            raise InputError(f"study must be one of {STUDIES}, got {self.kind!r}")
        if self.input not in INPUTS:
            raise InputError(f"input must be one of {INPUTS}, got {self.input!r}")
        if self.launcher not in LAUNCHERS:
            raise InputError(f"launcher must be one of {LAUNCHERS}, got {self.launcher!r}")
        if not self.ranks or min(self.ranks) < 1:
            raise InputError(f"rank counts must be >= 1, got {self.ranks}")
        if self.repeat < 1 or self.size < 1 or self.window < 1:
            raise InputError("repeat, size and window must be >= 1")
        self.ranks = sorted(set(self.ranks))

    def shape(self, ranks: int) -> tuple[int, int]:
        """(width, height) of the input for a run on ``ranks`` ranks."""
        return (self.size, self.size * ranks) if self.kind == "weak" else (self.size, self.size)


# --- inputs -------------------------------------------------------------------------------------------------------

def prepare_input(directory: str, kind: str, width: int, height: int, block: int) -> list[str]:
    """Synthesize (once; reused by later studies) the input of this size; return its ``compose`` arguments."""
    from mpi_s2.tools.synth import BAND_FILES, ProductOptions, SynthOptions, synthesize, synthesize_product

    target = os.path.join(directory, f"{kind}-{width}x{height}-b{block}")
    stamp = os.path.join(target, "complete")
    if not os.path.exists(stamp):
        shutil.rmtree(target, ignore_errors=True)
        os.makedirs(target)
        if kind == "jp2":
            synthesize_product(target, ProductOptions(size=width, height=height, jp2_block=block))
        else:
            synthesize(target, SynthOptions(size=width, height=height, block=block))
        open(stamp, "w").close()
    if kind == "jp2":
        return [glob.glob(os.path.join(target, "*.SAFE"))[0]]
    return [arg for band in ("red", "green", "blue")
            for arg in (f"--{band}", os.path.join(target, BAND_FILES[band]))]


# --- one run ------------------------------------------------------------------------------------------------------

def launch_command(launcher: str, ranks: int) -> list[str]:
    """The launcher's command line for ``ranks`` ranks (srun: inside an allocation, with PMIx)."""
    if launcher == "srun":
        return ["srun", f"--mpi={os.environ.get('MPI_S2_SRUN_MPI', 'pmix')}", "-n", str(ranks)]
    command = [shutil.which("mpirun") or "mpirun", "--oversubscribe", "-n", str(ranks)]
    if os.geteuid() == 0:
        command.insert(1, "--allow-run-as-root")
    return command


def run_once(command: list[str], env: dict[str, str] | None = None) -> float:
    """Run ``command``; return its wall seconds from launch to exit, or raise :class:`StudyError`."""
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise StudyError(f"{' '.join(command)} failed with exit code {proc.returncode}:\n{proc.stderr.strip()}")
    return wall


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def row_from_report(report: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """The per-phase columns of one run: mean seconds per worker, the writer's seconds, sizes, N*."""
    ranks = report["ranks"]
    working = [r for r in ranks if "worker" in r["role"]]
    writer = next(r for r in ranks if "writer" in r["role"])
    hdf5 = report.get("hdf5") or {}
    convert_writer = next((r for r in hdf5.get("convert_ranks", []) if r["rank"] == writer["rank"]), None)
    write_s = writer["seconds"]["write"] + (convert_writer["seconds"]["write"] if convert_writer else 0.0)
    stage = report.get("output_stage") or {}
    return {
        "ranks": report["mpi_ranks"], "workers": len(working), "nodes": len(report["hosts"]),
        "width": report["size"][0], "height": report["size"][1], "windows": report["windows"],
        "wall_s": round(wall_s, 3), "report_wall_s": report["wall_s"],
        "read_s": round(_mean([r["seconds"]["read"] for r in working]), 4),
        "compute_s": round(_mean([r["seconds"]["compute"] for r in working]), 4),
        "encode_s": round(_mean([r["seconds"]["encode"] for r in working]), 4),
        "worker_wait_s": round(_mean([r["seconds"]["wait"] for r in working]), 4) if len(ranks) > 1 else 0.0,
        "writer_write_s": round(write_s, 4),
        "writer_wait_s": round(writer["seconds"]["wait"], 4) if len(ranks) > 1 else 0.0,
        "hdf5_write_phase_s": hdf5.get("write_phase_s", ""), "convert_s": hdf5.get("convert_s", ""),
        "output_bytes": os.path.getsize(report["output"]) if os.path.exists(report["output"]) else "",
        "max_rss_mb": max(r["peak_rss_mb"] for r in ranks),
        "n_star": stage.get("n_star") if stage.get("n_star") is not None else "",
    }


def run_study(study: Study, log=print) -> list[dict[str, Any]]:
    """Run every rank count ``study.repeat`` times; write and return the rows (also ``DIR/KIND.csv``)."""
    os.makedirs(study.directory, exist_ok=True)
    inputs_dir = os.path.join(study.directory, "inputs")
    runs_dir = os.path.join(study.directory, "runs", study.kind)
    os.makedirs(runs_dir, exist_ok=True)
    # one decoder thread per rank (unless the user says otherwise), so that n ranks use n cores: a one-rank
    # run would otherwise decode with every core of the node and the speed-up would not measure ranks
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("GDAL_NUM_THREADS", "1")
    rows = []
    for n in study.ranks:
        width, height = study.shape(n)
        log(f"scaling {study.kind}: {n} rank(s), {width} x {height} {study.input} input, {study.backend} "
            f"backend, {study.repeat} run(s)")
        args = prepare_input(inputs_dir, study.input, width, height, study.window)
        runs = []
        for k in range(study.repeat):
            report_path = os.path.join(runs_dir, f"n{n}-{k}.json")
            output = os.path.join(runs_dir, f"n{n}.tif")
            command = [*launch_command(study.launcher, n), sys.executable, "-m", "mpi_s2", "compose", *args,
                       "-o", output, "--overwrite", "-q", "--window", str(study.window), "--backend",
                       study.backend, "--report", report_path, *study.extra]
            wall = run_once(command, env)
            with open(report_path, encoding="utf-8") as fh:
                report = json.load(fh)
            if report["mpi_ranks"] != n:
                raise StudyError(f"{' '.join(command)}: the run saw {report['mpi_ranks']} rank(s), not {n}")
            runs.append((wall, report))
            log(f"  run {k + 1}: {wall:.2f} s on {len(report['hosts'])} node(s)")
        wall, report = sorted(runs, key=lambda run: run[0])[len(runs) // 2]
        row = {"study": study.kind, "backend": study.backend, "input": study.input, "repeats": study.repeat,
               "cores_per_node": os.cpu_count() or 1, **row_from_report(report, statistics.median(w for w, _ in runs))}
        row["wall_s"] = round(statistics.median(w for w, _ in runs), 3)
        rows.append(row)
    add_ratios(study.kind, rows)
    write_csv(os.path.join(study.directory, f"{study.kind}.csv"), rows)
    return rows


# --- CSV and calibration ------------------------------------------------------------------------------------------

def write_csv(path: str, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row.get(key, "") for key in COLUMNS})


def read_csv(path: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    missing = [c for c in ("ranks", "wall_s", "windows") if rows and c not in rows[0]]
    if not rows or missing:
        raise StudyError(f"{path}: not a scaling CSV of mpi_s2 (no rows, or no {', '.join(missing)} column)")
    return rows


