"""Signals and faults end a job within seconds, with one line naming the rank and the cause, and leave the output
path empty (or its previous file) and nothing beside it, except a partial run that ``--resume`` continues (and a
note that says so, printed once).

A job is caught in the middle with the test hook ``MPI_S2_TEST_FAULT=RANK:K:stall`` (rank RANK says so on stderr
after K windows and sleeps), then signalled as Slurm or a user would.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import (
    MPIRUN,
    PYTHON,
    _live_children,
    clean_env,
    compose_args,
    error_lines,
    read_array,
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
        self.proc = subprocess.Popen([*launcher, PYTHON, "-m", "mpi_s2", *args], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env={**clean_env(), **env})
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

    def finish(self, timeout: float = LIMIT_S, grace: float = 5) -> tuple[int, float]:
        """Wait for the end; return (exit code, seconds). mpirun's PMIx finalize hang (see conftest) once all
        ranks are gone is not the job's: mpirun then gets ``grace`` seconds and is killed, not counted."""
        start = time.monotonic()
        ranks_gone = None
        while self.proc.poll() is None:
            now = time.monotonic()
            if _live_children(self.proc.pid):
                ranks_gone = None
            elif ranks_gone is None:
                ranks_gone = now
            elif now - ranks_gone > grace:
                self.proc.kill()
                break
            if now - start > timeout + grace + 30:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"the job did not end within {timeout} s:\n{self.stderr}")
            time.sleep(0.05)
        self.proc.wait()
        self._reader.join(5)
        elapsed = (ranks_gone if ranks_gone is not None else time.monotonic()) - start
        return self.proc.returncode, elapsed


def stall(rank: int, after: int = 2) -> dict[str, str]:
    # the journal (and the HDF5 status) is committed after every window, not every 30 s, so that a run stopped
    # after K windows has something to resume
    return {"MPI_S2_TEST_FAULT": f"{rank}:{after}:stall", "MPI_S2_COMMIT_INTERVAL": "0"}


def beside(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name != out.name)


@pytest.fixture(scope="module")
def baseline(scene, tmp_path_factory) -> np.ndarray:
    out = tmp_path_factory.mktemp("signals-baseline") / "rgb.tif"
    result = run_mpi_s2(compose_args(scene, out, *TILES_256), ranks=2)
    assert result.returncode == 0, result.stderr
    return read_array(out)


def assert_stopped_line(stderr: str, signals: tuple[str, ...] = ("SIGTERM",)) -> None:
    stopped = [line for line in stderr.splitlines() if line.startswith("mpi_s2: stopped")]
    assert len(stopped) == 1, stderr
    assert re.match(rf"mpi_s2: stopped \(rank 0\): ({'|'.join(signals)}): the job was stopped from outside",
                    stopped[0]), stderr
    assert not error_lines(stderr) and "Traceback" not in stderr, stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_to_mpirun_keeps_a_resumable_run_and_resume_finishes_it(scene, baseline, tmp_path, signum):
    out = tmp_path / "rgb.tif"
    args = compose_args(scene, out, *TILES_256)
    job = Job(args, 3, stall(1))
    job.wait_for("stalls after 2 windows")
    job.proc.send_signal(signum)
    code, elapsed = job.finish()
    assert code != 0 and elapsed < LIMIT_S, (code, elapsed, job.stderr)
    assert_stopped_line(job.stderr, ("SIGTERM", "SIGINT"))  # mpirun passes SIGTERM on to the ranks
    assert len(NOTE.findall(job.stderr)) == 1, job.stderr
    assert not out.exists()
    assert beside(out) == [".rgb.tif.partial", ".rgb.tif.partial.journal", ".rgb.tif.partial.kept"]
    resumed = run_mpi_s2(args + ["--resume", "--report", str(tmp_path / "r.json")], ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    assert (read_array(out) == baseline).all() and beside(out) == ["r.json"]


def test_ctrl_c_without_launcher_then_a_new_run_cleans_up(scene, baseline, tmp_path):
    out = tmp_path / "rgb.tif"
    args = compose_args(scene, out, *TILES_256)
    job = Job(args, None, stall(0, 3))
    job.wait_for("stalls after 3 windows")
    job.proc.send_signal(signal.SIGINT)
    code, elapsed = job.finish()
    assert code == 128 + signal.SIGINT and elapsed < LIMIT_S, (code, job.stderr)
    assert_stopped_line(job.stderr, ("SIGINT",))
    assert len(NOTE.findall(job.stderr)) == 1 and not out.exists() and beside(out), job.stderr
    again = run_mpi_s2(args, ranks=None)  # without --resume: starts over and removes the partial run
    assert again.returncode == 0, again.stderr
    assert (read_array(out) == baseline).all() and beside(out) == []


def test_stopped_run_that_cannot_resume_leaves_the_previous_file_and_nothing_else(scene, tmp_path):
    out = tmp_path / "rgb.tif"
    out.write_bytes(b"the previous complete file")
    # JPEG tiles are encoded by GDAL's writer on rank 0: no journal, nothing to resume
    job = Job(compose_args(scene, out, "--window", "256", "--overwrite", "--co", "COMPRESS=JPEG", "--no-alpha"), 3,
              stall(1))
    job.wait_for("stalls after 2 windows")
    job.proc.send_signal(signal.SIGTERM)
    code, elapsed = job.finish()
    assert code != 0 and elapsed < LIMIT_S
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
    assert code != 0 and elapsed < LIMIT_S
    assert_stopped_line(job.stderr)
    assert len(NOTE.findall(job.stderr)) == 1 and "rgb.h5" in job.stderr
    assert not out.exists() and "rgb.h5" in beside(out)
    resumed = run_mpi_s2(args + ["--resume"], ranks=3)
    assert resumed.returncode == 0, resumed.stderr
    assert (read_array(out) == baseline).all() and beside(out) == []


@pytest.mark.parametrize("fault, cause", [
    ("1:3:kill", r"process rank 1 with PID \d+ on node \S+ exited on signal 9 \(Killed\)"),
    ("0:3:kill", r"process rank 0 with PID \d+ on node \S+ exited on signal 9 \(Killed\)"),
    ("1:3:fail", r"^mpi_s2: error \(rank 1\): test fault: rank 1 fails after 3 windows"),
    ("0:3:fail", r"^mpi_s2: error \(rank 0\): test fault: rank 0 fails after 3 windows"),
], ids=["SIGKILL-worker", "SIGKILL-writer", "exception-worker", "exception-writer"])
def test_a_rank_that_dies_or_fails_ends_the_job_with_one_line(scene, tmp_path, fault, cause):
    out = tmp_path / "rgb.tif"
    start = time.monotonic()
    result = run_mpi_s2_to_death(compose_args(scene, out, *TILES_256), ranks=3,
                                 env={"MPI_S2_TEST_FAULT": fault, "MPI_S2_COMMIT_INTERVAL": "0"}, timeout=90)
    elapsed = time.monotonic() - start
    assert result.returncode != 0 and elapsed < 60, (elapsed, result.stderr)
    lines = [line for line in result.stderr.splitlines() if re.search(cause, line)]
    assert len(lines) == 1, result.stderr
    assert len(error_lines(result.stderr)) == (1 if "fail" in fault else 0), result.stderr
    assert "Traceback" not in result.stderr
    assert len(NOTE.findall(result.stderr)) == 1, result.stderr
    assert not out.exists()
    assert beside(out) == [".rgb.tif.partial", ".rgb.tif.partial.journal", ".rgb.tif.partial.kept"]
