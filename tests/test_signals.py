"""Signals and faults end a job within seconds, with one line naming the rank and the cause, and leave the output
path empty (or its previous file) and nothing beside it, except a partial run that ``--resume`` continues (and a
note that says so, printed once).

A job is caught in the middle with the test hook ``MPI_S2_TEST_FAULT=RANK:K:stall`` (rank RANK says so on stderr
after K windows and sleeps), then signalled as Slurm or a user would.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from conftest import (
    BACKGROUND_JOBS,
    MPIRUN,
    PYTHON,
    _finish_mpirun,
    assert_exit,
    clean_env,
    compose_args,
    error_lines,
    run_mpi_s2,
    run_mpi_s2_to_death,
)

LIMIT_S = 15  # the bound from the signal (or the fault) to the job's end
TILES_256 = ["--window", "256", "--co", "BLOCKXSIZE=256", "--co", "BLOCKYSIZE=256"]  # whole tiles: resumable
NOTE = re.compile(r"^mpi_s2: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ the partial run is kept beside .*: rerun with --resume "
                  r"to finish it", re.M)


class Job:
    """A compose job in the background whose stderr is read as it comes."""

    def __init__(self, args: list[str], ranks: int | None, env: dict[str, str]):
        launcher = [*MPIRUN, "-n", str(ranks)] if ranks else []
        self.launched = bool(launcher)
        self.proc = subprocess.Popen([*launcher, PYTHON, "-m", "mpi_s2", *args], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env={**clean_env(), **env})
        BACKGROUND_JOBS.append(self.proc)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None, f"the job ended before '{text}':\n{self.stderr}"
            assert time.monotonic() < deadline, f"no '{text}' within {timeout} s:\n{self.stderr}"
            time.sleep(0.05)

    def finish(self, timeout: float = LIMIT_S) -> tuple[int | None, float]:
        """Wait for the end; return (exit code, seconds from now to the end of the job). Under mpirun the one
        known finalize hang (conftest._finish_mpirun) is detected and named; the exit code is then None and the
        seconds count until the last rank ended. Any other job still running well past ``timeout`` fails."""
        start = time.monotonic()

        def on_timeout(limit: float) -> None:
            pytest.fail(f"the job did not end within {limit} s:\n{self.stderr}")

        if self.launched:
            result = _finish_mpirun(self.proc, timeout + 30, 5, on_timeout)
            code, end = result.returncode, result.ended_at
        else:
            try:
                code = self.proc.wait(timeout + 30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                on_timeout(timeout + 30)
            end = time.monotonic()
        self.proc.wait()
        self._reader.join(5)
        return code, end - start


def stall(rank: int, after: int = 2) -> dict[str, str]:
    # the journal (and the HDF5 status) is committed after every window, not every 30 s, so that a run stopped
    # after K windows has something to resume
    return {"MPI_S2_TEST_FAULT": f"{rank}:{after}:stall", "MPI_S2_COMMIT_INTERVAL": "0"}


def beside(out: Path) -> list[str]:
    """Every name in the output's directory but the output: the whole listing, not a pattern."""
    return sorted(p.name for p in out.parent.iterdir() if p.name != out.name)


KEPT = [".rgb.tif.partial", ".rgb.tif.partial.journal", ".rgb.tif.partial.kept"]  # a kept writer-backend run

# Exit codes, measured (docs/failures-and-resume.md lists them): a rank ends with 128 + N after signal N; mpirun
# returns 128 + N for a rank killed by signal N, the code a rank passed to MPI_Abort, and, when it is itself
# signalled, the code below.
MPIRUN_SIGNALLED = {signal.SIGTERM: 1, signal.SIGINT: 1}
KILLED = 128 + signal.SIGKILL
FAILED = 1  # MpiS2Error on a rank: MPI_Abort(1)


def same_image(path: Path, reference: Path) -> None:
    """Pixels, georeferencing, GDAL metadata, colour interpretation and nodata equal ``reference``'s."""
    a, b = gdal.Open(str(path)), gdal.Open(str(reference))
    assert np.array_equal(a.ReadAsArray(), b.ReadAsArray())
    assert (a.RasterXSize, a.RasterYSize, a.RasterCount) == (b.RasterXSize, b.RasterYSize, b.RasterCount)
    assert a.GetGeoTransform() == b.GetGeoTransform()
    assert a.GetProjection() == b.GetProjection() and a.GetSpatialRef().IsSame(b.GetSpatialRef())
    assert a.GetMetadata() == b.GetMetadata()
    bands = [(a.GetRasterBand(i), b.GetRasterBand(i)) for i in range(1, a.RasterCount + 1)]
    assert [x.GetColorInterpretation() for x, _ in bands] == [y.GetColorInterpretation() for _, y in bands]
    assert [x.GetNoDataValue() for x, _ in bands] == [y.GetNoDataValue() for _, y in bands]
    assert [x.GetMetadata() for x, _ in bands] == [y.GetMetadata() for _, y in bands]


