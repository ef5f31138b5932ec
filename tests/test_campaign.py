"""Campaigns end to end: planned over synthetic products in two UTM zones served as a catalogue, submitted as Slurm
job arrays to a real local Slurm (tests/cluster/local-cluster.sh, one node and two emulated nodes), followed in
the status database (SQLite and a PostgreSQL server the tests start), broken on purpose, retried and assembled.

The reference for the assembled mosaic is independent of the campaign: one ``mpi-s2 compose`` over the whole
area with the same options and stretch file; the two must agree pixel for pixel (no seams).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal
from test_slurm_jobs import LOCAL_CLUSTER, missing_requirement

from campaign_scene import make_scene
from conftest import PYTHON, clean_env, require, run_mpi_s2
from servers import Nginx

COMPOSE = ["--cloud-mask", "--composite", "median", "--window", "64", "--co", "BLOCKXSIZE=64", "--co",
           "BLOCKYSIZE=64"]  # 4 windows of whole TIFF tiles per full tile: a stopped tile keeps its partial run
GRID_KM = "1.28"  # 8 tiles of 128 x 128 px over the area (4 x 2), across the two zones
TILES = [f"r{r:03d}c{c:03d}" for r in range(2) for c in range(4)]
JOB_TIMEOUT = 240


class LocalSlurm:
    def __init__(self, nodes: int, state: Path):
        self.nodes = nodes
        self.state = state
        self.env = {**clean_env(), "MPI_S2_CLUSTER_DIR": str(state),
                    "MPI_S2_SLURM_PREFIX": f"{LOCAL_CLUSTER} run"}

    def run(self, *command: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(LOCAL_CLUSTER), "run", *command], capture_output=True, text=True, timeout=60,
                              env=self.env)

    def queue(self) -> list[str]:
        """squeue's lines: JOBID_TASK|STATE|NODES."""
        return self.run("squeue", "-h", "-r", "-o", "%i|%T|%N").stdout.split()

    def take_down(self, node: str) -> None:
        """The node fails: its slurmd first, then every process in its namespace (the job's too, which a stopped
        slurmd alone would leave running), so the controller hears nothing more from it."""
        os.kill(int((self.state / "nodes" / node / "slurmd.pid").read_text()), signal.SIGKILL)
        pids = subprocess.run(["ip", "netns", "pids", f"mpi_s2-{node}"], capture_output=True, text=True).stdout
        for pid in pids.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module", params=[1, 2], ids=["one-node", "two-nodes"])
def slurm(request, tmp_path_factory):
    missing = missing_requirement()
    if missing:
        require(False, *missing)
    state = tmp_path_factory.mktemp(f"campaign-slurm-{request.param}") / "cluster"
    cluster = LocalSlurm(request.param, state)
    up = subprocess.run([str(LOCAL_CLUSTER), "up", "--nodes", str(request.param), "--slurmd-timeout", "10"],
                        capture_output=True, text=True, timeout=120, env=cluster.env)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield cluster
    finally:
        down = subprocess.run([str(LOCAL_CLUSTER), "down"], capture_output=True, text=True, timeout=120,
                              env=cluster.env)
        assert down.returncode == 0, down.stdout + down.stderr


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("campaign-scene"))


@pytest.fixture(scope="module")
def postgres():
    from postgres_server import PostgresServer

    with PostgresServer() as server:
        yield server


def campaign(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "mpi_s2", "campaign", *args], capture_output=True, text=True,
                          timeout=timeout, env={**clean_env(), **(env or {})})


def plan(directory: Path, scene, *extra: str, env: dict[str, str] | None = None,
         items: str | None = None) -> subprocess.CompletedProcess:
    return campaign("plan", str(directory), "--aoi", str(scene.aoi), "--grid", GRID_KM, "--stac",
                    items or str(scene.items), *COMPOSE, *extra, env=env)


