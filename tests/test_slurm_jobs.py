"""Every job script in jobs/ submitted with sbatch to a real Slurm the tests start (tests/cluster/local-cluster.sh):
one node, then two emulated nodes (network namespaces), so that ranks really span hosts and talk TCP.

Needs root (slurmd, namespaces) and Debian's slurm-wlm, munge and iproute2, which `make test` installs. Without
them these tests fail (conftest.require), so that a missing install step cannot pass unseen; a developer may skip
them with MPI_S2_ALLOW_SKIPS=1.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from conftest import clean_env, read_array, require

REPO = Path(__file__).resolve().parents[1]
LOCAL_CLUSTER = REPO / "tests" / "cluster" / "local-cluster.sh"
COMMANDS = ("slurmctld", "slurmd", "sbatch", "munged", "ip", "nsenter", "unshare")
JOB_TIMEOUT = 300


def missing_requirement() -> tuple[str, str] | None:
    """What a local Slurm cluster lacks here, and how to get it; None when nothing."""
    if os.geteuid() != 0:
        return "root for a local Slurm cluster (slurmd, network namespaces)", "run the tests as root (make test)"
    missing = [c for c in COMMANDS if not shutil.which(c, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")]
    if missing:
        return ", ".join(missing), "apt-get install slurm-wlm munge iproute2 (make test does)"
    return None


@dataclass
class Cluster:
    nodes: int
    state: Path
    env: dict[str, str]

    @property
    def layout(self) -> list[str]:
        """sbatch options for the test jobs: 3 tasks on one node, or 2 on each of two nodes."""
        return ["-N", "1", "-n", "3"] if self.nodes == 1 else ["-N", "2", "--ntasks-per-node=2"]

    @property
    def tasks(self) -> int:
        return 3 if self.nodes == 1 else 4

    @property
    def hosts(self) -> list[str]:
        return [f"node{k}" for k in range(1, self.nodes + 1)]

    def run(self, *command: str, cwd: Path | str = REPO, timeout: float = JOB_TIMEOUT,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(LOCAL_CLUSTER), "run", *command], cwd=cwd, capture_output=True, text=True,
                              timeout=timeout, env={**self.env, **(env or {})})

    def sbatch(self, script: str, *args: str, cwd: Path, options: list[str] | None = None,
               env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, str, str]:
        """Submit ``jobs/SCRIPT ARGS`` with --wait; return the sbatch result, the job's log and its JobState."""
        log = cwd / f"{Path(script).stem}-%j.out"
        proc = self.run("sbatch", "--wait", "--parsable", "-o", str(log), *(options or self.layout),
                        str(REPO / "jobs" / script), *args, cwd=cwd, env=env)
        job_id = proc.stdout.strip().split(";")[0].splitlines()[0] if proc.stdout.strip() else ""
        assert job_id.isdigit(), f"sbatch printed no job id: {proc.stdout!r} {proc.stderr!r}"
        text = Path(str(log).replace("%j", job_id)).read_text()
        return proc, text, self.job_state(job_id)

    def job_state(self, job_id: str) -> str:
        """The job's final state from the jobcomp file (Slurm's record without a database)."""
        for line in (self.state / "jobcomp.txt").read_text().splitlines():
            if re.search(rf"\bJobId={job_id}\b", line):
                return re.search(r"\bJobState=(\S+)", line).group(1)
        raise AssertionError(f"job {job_id} not in {self.state / 'jobcomp.txt'}")


