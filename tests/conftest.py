"""Shared fixtures: generated rasters that make mistakes visible, an independent reference, launchers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr

from mpi_s2.tools.synth import SynthOptions, synthesize

gdal.UseExceptions()

PYTHON = sys.executable
MPIRUN = [shutil.which("mpirun") or "mpirun", "--allow-run-as-root", "--oversubscribe"]
# A scene whose size is not a multiple of the window (1024) nor of the block (256): edge windows are smaller.
SCENE_WIDTH, SCENE_HEIGHT, SCENE_BLOCK = 1300, 1100, 256


#: The project's real Sentinel-2 files: ``MPI_S2_REAL_DATA``, default ``shared/data/s2-real`` beside the checkout.
REAL_DATA = Path(os.environ.get("MPI_S2_REAL_DATA",
                                Path(__file__).resolve().parents[2] / "shared" / "data" / "s2-real"))

# ---------------------------------------------------------------------------------------- one rule for skips
# A test that needs root, Slurm, real data or disk space FAILS when it is missing: `make test`, `make test-fresh`
# and CI never skip. A developer running pytest by hand may opt out with MPI_S2_ALLOW_SKIPS=1 (exactly "1"); the
# skip then says how to get the missing piece. Any skip that happens anyway (pytest-mpi's `mpi(min_size=N)` on too
# small a world, a bare pytest.skip) fails the session at its end unless skips are allowed.
ALLOW_SKIPS = "MPI_S2_ALLOW_SKIPS"


def skips_allowed() -> bool:
    return os.environ.get(ALLOW_SKIPS) == "1"


def require(condition: bool, what: str, how: str) -> None:
    """Fail the test with one line unless ``condition`` holds (``what`` is missing, ``how`` says how to get it);
    with ``MPI_S2_ALLOW_SKIPS=1`` skip it instead."""
    if condition:
        return
    if skips_allowed():
        pytest.skip(f"needs {what}: {how}")
    pytest.fail(f"needs {what}: {how} (a developer may skip it instead with {ALLOW_SKIPS}=1)", pytrace=False)


_skips: list[str] = []


def _skip_reason(longrepr) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr).strip().splitlines()[-1] if longrepr else ""


def pytest_runtest_logreport(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skips.append(f"{report.nodeid}: {_skip_reason(report.longrepr)}")


def pytest_collectreport(report) -> None:
    if report.skipped:
        _skips.append(f"{report.nodeid or 'collection'}: {_skip_reason(report.longrepr)}")


def pytest_collection_modifyitems(config, items) -> None:
    """Outside ``--with-mpi`` the in-process MPI tests are deselected, not skipped (pytest-mpi would skip them)."""
    if config.getoption("with_mpi", default=False) or config.getoption("only_mpi", default=False):
        return
    mpi = [item for item in items if item.get_closest_marker("mpi")]
    if mpi:
        config.hook.pytest_deselected(items=mpi)
        items[:] = [item for item in items if not item.get_closest_marker("mpi")]


def pytest_sessionfinish(session, exitstatus) -> None:
    if _skips and not skips_allowed() and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    if not _skips:
        terminalreporter.write_line("mpi_s2 tests: 0 skipped")
    elif skips_allowed():
        terminalreporter.write_line(f"mpi_s2 tests: {len(_skips)} skipped (allowed by {ALLOW_SKIPS}=1)")
    else:
        terminalreporter.write_line(f"mpi_s2 tests: FAILED: {len(_skips)} skipped; a skip fails this run unless "
                                    f"{ALLOW_SKIPS}=1 (by hand only, never make test or CI):", red=True)
        for skip in _skips:
            terminalreporter.write_line(f"  skipped {skip}", red=True)


# ------------------------------------------------------------------------------------- world size checked
def pytest_configure(config) -> None:
    """An in-process MPI session (``--with-mpi``) stops at once, with one line, when the world is not the size
    the launcher was asked for: ``MPI_S2_TEST_RANKS`` (set by ``make test-mpi``), else mpirun's own
    ``OMPI_COMM_WORLD_SIZE``. Singletons (mpi4py built against another MPI) would otherwise skip every test."""
    if not (config.getoption("with_mpi", default=False) or config.getoption("only_mpi", default=False)):
        return
    asked = os.environ.get("MPI_S2_TEST_RANKS") or os.environ.get("OMPI_COMM_WORLD_SIZE")
    if not asked:
        return
    if not asked.isdigit():
        raise pytest.UsageError(f"mpi_s2 tests: MPI_S2_TEST_RANKS={asked!r} is not a rank count")
    from mpi4py import MPI

    size = MPI.COMM_WORLD.size
    if size != int(asked):
        told = ", ".join(f"{k}={os.environ[k]}" for k in ("MPI_S2_TEST_RANKS", "OMPI_COMM_WORLD_SIZE")
                         if k in os.environ)
        raise pytest.UsageError(
            f"mpi_s2 tests: the MPI world has {size} rank(s) but {asked} were asked for ({told}): launch with "
            f"mpirun -n {asked}, the mpirun of the MPI mpi4py was built with")


def clean_env() -> dict[str, str]:
    """The environment without the variables of an enclosing MPI or Slurm launch."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("OMPI_", "PMIX_", "SLURM_", "PMI_"))}