def status(directory: Path, env: dict[str, str]) -> dict:
    done = campaign("status", str(directory), "--json", env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def wait_until(directory: Path, env: dict[str, str], settled, timeout: float = JOB_TIMEOUT) -> dict:
    """``campaign status`` until ``settled(report)`` (each call reconciles the database)."""
    end = time.monotonic() + timeout
    while True:
        report = status(directory, env)
        if settled(report):
            return report
        assert time.monotonic() < end, f"campaign did not settle in {timeout} s: {report}"
        time.sleep(1.5)


def all_ended(report: dict) -> bool:
    return report["counts"]["submitted"] == report["counts"]["running"] == 0


def whole_area(directory: Path, scene, tmp_path: Path) -> np.ndarray:
    """The independent reference: one compose over the whole area, with the campaign's stretch file and CRS."""
    settings = json.loads((directory / "campaign.json").read_text())
    crs = f"EPSG:{next(iter(settings['tiles'].values()))['epsg']}"
    output = tmp_path / "whole.tif"
    done = run_mpi_s2(["compose", "--stac", str(scene.items), "--aoi", str(scene.aoi), "--crs", crs, *COMPOSE,
                       "--stretch-from", str(directory / "stretch.json"), "-o", str(output), "-q"], ranks=3)
    assert done.returncode == 0, done.stderr
    ds = gdal.Open(str(output))
    return ds.GetGeoTransform(), ds.ReadAsArray()


def assemble_and_compare(directory: Path, scene, env: dict[str, str], tmp_path: Path) -> None:
    mosaic = tmp_path / "mosaic.vrt"
    done = campaign("assemble", str(directory), "-o", str(mosaic), env=env)
    assert done.returncode == 0, done.stderr
    geotransform, reference = whole_area(directory, scene, tmp_path)
    ds = gdal.Open(str(mosaic))
    assert ds.GetGeoTransform() == geotransform
    pixels = ds.ReadAsArray()
    assert pixels.shape == reference.shape
    assert np.array_equal(pixels, reference), f"{int((pixels != reference).any(axis=0).sum())} pixels differ"
    assert (reference[3] == 255).sum() > 0.8 * reference[3].size  # the area is mostly covered: a real comparison
    # the STAC collection of the outputs: one item per tile, each with its file's size and SHA-256
    collection = json.loads((directory / "stac" / "collection.json").read_text())
    links = [link["href"] for link in collection["links"] if link["rel"] == "item"]
    assert len(links) == len(TILES)
    for href in links:
        item = json.loads((directory / "stac" / href).read_text())
        asset = item["assets"]["visual"]
        data = Path(asset["href"]).read_bytes()
        assert asset["file:size"] == len(data)
        assert asset["file:checksum"] == "1220" + hashlib.sha256(data).hexdigest()
        assert item["properties"]["mpi_s2:stretch"]["limits"] == json.loads(
            (directory / "stretch.json").read_text())["limits"]


def array_jobs(directory: Path) -> set[str]:
    """The Slurm job ids the status database records."""
    from mpi_s2.campaign.store import open_store

    url = json.loads((directory / "campaign.json").read_text())["db"]
    with open_store(str(directory), url) as store:
        return {row.job_id for row in store.tiles() if row.job_id}


def database_options(request, database: str) -> list[str]:
    """``--db URL`` of a fresh database on the tests' PostgreSQL server, or nothing (SQLite in the directory)."""
    if database == "sqlite":
        return []
    server = request.getfixturevalue("postgres")
    name = f"c{os.getpid()}_{time.monotonic_ns()}"
    server.create_database(name)
    return ["--db", server.database_url(name)]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_campaign_on_slurm_equals_one_compose_over_the_area(slurm, scene, database, request, tmp_path):
    env = slurm.env
    directory = tmp_path / "campaign"
    db = database_options(request, database)
    with Nginx(scene.items.parent, tmp_path / "nginx") as server:  # the catalogue, served over HTTP
        done = plan(directory, scene, *db, env=env, items=server.url(scene.items.name))
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(directory / "tiles")) == TILES
    report = status(directory, env)
    assert report["counts"]["planned"] == len(TILES)

    done = campaign("submit", str(directory), "--max-running", "2", "--ranks-per-tile", "2", env=env)
    assert done.returncode == 0, done.stderr
    again = campaign("submit", str(directory), "--max-running", "2", env=env)  # nothing is submitted twice
    assert again.returncode == 0 and "nothing to submit" in again.stderr, again.stderr
    most = 0
    end = time.monotonic() + JOB_TIMEOUT
    while any(line.split("|")[1] in ("PENDING", "RUNNING", "COMPLETING") for line in slurm.queue()):
        most = max(most, sum(line.split("|")[1] == "RUNNING" for line in slurm.queue()))
        assert time.monotonic() < end, slurm.queue()
        time.sleep(0.5)
    report = wait_until(directory, env, all_ended)
    assert report["counts"]["done"] == len(TILES), report
    assert most <= 2  # --max-running 2: the array's throttle
    assert len(array_jobs(directory)) == 1  # one array for all tiles
    table = campaign("status", str(directory), env=env)
    assert re.search(r"done\s+8", table.stdout) and "slowest done tiles" in table.stdout, table.stdout
    assemble_and_compare(directory, scene, env, tmp_path)