@pytest.fixture(scope="module")
def baseline(scene, tmp_path_factory) -> Path:
    """An uninterrupted run of the same arguments."""
    out = tmp_path_factory.mktemp("signals-baseline") / "rgb.tif"
    result = run_mpi_s2(compose_args(scene, out, *TILES_256), ranks=2)
    assert result.returncode == 0, result.stderr
    return out


def assert_stopped_line(stderr: str, signals: tuple[str, ...] = ("SIGTERM",)) -> None:
    stopped = [line for line in stderr.splitlines() if line.startswith("mpi_s2: stopped")]
    assert len(stopped) == 1, stderr
    assert re.match(rf"mpi_s2: stopped \(rank 0\): ({'|'.join(signals)}): the job was stopped from outside",
                    stopped[0]), stderr
    assert not error_lines(stderr) and "Traceback" not in stderr, stderr


def assert_code(code: int | None, expected: int, stderr: str) -> None:
    """The exact exit code; None only when the harness named mpirun's finalize hang (conftest)."""
    assert code == expected or code is None, (code, expected, stderr)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_to_mpirun_keeps_a_resumable_run_and_resume_finishes_it(scene, baseline, tmp_path, signum):
    out = tmp_path / "rgb.tif"
    args = compose_args(scene, out, *TILES_256)
    job = Job(args, 3, stall(1))
    job.wait_for("stalls after 2 windows")
    job.proc.send_signal(signum)
    code, elapsed = job.finish()
    assert elapsed < LIMIT_S, (code, elapsed, job.stderr)
    assert_code(code, MPIRUN_SIGNALLED[signum], job.stderr)
    assert_stopped_line(job.stderr, ("SIGTERM", "SIGINT"))  # mpirun passes SIGTERM on to the ranks
    assert len(NOTE.findall(job.stderr)) == 1, job.stderr
    assert not out.exists()
    assert beside(out) == KEPT
    resumed = run_mpi_s2(args + ["--resume", "--report", str(tmp_path / "r.json")], ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    same_image(out, baseline)
    assert beside(out) == ["r.json"]


def test_ctrl_c_without_launcher_then_a_new_run_cleans_up(scene, baseline, tmp_path):
    out = tmp_path / "rgb.tif"
    args = compose_args(scene, out, *TILES_256)
    job = Job(args, None, stall(0, 3))
    job.wait_for("stalls after 3 windows")
    job.proc.send_signal(signal.SIGINT)
    code, elapsed = job.finish()
    assert code == 128 + signal.SIGINT and elapsed < LIMIT_S, (code, elapsed, job.stderr)
    assert_stopped_line(job.stderr, ("SIGINT",))
    assert len(NOTE.findall(job.stderr)) == 1 and not out.exists(), job.stderr
    assert beside(out) == KEPT
    again = run_mpi_s2(args, ranks=None)  # without --resume: starts over and removes the partial run
    assert again.returncode == 0, again.stderr
    same_image(out, baseline)
    assert beside(out) == []


def test_sigterm_without_launcher_then_resume_finishes_it(scene, baseline, tmp_path):
    out = tmp_path / "rgb.tif"
    args = compose_args(scene, out, *TILES_256)
    job = Job(args, None, stall(0, 3))
    job.wait_for("stalls after 3 windows")
    job.proc.send_signal(signal.SIGTERM)
    code, elapsed = job.finish()
    assert code == 128 + signal.SIGTERM and elapsed < LIMIT_S, (code, elapsed, job.stderr)
    assert_stopped_line(job.stderr, ("SIGTERM",))
    assert len(NOTE.findall(job.stderr)) == 1 and not out.exists(), job.stderr
    assert beside(out) == KEPT
    resumed = run_mpi_s2(args + ["--resume"], ranks=None)
    assert resumed.returncode == 0, resumed.stderr
    same_image(out, baseline)
    assert beside(out) == []


def test_stopped_run_that_cannot_resume_leaves_the_previous_file_and_nothing_else(scene, tmp_path):
    out = tmp_path / "rgb.tif"
    out.write_bytes(b"the previous complete file")
    # JPEG tiles are encoded by GDAL's writer on rank 0: no journal, nothing to resume
    job = Job(compose_args(scene, out, "--window", "256", "--overwrite", "--co", "COMPRESS=JPEG", "--no-alpha"), 3,
              stall(1))
    job.wait_for("stalls after 2 windows")
    job.proc.send_signal(signal.SIGTERM)
    code, elapsed = job.finish()
    assert elapsed < LIMIT_S, (code, elapsed, job.stderr)
    assert_code(code, MPIRUN_SIGNALLED[signal.SIGTERM], job.stderr)
    assert_stopped_line(job.stderr)
    assert not NOTE.search(job.stderr)
    assert out.read_bytes() == b"the previous complete file" and beside(out) == []


def test_sigterm_to_the_hdf5_backend_keeps_its_file_for_resume(scene, baseline, tmp_path):
    out = tmp_path / "rgb.tif"
    args = compose_args(scene, out, *TILES_256, "--backend", "hdf5")
    job = Job(args, 3, stall(2, 1))
    job.wait_for("stalls after 1 windows")
    job.proc.send_signal(signal.SIGTERM)
    code, elapsed = job.finish()
    assert elapsed < LIMIT_S, (code, elapsed, job.stderr)
    assert_code(code, MPIRUN_SIGNALLED[signal.SIGTERM], job.stderr)
    assert_stopped_line(job.stderr)
    assert len(NOTE.findall(job.stderr)) == 1 and "rgb.h5" in job.stderr
    assert not out.exists() and beside(out) == [".rgb.tif.partial.kept", "rgb.h5"]
    resumed = run_mpi_s2(args + ["--resume"], ranks=3)
    assert resumed.returncode == 0, resumed.stderr
    same_image(out, baseline)
    assert beside(out) == []


@pytest.mark.parametrize("fault, cause, code", [
    ("1:3:kill", r"process rank 1 with PID \d+ on node \S+ exited on signal 9 \(Killed\)", KILLED),
    ("0:3:kill", r"process rank 0 with PID \d+ on node \S+ exited on signal 9 \(Killed\)", KILLED),
    ("1:3:fail", r"^mpi_s2: error \(rank 1\): test fault: rank 1 fails after 3 windows", FAILED),
    ("0:3:fail", r"^mpi_s2: error \(rank 0\): test fault: rank 0 fails after 3 windows", FAILED),
], ids=["SIGKILL-worker", "SIGKILL-writer", "exception-worker", "exception-writer"])
def test_a_rank_that_dies_or_fails_ends_the_job_with_one_line(scene, tmp_path, fault, cause, code):
    out = tmp_path / "rgb.tif"
    result = run_mpi_s2_to_death(compose_args(scene, out, *TILES_256), ranks=3,
                                 env={"MPI_S2_TEST_FAULT": fault, "MPI_S2_COMMIT_INTERVAL": "0"})
    assert_exit(result, code)
    # from the rank's death (or its abort) to the end of the job
    assert result.fault_to_end_s is not None and result.fault_to_end_s < LIMIT_S, (result.fault_to_end_s,
                                                                                  result.stderr)
    lines = [line for line in result.stderr.splitlines() if re.search(cause, line)]
    assert len(lines) == 1, result.stderr
    assert len(error_lines(result.stderr)) == (1 if "fail" in fault else 0), result.stderr
    assert "Traceback" not in result.stderr
    assert len(NOTE.findall(result.stderr)) == 1, result.stderr
    assert not out.exists()
    assert beside(out) == KEPT


# -- the harness itself: mpirun is killed only in the one known hang, and then it says so -------------------------

FAKE_MPIRUN = """
import os, signal, sys, time
mode = sys.argv[1]
child = os.fork()
if child == 0:
    if mode == "runs-on":
        time.sleep(60)
    time.sleep(0.3)
    os.kill(os.getpid(), signal.SIGKILL) if mode != "hang-exit" else os._exit(143)
if mode == "exits":        # a working mpirun: reaps the rank, returns 128 + 9
    os.waitpid(child, 0)
    sys.exit(137)
if mode == "reaps-then-lingers":
    os.waitpid(child, 0)
time.sleep(60)             # "hang", "hang-exit": never reaps the rank (the finalize hang); others: linger
"""


class Timeout(Exception):
    pass


def fake_mpirun(mode: str, timeout: float = 4):
    proc = subprocess.Popen([PYTHON, "-c", FAKE_MPIRUN, mode], start_new_session=True)

    def on_timeout(limit: float) -> None:
        raise Timeout(limit)
    try:
        return _finish_mpirun(proc, timeout, 1, on_timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the fake rank too: nothing outlives the test
        except ProcessLookupError:
            pass
        proc.wait()


def test_harness_returns_mpiruns_own_code_and_the_time_from_the_fault():
    result = fake_mpirun("exits")
    assert result.returncode == 137 and result.finalize_hang is None
    assert result.fault_to_end_s is not None and result.fault_to_end_s < 1


@pytest.mark.parametrize("mode, status", [("hang", "signal 9"), ("hang-exit", "exit 143")])
def test_harness_kills_mpirun_only_in_the_finalize_hang_and_names_it(mode, status, capsys):
    with pytest.warns(UserWarning, match=r"mpirun finalize hang \(openpmix/openpmix#1244\)"):
        result = fake_mpirun(mode)
    assert result.returncode is None and status in result.finalize_hang
    assert "conftest: mpirun finalize hang" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["reaps-then-lingers", "runs-on"])
def test_harness_fails_an_mpirun_that_lingers_otherwise(mode):
    with pytest.raises(Timeout):
        fake_mpirun(mode)