@pytest.fixture(scope="module", params=[1, 2], ids=["one-node", "two-nodes"])
def cluster(request, tmp_path_factory):
    missing = missing_requirement()
    if missing:
        require(False, *missing)
    nodes = request.param
    state = tmp_path_factory.mktemp(f"slurm-{nodes}")
    env = {**clean_env(), "MPI_S2_CLUSTER_DIR": str(state / "cluster")}
    up = subprocess.run([str(LOCAL_CLUSTER), "up", "--nodes", str(nodes)], capture_output=True, text=True,
                        timeout=120, env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield Cluster(nodes, state / "cluster", env)
    finally:
        down = subprocess.run([str(LOCAL_CLUSTER), "down"], capture_output=True, text=True, timeout=120, env=env)
        assert down.returncode == 0, down.stdout + down.stderr
        assert not (state / "cluster").exists()


def check_composite(output: Path, report_path: Path, scene, reference, valid, cluster: Cluster) -> None:
    rgba = read_array(output)
    assert (rgba[:3][:, valid] == reference[:, valid]).all() and (rgba[3] == np.where(valid, 255, 0)).all()
    ds, src = gdal.Open(str(output)), gdal.Open(scene["red"])
    assert ds.GetGeoTransform() == src.GetGeoTransform() and ds.GetSpatialRef().IsSame(src.GetSpatialRef())
    report = json.loads(report_path.read_text())
    assert report["mpi_ranks"] == cluster.tasks and len(report["ranks"]) == cluster.tasks
    assert report["hosts"] == cluster.hosts  # on two nodes: ranks on both hosts, in one communicator
    assert sorted(r["rank"] for r in report["ranks"]) == list(range(cluster.tasks))


def band_args(scene) -> list[str]:
    return ["--red", scene["red"], "--green", scene["green"], "--blue", scene["blue"]]


@pytest.mark.parametrize("script", ["compose.sbatch", "compose-mpirun.sbatch"])
def test_compose_job(cluster, script, scene, reference, valid, tmp_path):
    output, report = tmp_path / "rgb.tif", tmp_path / "run.json"
    proc, log, state = cluster.sbatch(script, *band_args(scene), "-o", str(output), "--report", str(report), "-q",
                                      "--window", "512", cwd=tmp_path)
    assert proc.returncode == 0 and state == "COMPLETED", log + proc.stderr
    assert f"{cluster.tasks} task(s) on {cluster.nodes} node(s)" in log
    check_composite(output, report, scene, reference, valid, cluster)


def test_failing_compose_job_ends_failed_with_the_error_in_its_log(cluster, scene, tmp_path):
    missing = tmp_path / "B04-missing.tif"
    proc, log, state = cluster.sbatch("compose.sbatch", "--red", str(missing), "--green", scene["green"],
                                      "--blue", scene["blue"], "-o", str(tmp_path / "rgb.tif"), cwd=tmp_path)
    assert proc.returncode != 0 and state == "FAILED"
    assert re.search(rf"mpi_s2: error.*{re.escape(str(missing))}", log), log
    assert [p.suffix for p in tmp_path.iterdir()] == [".out"]  # the job's log, no output, no debris


def test_scaling_jobs(cluster, tmp_path):
    """scaling-strong through make (SCHEDULER=slurm submits it), scaling-weak with sbatch directly."""
    study = tmp_path / "scaling"
    ranks = f"1,{cluster.tasks}"
    layout = " ".join(cluster.layout[:2] + (["--ntasks-per-node=2"] if cluster.nodes == 2 else []))
    made = cluster.run("make", "--no-print-directory", "scaling-strong", "SCHEDULER=slurm", f"SCALING_DIR={study}",
                       f"SCALING_RANKS={ranks}", "SCALING_SIZE=512", "SCALING_WINDOW=256", "SCALING_INPUT=gtiff",
                       f"SBATCH_OPTIONS={layout} -o {tmp_path}/strong-%j.out")
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    proc, log, state = cluster.sbatch("scaling-weak.sbatch", "--ranks", ranks, "--dir", str(study), "--size", "256",
                                      "--window", "256", "--input", "gtiff", cwd=tmp_path)
    assert proc.returncode == 0 and state == "COMPLETED", log
    for kind, windows in (("strong", [4, 4]), ("weak", [1, cluster.tasks])):
        with open(study / f"{kind}.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert [int(r["ranks"]) for r in rows] == [1, cluster.tasks]
        assert [int(r["windows"]) for r in rows] == windows
        assert rows[0]["nodes"] == "1" and rows[1]["nodes"] == str(cluster.nodes)
        assert all(float(r["wall_s"]) > 0 for r in rows) and rows[0]["speedup"] == "1.0"
        assert gdal.Open(str(study / f"{kind}.png")).RasterXSize == 1200


def test_scancel_stops_the_job_cleanly_and_keeps_a_resumable_run(cluster, scene, tmp_path):
    """scancel (or a time limit) sends SIGTERM to every task: rank 0 says so, the partial run is kept with a note."""
    output = tmp_path / "rgb.tif"
    log = tmp_path / "job.out"
    submitted = cluster.run("sbatch", "--parsable", "-o", str(log), *cluster.layout,
                            "--export=ALL,MPI_S2_TEST_FAULT=1:2:stall,MPI_S2_COMMIT_INTERVAL=0",
                            str(REPO / "jobs" / "compose.sbatch"), *band_args(scene), "-o", str(output), "-q",
                            "--window", "256", "--co", "BLOCKXSIZE=256", "--co", "BLOCKYSIZE=256", cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 120
    while "stalls after 2 windows" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, log.read_text() if log.exists() else "no job log"
        time.sleep(0.2)
    cancelled = time.monotonic()
    assert cluster.run("scancel", job_id).returncode == 0
    while True:
        try:
            state = cluster.job_state(job_id)
            break
        except AssertionError:
            assert time.monotonic() - cancelled < 30, "the job did not end within 30 s of scancel"
            time.sleep(0.2)
    assert state == "CANCELLED"
    while "the partial run is kept" not in log.read_text() and time.monotonic() - cancelled < 30:
        time.sleep(0.2)  # the step's output reaches the log a moment after the job's end is recorded
    text = log.read_text()
    assert "mpi_s2: stopped (rank 0): SIGTERM: the job was stopped from outside" in text, text
    assert text.count("the partial run is kept beside") == 1, text
    assert not output.exists() and (tmp_path / ".rgb.tif.partial.journal").exists()


# ------------------------------------------------------------------------------------- a stop, requeue, resume
TILES_256 = ["--window", "256", "--co", "BLOCKXSIZE=256", "--co", "BLOCKYSIZE=256"]  # 30 windows of the scene
WINDOWS = 30


def logged_windows(text: str) -> int:
    """The last count of placed windows rank 0's progress lines give in a job log (``windows 12/30 (40.0%)``, one
    line per 10 %: a lower bound of what the writer has placed)."""
    counts = [int(n) for n in re.findall(r"^mpi_s2: \S+ windows (\d+)/\d+ ", text, re.M)]
    return counts[-1] if counts else 0


def wait_for_log(log: Path, text: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while text not in (log.read_text() if log.exists() else ""):
        assert not re.search(r"^mpi_s2( job)?: error", log.read_text() if log.exists() else "", re.M), log.read_text()
        assert time.monotonic() < deadline, f"no '{text}' within {timeout} s: " + (log.read_text() if log.exists()
                                                                                 else "no job log")
        time.sleep(0.2)
    return log.read_text()


def wait_until_placed(log: Path, quiet_s: float = 3.0, timeout: float = 60) -> int:
    """The writer's count of placed windows in the job log once it has not moved for ``quiet_s`` (the stalled
    worker's windows are all that is left)."""
    deadline, last, since = time.monotonic() + timeout, -1, time.monotonic()
    while time.monotonic() < deadline:
        done = logged_windows(log.read_text())
        if done != last:
            last, since = done, time.monotonic()
        elif done > 0 and time.monotonic() - since >= quiet_s:
            return done
        time.sleep(0.2)
    raise AssertionError(f"no windows placed: {log.read_text()}")


def wait_for_state(cluster: Cluster, job_id: str, states: tuple[str, ...], timeout: float = 120) -> str:
    """The job's state once the jobcomp file records one of ``states`` for it (a requeued job has a record per
    attempt)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = [line for line in (cluster.state / "jobcomp.txt").read_text().splitlines()
                   if re.search(rf"\bJobId={job_id}\b", line)]
        found = [re.search(r"\bJobState=(\S+)", r).group(1) for r in records]
        if any(s in states for s in found):
            return ",".join(found)
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} never reached {states}")


def submit_stalled(cluster: Cluster, script: str, scene, tmp_path: Path, fault_env: str) -> tuple[str, Path, int]:
    """A compose job whose worker 1 stalls after 2 windows (default commit interval), with progress lines from
    the start; returns its job id, its log and the windows placed once the others' windows are all in."""
    log = tmp_path / "job.out"
    submitted = cluster.run("sbatch", "--parsable", "-o", str(log), *cluster.layout,
                            f"--export=ALL,MPI_S2_PROGRESS_DELAY_S=0,{fault_env}", str(REPO / "jobs" / script),
                            *compose_args(scene, tmp_path), cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    wait_for_log(log, "stalls after 2 windows")
    return job_id, log, wait_until_placed(log)


def compose_args(scene, tmp_path: Path) -> list[str]:
    return [*band_args(scene), "-o", str(tmp_path / "rgb.tif"), *TILES_256, "--report", str(tmp_path / "run.json")]


def test_time_limit_warning_requeues_the_job_and_it_resumes(cluster, scene, reference, valid, tmp_path):
    """What `#SBATCH --signal=B:TERM@120` sends before the time limit (SIGTERM to the batch shell alone) is sent
    with `scancel --batch --signal=TERM`: the script passes it on to srun, mpi_s2's writer journals what it has
    placed, the script requeues the job, and the next attempt (the same command, --resume=auto) reuses those
    windows and finishes with the reference's pixels."""
    job_id, log, placed = submit_stalled(cluster, "compose.sbatch", scene, tmp_path,
                                         "MPI_S2_TEST_FAULT=1:2:stall,MPI_S2_TEST_FAULT_ATTEMPT=0")
    assert cluster.run("scancel", "--batch", "--signal=TERM", job_id).returncode == 0
    text = wait_for_log(log, "requeued; the next attempt resumes", timeout=60)
    assert "mpi_s2: stopped (rank 0): SIGTERM" in text and text.count("the partial run is kept beside") == 1, text
    # the local Slurm requeues it (Restarts=1) but holds it back about 2 minutes (BeginTime: the old step's
    # credential must expire first; forcing an earlier start makes srun's launch fail). Rather than wait, the
    # test cancels the held attempt and submits the same command again, as a user would after a scancel.
    deadline = time.monotonic() + 30
    while not re.search(r"JobState=PENDING .*\n.*Restarts=1\b",
                        info := cluster.run("scontrol", "show", "job", job_id).stdout):
        assert time.monotonic() < deadline, "the job was not requeued: " + info
        time.sleep(0.5)
    assert cluster.run("scancel", job_id).returncode == 0
    proc, text, state = cluster.sbatch("compose.sbatch", *compose_args(scene, tmp_path), cwd=tmp_path)
    assert proc.returncode == 0 and state == "COMPLETED", text
    report = json.loads((tmp_path / "run.json").read_text())
    assert report["windows_reused"] >= placed > 0 and report["windows_computed"] == WINDOWS - report["windows_reused"]
    check_composite(tmp_path / "rgb.tif", tmp_path / "run.json", scene, reference, valid, cluster)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("cluster", [1], indirect=True, ids=["one-node"])  # about 4 minutes: one layout
def test_a_real_time_limit_requeues_the_job_and_slurm_runs_the_next_attempt(cluster, scene, reference, valid,
                                                                            tmp_path):
    """The whole path with nothing simulated: a job with `--time=3 --signal=B:TERM@60` stalls (worker 1, first
    attempt only); Slurm itself sends the warning (it may come up to 60 s early: at 60 s of run time at the
    earliest, long after the stall), the script stops mpi_s2 (the writer journals what it placed)
    and requeues the job; Slurm holds the requeued attempt back (about 2 minutes here) and then runs it, and
    that attempt (the same command, --resume=auto) reuses the windows and ends COMPLETED with the reference's
    pixels, in the same log."""
    log = tmp_path / "job.out"
    submitted = cluster.run("sbatch", "--parsable", "-o", str(log), *cluster.layout, "--time=3",
                            "--signal=B:TERM@60", "--export=ALL,MPI_S2_PROGRESS_DELAY_S=0,MPI_S2_TEST_FAULT=1:2:stall,"
                            "MPI_S2_TEST_FAULT_ATTEMPT=0", str(REPO / "jobs" / "compose.sbatch"),
                            *compose_args(scene, tmp_path), cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    wait_for_log(log, "stalls after 2 windows")
    placed = wait_until_placed(log)
    states = wait_for_state(cluster, job_id, ("COMPLETED",), timeout=480)  # warning, 2 min held, the attempt
    text = log.read_text()
    assert "SIGTERM received: passed on to the ranks" in text and "requeued; the next attempt resumes" in text, text
    assert "mpi_s2: stopped (rank 0): SIGTERM" in text and text.count("the partial run is kept beside") == 1, text
    assert states.split(",")[-1] == "COMPLETED" and len(states.split(",")) == 2, states  # two attempts, one job
    report = json.loads((tmp_path / "run.json").read_text())
    reused = report["windows_reused"]
    assert reused >= placed > 0 and report["windows_computed"] == WINDOWS - reused, (reused, placed, text)
    check_composite(tmp_path / "rgb.tif", tmp_path / "run.json", scene, reference, valid, cluster)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_scancel_then_resubmit_with_resume_auto_reuses_windows(cluster, scene, reference, valid, tmp_path):
    """scancel ends the job (CANCELLED, no requeue); the same submission again resumes (--resume=auto, which the
    job script adds), through mpirun this time; a third submission finds the output complete and ends at once."""
    job_id, log, placed = submit_stalled(cluster, "compose-mpirun.sbatch", scene, tmp_path,
                                         "MPI_S2_TEST_FAULT=1:2:stall")
    assert cluster.run("scancel", job_id).returncode == 0
    assert wait_for_state(cluster, job_id, ("CANCELLED",), timeout=30) == "CANCELLED"
    # Slurm records the job as cancelled before its processes are gone: the resubmitted job's planner waits
    # until the stopped writer has let go of its journal (mpi_s2.output.run_lock). Under mpirun the ranks' last
    # lines may not reach the log (mpirun itself is signalled): the journal says it
    deadline = time.monotonic() + 30
    while not (tmp_path / ".rgb.tif.partial.journal").exists():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    assert "requeued" not in log.read_text()
    args = compose_args(scene, tmp_path)
    proc, text, state = cluster.sbatch("compose-mpirun.sbatch", *args, cwd=tmp_path)
    assert proc.returncode == 0 and state == "COMPLETED", text
    report = json.loads((tmp_path / "run.json").read_text())
    reused = report["windows_reused"]
    assert reused >= placed > 0 and report["windows_computed"] == WINDOWS - reused, (reused, placed, log.read_text())
    check_composite(tmp_path / "rgb.tif", tmp_path / "run.json", scene, reference, valid, cluster)
    before = (tmp_path / "rgb.tif").stat().st_mtime_ns
    proc, text, state = cluster.sbatch("compose-mpirun.sbatch", *args, cwd=tmp_path)
    assert proc.returncode == 0 and state == "COMPLETED", text
    assert "is already complete, with the same inputs and options: nothing to do" in text, text
    assert (tmp_path / "rgb.tif").stat().st_mtime_ns == before


# ------------------------------------------------------------------------ srun's exit codes, measured exactly
TILES_256 = ["--window", "256", "--co", "BLOCKXSIZE=256", "--co", "BLOCKYSIZE=256"]
SRUN_ENDS_S = 15  # docs/failures-and-resume.md: a job ends within 15 s of the fault


@pytest.mark.parametrize("case, fault, code, cause", [
    ("done", "", 0, None),
    ("bad-input", "", 2, r"^mpi_s2: error: --max-reflectance must be a finite number > 0, got -1\.0$"),
    ("corrupt-block", "", 2, r"^mpi_s2: error \(rank 1\): .*B03\.tif.*column 768, row 0"),
    ("exception-worker", "1:3:fail", 1, r"^mpi_s2: error \(rank 1\): test fault: rank 1 fails after 3 windows"),
    ("exception-writer", "0:3:fail", 1, r"^mpi_s2: error \(rank 0\): test fault: rank 0 fails after 3 windows"),
    ("SIGKILL-worker", "1:3:kill", 137, r"srun: error: node\d: task 1: Killed"),
    ("SIGKILL-writer", "0:3:kill", 137, r"srun: error: node1: task 0: Killed"),
])
def test_srun_exit_codes(cluster, scene, tmp_path, case, fault, code, cause):
    """`srun -n N python -m mpi_s2 compose` as a user types it in an allocation: srun's own exit code for each way
    a run ends (the srun column of the table in docs/failures-and-resume.md), within 15 s, one error line, and
    nothing under the output's name."""
    from test_compose_processes import corrupt_tile

    inputs = dict(scene)
    if case == "corrupt-block":  # worker 1's window (static schedule), decoded by that worker: MPI_Abort(2)
        inputs["green"] = str(tmp_path / "B03.tif")
        shutil.copy(scene["green"], inputs["green"])
        corrupt_tile(inputs["green"], 3, 0)
    out = tmp_path / "rgb.tif"
    args = [*band_args(inputs), "-o", str(out), *TILES_256, "-q", "--schedule", "static"]
    if case == "bad-input":
        args.append("--max-reflectance=-1")
    start = time.monotonic()
    proc = cluster.run("srun", *cluster.layout, "--mpi=pmix", f"--export=ALL,MPI_S2_TEST_FAULT={fault}",
                       str(REPO / ".venv" / "bin" / "python"), "-m", "mpi_s2", "compose", *args, cwd=tmp_path)
    elapsed = time.monotonic() - start
    text = proc.stdout + proc.stderr
    assert proc.returncode == code, (proc.returncode, text)
    if code == 0:
        assert out.exists() and not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
        return
    assert elapsed < 5 + SRUN_ENDS_S, (elapsed, text)  # srun's start (about 1-2 s) and the fault's window
    assert re.search(cause, text, re.MULTILINE), text
    errors = [line for line in text.splitlines() if line.startswith("mpi_s2: error")]
    assert len(errors) == (0 if "kill" in fault else 1), text
    assert not out.exists()