def tile_log(directory: Path, job: str) -> str:
    return "".join(p.read_text() for p in (directory / "logs").glob(f"tile-{job}.out"))


def test_faults_end_failed_or_cancelled_and_retry_finishes_them(slurm, scene, request, tmp_path):
    """A corrupt product (one tile), a task cancelled mid-run, and on two nodes a node lost under a running task:
    each tile ends failed or cancelled with its reason, never stuck running; retry --failed then finishes them
    (the cancelled one resumes its partial run) and the result is the same as one compose over the area.
    PostgreSQL on two nodes, SQLite on one (the killed-submit test the other way round)."""
    env = slurm.env
    directory = tmp_path / "campaign"
    db = database_options(request, "postgresql" if slurm.nodes == 2 else "sqlite")
    assert plan(directory, scene, *db, env=env).returncode == 0
    red = scene.small_red()
    saved = tmp_path / "red.jp2"
    shutil.copy(red, saved)
    red.write_bytes(saved.read_bytes()[:600])  # a truncated download, found when the job reads it
    stalled = ["r001c002", "r001c003"] if slurm.nodes == 2 else ["r001c002"]
    fault = {"MPI_S2_TEST_FAULT": "1:2:stall", "MPI_S2_TEST_FAULT_TILE": ",".join(stalled)}
    try:
        done = campaign("submit", str(directory), "--ranks-per-tile", "2", env={**env, **fault})
        assert done.returncode == 0, done.stderr
        report = wait_until(directory, env, lambda r: {x["tile"] for x in r["running"]} >= set(stalled)
                            and r["counts"]["done"] + r["counts"]["failed"] == len(TILES) - len(stalled))
        running = {r["tile"]: r for r in report["running"]}
        job = running[stalled[0]]["job"]
        end = time.monotonic() + 60
        while "stalls after 2 windows" not in tile_log(directory, job):  # a partial run exists
            assert time.monotonic() < end, tile_log(directory, job)
            time.sleep(0.5)
        assert slurm.run("scancel", job).returncode == 0
        wait_until(directory, env, lambda r: stalled[0] in {f["tile"] for f in r["failed"]}, timeout=60)
        if slurm.nodes == 2:  # the node under the other stalled task goes down: its slurmd and everything on it
            slurm.take_down(running[stalled[1]]["nodes"])
        report = wait_until(directory, env, all_ended, timeout=120)
    finally:
        shutil.copy(saved, red)
    failed = {f["tile"]: f for f in report["failed"]}
    assert failed["r000c000"]["state"] == "failed" and str(red) in failed["r000c000"]["error"], failed
    assert failed[stalled[0]]["state"] == "cancelled", failed
    if slurm.nodes == 2:
        assert failed[stalled[1]]["state"] == "failed" and "node" in failed[stalled[1]]["error"].lower(), failed
    assert report["counts"]["done"] == len(TILES) - len(stalled) - 1
    assert report["counts"]["running"] == 0

    done = campaign("retry", str(directory), "--failed", "--ranks-per-tile", "2", env=env)
    assert done.returncode == 0, done.stderr
    report = wait_until(directory, env, all_ended)
    assert report["counts"]["done"] == len(TILES), report
    resumed = json.loads((directory / "tiles" / stalled[0] / "report.json").read_text())
    assert resumed["windows_reused"] >= 1, resumed  # the cancelled tile's partial run was finished, not redone
    assemble_and_compare(directory, scene, env, tmp_path)