def run_mpi_s2(args: list[str], ranks: int | None = None, timeout: float = 180,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m mpi_s2 ARGS``, under ``mpirun -n ranks`` when ``ranks`` is given (``env``: extra
    variables, e.g. a test fault)."""
    launcher = [*MPIRUN, "-n", str(ranks)] if ranks else []
    return subprocess.run([*launcher, PYTHON, "-m", "mpi_s2", *args], capture_output=True, text=True,
                          timeout=timeout, env={**clean_env(), **(env or {})})


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(c) for c in fh.read().split()]
    except OSError:
        return []


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state first), or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _live_children(pid: int) -> list[int]:
    """Child processes of ``pid`` that still run (a zombie a hung mpirun no longer reaps does not count)."""
    live = []
    for child in _children(pid):
        fields = _proc_stat(child)
        if fields is not None and fields[0] not in ("Z", "X"):
            live.append(child)
    return live


def _zombie_children(pid: int) -> dict[int, str]:
    """The children of ``pid`` that have ended but were not reaped, with how each ended (``exit 143``,
    ``signal 9``): the exit status a zombie keeps for its parent (``/proc/PID/stat`` field 52)."""
    zombies = {}
    for child in _children(pid):
        fields = _proc_stat(child)
        if fields is None or fields[0] != "Z":
            continue
        status = int(fields[49]) if len(fields) > 49 else 0  # field 52 of the line; fields[0] is field 3
        zombies[child] = f"signal {status & 0x7f}" if status & 0x7f else f"exit {status >> 8}"
    return zombies


#: What the harness prints (and warns) when it kills an mpirun hung in finalize; tests/README.md names it.
FINALIZE_HANG = "mpirun finalize hang (openpmix/openpmix#1244)"


class DeathResult(subprocess.CompletedProcess):
    """A finished job: ``returncode`` is mpirun's own exit code, or None when mpirun hung in finalize and was
    killed (``finalize_hang`` then names the ranks' exit statuses); ``fault_to_end_s``: seconds from the first
    rank's end (the fault) to the end of the job (the last rank's end when mpirun hung); ``ended_at``: when it
    ended (``time.monotonic()``)."""

    finalize_hang: str | None = None
    fault_to_end_s: float | None = None
    ended_at: float = 0.0


def _finish_mpirun(proc: subprocess.Popen, timeout: float, grace: float, on_timeout,
                   stderr_so_far=lambda: "") -> DeathResult:
    """Wait for ``proc`` (an mpirun) to end.

    Open MPI 4.1.4's mpirun with Debian's PMIx 3 sometimes hangs in ``PMIx_server_finalize`` after a rank was
    killed by a signal (about one run in 15 here; openpmix/openpmix#1244). The hang is *detected* when, for
    ``grace`` seconds, all of: (1) no rank runs any more (every child of mpirun has ended); (2) at least one of
    them is a zombie, i.e. mpirun has stopped reaping its children (a working mpirun reaps a rank within
    milliseconds, its event loop waits on SIGCHLD); (3) mpirun itself is still alive. Only then is mpirun
    killed: the result has ``returncode`` None and ``finalize_hang`` set, and the harness prints one line and
    warns (``FINALIZE_HANG``), so the hang is named in the test output. An mpirun that lingers in any other way
    (ranks still running, or reaped ranks and mpirun not exiting) is killed at ``timeout`` and ``on_timeout``
    fails the test.

    The fault's time is the first of: a rank's end, or the first ``mpi_s2: error`` line in ``stderr_so_far()``
    (a rank that fails prints it before it aborts the job).
    """
    start = time.monotonic()
    first_end = ranks_gone = None
    ranks_seen: set[int] = set()
    hang = None
    last_poll = start
    while proc.poll() is None:
        now = last_poll = time.monotonic()
        children = _children(proc.pid)
        live = _live_children(proc.pid)
        if first_end is None and ((ranks_seen and ranks_seen - set(live)) or "mpi_s2: error" in stderr_so_far()):
            first_end = now  # a rank ended (killed, aborted or exited), or said it fails
        ranks_seen |= set(live)
        zombies = _zombie_children(proc.pid)
        if live or not zombies or not children:
            ranks_gone = None
        elif ranks_gone is None:
            ranks_gone = now
        elif now - ranks_gone > grace:
            hang = (f"{FINALIZE_HANG}: every rank ended ({', '.join(sorted(set(zombies.values())))}) and "
                    f"mpirun {proc.pid} did not reap them nor exit for {grace:.0f} s; killed")
            proc.kill()
            proc.wait()
            break
        if now - start > timeout:
            proc.kill()
            proc.wait()
            on_timeout(timeout)
        time.sleep(0.05)
    end = ranks_gone if hang else time.monotonic()
    if first_end is None and ranks_seen:
        first_end = last_poll  # the ranks and mpirun ended since the last look
    result = DeathResult(proc.args, None if hang else proc.returncode)
    result.finalize_hang, result.ended_at = hang, end
    if first_end is not None:
        result.fault_to_end_s = end - first_end
    if hang:
        print(f"conftest: {hang}")
        warnings.warn(hang, stacklevel=3)
    return result


def run_mpi_s2_to_death(args: list[str], ranks: int, env: dict[str, str] | None = None, timeout: float = 120,
                        grace: float = 5) -> DeathResult:
    """Run a job that is meant to die (a rank killed or failing on purpose) under ``mpirun -n ranks``.

    The result's ``returncode`` is mpirun's; ``fault_to_end_s`` the seconds from the first rank's end to the
    job's end. mpirun is killed only in the one known hang (see :func:`_finish_mpirun`), and then says so;
    a job still running after ``timeout`` fails the test.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([*MPIRUN, "-n", str(ranks), PYTHON, "-m", "mpi_s2", *args], stdout=out, stderr=err,
                                env={**clean_env(), **(env or {})})

        def on_timeout(limit: float) -> None:
            err.seek(0)
            pytest.fail(f"the job (and mpirun) did not end within {limit} s:\n{err.read()}")

        def stderr_so_far() -> str:
            fd = err.fileno()
            return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

        result = _finish_mpirun(proc, timeout, grace, on_timeout, stderr_so_far)
        out.seek(0)
        err.seek(0)
        result.stdout, result.stderr = out.read(), err.read()
        return result


def assert_exit(result: DeathResult, expected: int) -> None:
    """mpirun's exit code is ``expected``; unknowable only when the harness had to kill mpirun in the one known
    finalize hang, which it has named (printed and warned)."""
    if result.finalize_hang:
        return
    assert result.returncode == expected, (result.returncode, result.stderr)


def compose_args(scene: dict[str, str], output: Path | str, *extra: str) -> list[str]:
    return ["compose", "--red", scene["red"], "--green", scene["green"], "--blue", scene["blue"],
            "-o", str(output), "-q", *extra]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("mpi_s2: error")]


def gdal_translate_reference(scene: dict[str, str], out: Path, offset: float = 0.0, scale: float = 10000.0,
                             max_reflectance: float = 1.0, gamma: float = 2.2) -> np.ndarray:
    """RGB from the gdal_translate command line (-scale A B 0 255 -exponent 1/gamma, bit for bit the contract):
    an independent implementation."""
    vrt = out.with_suffix(".vrt")
    subprocess.run(["gdalbuildvrt", "-q", "-separate", str(vrt), scene["red"], scene["green"], scene["blue"]],
                   check=True)
    low = -offset
    high = low + scale * max_reflectance
    subprocess.run(["gdal_translate", "-q", "-ot", "Byte", "-scale", repr(low), repr(high), "0", "255",
                    "-exponent", repr(1.0 / gamma), str(vrt), str(out)], check=True)
    return read_array(out)


def read_array(path: str | Path) -> np.ndarray:
    ds = gdal.Open(str(path))
    return ds.ReadAsArray()


def read_bands(scene: dict[str, str]) -> list[np.ndarray]:
    return [read_array(scene[b]) for b in ("red", "green", "blue")]


def write_band(path: Path, array: np.ndarray, *, geotransform=(399960.0, 10.0, 0.0, 5300040.0, 0.0, -10.0),
               epsg: int | None = 32632, block: int = 256, compress: str = "DEFLATE",
               data_type: int = gdal.GDT_UInt16) -> str:
    """Write one single-band tiled GeoTIFF and return its path."""
    ds = gdal.GetDriverByName("GTiff").Create(
        str(path), array.shape[1], array.shape[0], 1, data_type,
        options=["TILED=YES", f"BLOCKXSIZE={block}", f"BLOCKYSIZE={block}", f"COMPRESS={compress}"])
    ds.SetGeoTransform(geotransform)
    if epsg:
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(epsg)
        ds.SetProjection(srs.ExportToWkt())
    ds.GetRasterBand(1).WriteArray(array)
    ds = None
    return str(path)


@pytest.fixture(scope="session")
def scene(tmp_path_factory) -> dict[str, str]:
    """A synthetic scene of 1300 x 1100 pixels, tiled 256, DEFLATE (paths by band name)."""
    outdir = tmp_path_factory.mktemp("scene")
    return synthesize(str(outdir), SynthOptions(size=SCENE_WIDTH, height=SCENE_HEIGHT, block=SCENE_BLOCK,
                                                compress="DEFLATE"))


@pytest.fixture(scope="session")
def reference(scene, tmp_path_factory) -> np.ndarray:
    """gdal_translate's RGB of ``scene`` with the default stretch."""
    return gdal_translate_reference(scene, tmp_path_factory.mktemp("ref") / "ref.tif")


@pytest.fixture(scope="session")
def valid(scene) -> np.ndarray:
    """True where no band of ``scene`` is 0."""
    bands = read_bands(scene)
    return (bands[0] != 0) & (bands[1] != 0) & (bands[2] != 0)


#: The second band set of ``misaligned``: the scene moved 100 px east and 100 px south (1000 m at 10 m).
SHIFT = 100


@pytest.fixture(scope="session")
def misaligned(scene, tmp_path_factory) -> list[dict[str, str]]:
    """Two band sets: ``scene``, then a copy of it SHIFT px east and south. The copy's 256 blocks start 100 px off
    the windows, so it is staged (staging units, then windows); the mosaic is 1400 x 1200."""
    outdir = tmp_path_factory.mktemp("shifted")
    shifted = {}
    for band in ("red", "green", "blue"):
        ds = gdal.Open(scene[band])
        x0, dx, _, y0, _, dy = ds.GetGeoTransform()
        x0, y0 = x0 + SHIFT * dx, y0 + SHIFT * dy
        path = str(outdir / Path(scene[band]).name)
        gdal.Translate(path, ds, outputBounds=[x0, y0, x0 + ds.RasterXSize * dx, y0 + ds.RasterYSize * dy],
                       creationOptions=["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE"])
        shifted[band] = path
    return [scene, shifted]


def band_set_args(band_sets: list[dict[str, str]]) -> list[str]:
    """``--red R --green G --blue B [--scl S]`` for each band set, in order."""
    args: list[str] = []
    for bands in band_sets:
        args += ["--red", bands["red"], "--green", bands["green"], "--blue", bands["blue"]]
        if "scl" in bands:
            args += ["--scl", bands["scl"]]
    return args


#: background jobs a test started (test_signals.Job); any still running when the test ends is killed, so that a
#: failing test never leaves a stalled job (MPI_S2_TEST_FAULT=...:stall sleeps 10 minutes) eating the CPUs
BACKGROUND_JOBS: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_background_job_outlives_its_test():
    yield
    while BACKGROUND_JOBS:
        proc = BACKGROUND_JOBS.pop()
        if proc.poll() is None:
            proc.terminate()  # mpirun passes it on to the ranks (or the one process without a launcher)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