def test_a_submit_killed_midway_loses_and_duplicates_nothing(slurm, scene, request, tmp_path):
    """Killed after sbatch (one node, PostgreSQL) or before it (two nodes, SQLite), then rerun."""
    env = slurm.env
    directory = tmp_path / "campaign"
    point = "after-sbatch" if slurm.nodes == 1 else "before-sbatch"
    db = database_options(request, "postgresql" if slurm.nodes == 1 else "sqlite")
    assert plan(directory, scene, *db, env=env).returncode == 0
    command = [PYTHON, "-m", "mpi_s2", "campaign", "submit", str(directory), "--ranks-per-tile", "2",
               "--max-running", "2"]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                            env={**env, "MPI_S2_TEST_PAUSE": point})
    assert proc.stderr is not None
    for line in proc.stderr:
        if f"test pause at {point}" in line:
            break
    proc.kill()
    proc.wait()
    done = campaign("submit", str(directory), "--ranks-per-tile", "2", "--max-running", "2", env=env)
    assert done.returncode == 0, done.stderr
    expected = "found as job" if point == "after-sbatch" else "never reached Slurm"
    assert expected in done.stderr, done.stderr
    report = wait_until(directory, env, all_ended)
    assert report["counts"]["done"] == len(TILES), report
    assert len(array_jobs(directory)) == 1  # one array job in all: the killed command's, or the rerun's
    markers = [json.loads((directory / "tiles" / t / "marker.json").read_text()) for t in TILES]
    assert {m["attempt"] for m in markers} == {1}  # no tile ran twice


def test_without_slurm_submit_says_so_in_one_line_and_local_runs_the_tiles(scene, tmp_path):
    directory = tmp_path / "campaign"
    env = {"PATH": "/nonexistent"}  # no sbatch, no squeue
    assert plan(directory, scene).returncode == 0
    done = campaign("submit", str(directory), env=env)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert re.match(r"mpi_s2: error: no Slurm on this machine: sbatch not found .*--local", done.stderr), done.stderr
    done = campaign("submit", str(directory), "--local", "--ranks-per-tile", "2",
                    env={"PATH": os.path.dirname(shutil.which("mpirun")) + ":/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    report = status(directory, {})
    assert report["counts"]["done"] == len(TILES), report
    assemble_and_compare(directory, scene, {}, tmp_path)
    # a COG of the mosaic, written by mpi-s2 convert under mpirun: the VRT's pixels and grid, nothing left beside
    cog = tmp_path / "mosaic.tif"
    done = campaign("assemble", str(directory), "-o", str(cog), "--cog", "--ranks", "3")
    assert done.returncode == 0, done.stderr
    vrt, written = gdal.Open(str(tmp_path / "mosaic.vrt")), gdal.Open(str(cog))
    assert written.GetGeoTransform() == vrt.GetGeoTransform()
    assert np.array_equal(written.ReadAsArray(), vrt.ReadAsArray())
    assert not list(tmp_path.glob(".mosaic.tif*"))


def bad_aoi(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.geojson"
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", ["not-geojson", "covers-nothing", "zero-grid", "directory-exists",
                                  "campaign-option", "no-catalogue"])
def test_bad_plan_input_is_one_line_and_leaves_nothing(scene, tmp_path, case):
    directory = tmp_path / "campaign"
    args = ["plan", str(directory), "--aoi", str(scene.aoi), "--grid", GRID_KM, "--stac", str(scene.items)]
    expected = {
        "not-geojson": r"--aoi .*bad.geojson: cannot be read as GeoJSON",
        "covers-nothing": r"--aoi .*bad.geojson: (covers nothing|has no Polygon)",
        "zero-grid": r"--grid 0: expected mgrs or a tile size in km > 0",
        "directory-exists": r"campaign directory .*campaign exists \(give --overwrite",
        "campaign-option": r"campaign plan: --crs is set by the campaign for each tile",
        "no-catalogue": r"campaign plan: give --stac",
    }[case]
    if case == "not-geojson":
        args[3] = str(bad_aoi(tmp_path, "{not json"))
    elif case == "covers-nothing":
        args[3] = str(bad_aoi(tmp_path, json.dumps({"type": "Polygon", "coordinates": [[[6, 46], [6, 46],
                                                                                         [6, 46], [6, 46]]]})))
    elif case == "zero-grid":
        args[5] = "0"
    elif case == "directory-exists":
        directory.mkdir()
        (directory / "keep.txt").write_text("mine")
    elif case == "campaign-option":
        args += ["--crs", "EPSG:32632"]
    elif case == "no-catalogue":
        args = args[:6]
    before = sorted(p.name for p in tmp_path.iterdir())
    done = campaign(*args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and re.match(r"mpi_s2: error: " + expected, done.stderr), done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing made, nothing removed
    if case == "directory-exists":
        assert (directory / "keep.txt").read_text() == "mine"


def test_tiles_no_item_covers_are_planned_empty_and_reported(scene, tmp_path):
    """An area reaching beyond the catalogue: the tiles no item covers are planned empty, never submitted."""
    w, s, e, n = (5.972, 45.992, 6.028, 46.03)  # 2 km further north than the products reach
    aoi = bad_aoi(tmp_path, json.dumps({"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}))
    directory = tmp_path / "campaign"
    done = campaign("plan", str(directory), "--aoi", str(aoi), "--grid", GRID_KM, "--stac", str(scene.items),
                    *COMPOSE)
    assert done.returncode == 0, done.stderr
    report = status(directory, {})
    north = [f"r000c{c:03d}" for c in range(4)]  # the row of tiles north of the products
    assert report["empty"] == north and report["counts"]["planned"] == report["tiles"] - 4, report
    assert f"4 tiles empty: no item covers {', '.join(north)}" in done.stderr, done.stderr
    table = campaign("status", str(directory))
    assert f"empty (no item covers them): {', '.join(north)}" in table.stdout, table.stdout


def test_dry_run_over_europe_counts_mgrs_tiles_and_projects_core_hours(tmp_path):
    europe = bad_aoi(tmp_path, json.dumps({"type": "Polygon", "coordinates": [[[-25, 34], [45, 34], [45, 72],
                                                                               [-25, 72], [-25, 34]]]}))
    done = campaign("plan", str(tmp_path / "europe"), "--aoi", str(europe), "--dry-run")
    assert done.returncode == 0, done.stderr
    found = re.search(r"(\d+) MGRS tiles; .* ([\d.]+) core-hours in all", done.stdout)
    assert found, done.stdout
    tiles = int(found.group(1))
    # the box is 19.4 million km2 (R^2 x 70 degrees x (sin 72 - sin 34)): 1940 squares of 100 km, and the
    # 109.8 km tiles overlap and spill over the zones' edges, so more tiles than that, but fewer than twice
    assert 1940 < tiles < 2 * 1940
    assert not (tmp_path / "europe").exists()


def test_an_mgrs_campaign_over_two_zones_assembles_as_one_compose(scene, tmp_path):
    """--grid mgrs: the Sentinel-2 tiles over the area (two in zone 31, two in zone 32: they overlap), each on its
    own UTM grid; the mosaic in zone 31 takes zone 32's tiles only where no zone 31 tile lies, so it equals one
    compose over the area in zone 31, and is transparent beyond it."""
    directory = tmp_path / "campaign"
    done = campaign("plan", str(directory), "--aoi", str(scene.aoi), "--grid", "mgrs", "--stac", str(scene.items),
                    *COMPOSE)
    assert done.returncode == 0, done.stderr
    settings = json.loads((directory / "campaign.json").read_text())
    # 6 E 46 N: zone 31 (0-6 E) and 32 (6-12 E), band T (40-48 N); the area lies where two rows of tiles overlap
    assert {name: tile["epsg"] for name, tile in settings["tiles"].items()} == {
        "31TGL": 32631, "31TGM": 32631, "32TKR": 32632, "32TKS": 32632}
    done = campaign("submit", str(directory), "--local", "--ranks-per-tile", "2")
    assert done.returncode == 0, done.stderr
    for name, tile in settings["tiles"].items():
        ds = gdal.Open(str(directory / "outputs" / f"{name}.tif"))
        assert ds.GetSpatialRef().GetAuthorityCode(None) == str(tile["epsg"])
        x0, _, _, y0, _, _ = ds.GetGeoTransform()
        assert x0 % 10 == 0 and y0 % 10 == 0  # on the zone's 10 m lattice
    mosaic = tmp_path / "mosaic.vrt"
    assert campaign("assemble", str(directory), "-o", str(mosaic)).returncode == 0
    geotransform, reference = whole_area(directory, scene, tmp_path)
    ds = gdal.Open(str(mosaic))
    x0, _, _, y0, _, _ = ds.GetGeoTransform()
    col, row = round((geotransform[0] - x0) / 10), round((y0 - geotransform[3]) / 10)
    pixels = ds.ReadAsArray()
    inside = pixels[:, row:row + reference.shape[1], col:col + reference.shape[2]]
    assert np.array_equal(inside, reference), f"{int((inside != reference).any(axis=0).sum())} pixels differ"
    outside = np.ones(pixels.shape[1:], bool)
    outside[row:row + reference.shape[1], col:col + reference.shape[2]] = False
    assert not pixels[3][outside].any()


def test_a_local_run_killed_midway_ends_its_tile_failed_and_retry_finishes(scene, tmp_path):
    """submit --local killed with its tile's mpirun (a closed login session): the tile it was running ends failed
    ("interrupted"), never stuck running; retry --failed --local then runs it and the tiles never started."""
    directory = tmp_path / "campaign"
    assert plan(directory, scene).returncode == 0
    command = [PYTHON, "-m", "mpi_s2", "campaign", "submit", str(directory), "--local", "--ranks-per-tile", "2"]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**clean_env(), "MPI_S2_TEST_FAULT": "1:2:stall", "MPI_S2_TEST_FAULT_TILE": "r000c001"})
    assert proc.stderr is not None
    for line in proc.stderr:
        if "stalls after 2 windows" in line:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    report = status(directory, {})
    assert report["counts"] == {"planned": 6, "submitted": 0, "running": 0, "done": 1, "failed": 1, "cancelled": 0,
                                "empty": 0}, report
    assert report["failed"][0]["tile"] == "r000c001" and "interrupted" in report["failed"][0]["error"], report
    done = campaign("retry", str(directory), "--failed", "--local", "--ranks-per-tile", "2")
    assert done.returncode == 0, done.stderr
    assert status(directory, {})["counts"]["done"] == len(TILES)
