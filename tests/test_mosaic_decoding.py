"""Mosaics at the decoding floor: every source block decoded once, and the dynamic schedule balancing the load.

The 2 x 2 mosaic is Sentinel-2's situation at small scale: tiles of 1200 px whose origins are 1000 px apart,
JPEG 2000 blocks of 256, so the neighbours' blocks start 232 px off the first tile's (1000 mod 256), as real
neighbours' 1024 blocks start 784 px off. OpenJPEG itself says when it decodes a tile (``CPL_DEBUG``): the
count of its messages is the independent evidence that no block is decoded twice.
"""

from __future__ import annotations

import heapq
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal
from test_mosaic import _corner_in_zone_33, expected_tile, paste

from mpi_s2.planning.scheduling import MAX_BATCH, Scheduler
from mpi_s2.tools.synth import ORIGIN, ProductOptions, synthesize_product

from conftest import MPIRUN, PYTHON, clean_env, read_array, run_mpi_s2

TILE, SPACING, BLOCK = 1200, 1000, 256
DECODED = re.compile(r"OPENJPEG: info: Tile \d+/\d+ has been decoded")


@pytest.fixture(scope="module")
def grid_2x2(tmp_path_factory):
    """Four L2A products on one zone's grid, 1000 px apart, in mosaic order (first valid wins)."""
    products = []
    for k, (dx, dy) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
        options = ProductOptions(size=TILE, jp2_block=BLOCK, tile=f"32T{k}",
                                 origin=(ORIGIN[0] + 10.0 * SPACING * dx, ORIGIN[1] - 10.0 * SPACING * dy),
                                 sensing=f"2023071{k}T102559")
        products.append(synthesize_product(str(tmp_path_factory.mktemp(f"tile{k}")), options))
    return products


@pytest.fixture(scope="module")
def grid_2x2_reference(grid_2x2, tmp_path_factory):
    """A numpy composite of per-tile gdal_translate references (with the SCL cloud mask)."""
    tmp = tmp_path_factory.mktemp("ref2x2")
    size = SPACING + TILE
    expected = np.zeros((3, size, size), dtype=np.uint8)
    alpha = np.zeros((size, size), dtype=np.uint8)
    placements = [(0, 0), (SPACING, 0), (0, SPACING), (SPACING, SPACING)]
    # the first input pasted last wins
    for product, (col, row) in reversed(list(zip(grid_2x2, placements, strict=True))):
        ref, valid = expected_tile(product, tmp, True)
        paste(expected, alpha, ref, valid, col, row)
    return expected, alpha


def compose_with_decoder_log(products, out: Path, report: Path, ranks: int, *extra: str):
    """Run compose with OpenJPEG's debug messages on; return (result, number of tiles OpenJPEG decoded)."""
    env = {**clean_env(), "CPL_DEBUG": "ON"}
    cmd = [*MPIRUN, "-n", str(ranks), PYTHON, "-m", "mpi_s2", "compose", *products, "-o", str(out), "-q",
           "--report", str(report), *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    return result, len(DECODED.findall(result.stderr))


def jp2_tiles(path: str) -> int:
    ds = gdal.Open(path)
    bx, by = ds.GetRasterBand(1).GetBlockSize()
    return -(-ds.RasterXSize // bx) * -(-ds.RasterYSize // by)


@pytest.mark.parametrize("schedule,ranks,scratch,backend", [
    ("dynamic", 1, False, "writer"), ("dynamic", 2, False, "writer"), ("dynamic", 3, False, "writer"),
    ("dynamic", 4, True, "writer"), ("static", 2, True, "writer"), ("static", 3, False, "writer"),
    # collective HDF5 rounds while staging is under way: workers waiting at the staging barrier must not block
    ("dynamic", 4, False, "hdf5"), ("static", 3, True, "hdf5"), ("dynamic", 1, False, "hdf5"),
])
def test_misaligned_2x2_decodes_every_block_once(grid_2x2, grid_2x2_reference, tmp_path, schedule, ranks, scratch,
                                                 backend):
    out, report_path = tmp_path / "mosaic.tif", tmp_path / "run.json"
    extra = ["--staging-dir", str(tmp_path / "scratch")] if scratch else []
    extra += ["--backend", backend]
    if scratch:
        (tmp_path / "scratch").mkdir()
    result, decoded = compose_with_decoder_log(grid_2x2, out, report_path, ranks, "--cloud-mask",
                                               "--schedule", schedule, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    expected, alpha = grid_2x2_reference
    rgba = read_array(out)
    assert rgba.shape == (4, SPACING + TILE, SPACING + TILE)
    assert (rgba[3] == alpha).all()
    assert (rgba[:3] == expected).all()

    report = json.loads(report_path.read_text())
    files = [f for i in report["inputs"] for f in (*list(i["files"].values())[:3], i["files"]["scl"])]
    # OpenJPEG's own count: exactly the tiles of every band and SCL file, so none was decoded twice
    assert decoded == sum(jp2_tiles(f) for f in files)
    for source in report["inputs"]:
        assert source["blocks"]["decoded"] == source["blocks"]["distinct"] == source["blocks"]["total"]
    assert [len(s["staged"]) for s in report["inputs"]] == [1, 4, 4, 4]  # tile 0's bands are read in place
    assert report["schedule"] == schedule and report["stage_units"] > 0
    # staged copies: node-local memory for a one-node job by default, else where asked; removed at the end
    staging = report["staging_directory"]
    assert staging.startswith(str(tmp_path / "scratch") if scratch else "/dev/shm/")
    assert not os.path.exists(staging)
    assert not list(tmp_path.glob(".*")) and not list(tmp_path.glob("scratch/*"))


@pytest.fixture(scope="module")
def edge_and_zone(tmp_path_factory):
    """An orbit-edge tile (most of it nodata) above a full tile, and a tile of zone 33 over the full one."""
    edge = synthesize_product(str(tmp_path_factory.mktemp("edge")),
                              ProductOptions(size=2048, jp2_block=BLOCK, orbit_edge=0.8))
    full = synthesize_product(str(tmp_path_factory.mktemp("full")),
                              ProductOptions(size=2048, jp2_block=BLOCK, tile="32TNS",
                                             origin=(ORIGIN[0], ORIGIN[1] - 10.0 * 2048),
                                             sensing="20230716T102559"))
    zone33 = synthesize_product(str(tmp_path_factory.mktemp("z33")),
                                ProductOptions(size=1200, jp2_block=BLOCK, tile="33TUM", epsg=32633,
                                               origin=_corner_in_zone_33(300, 2500), sensing="20230717T102559"))
    return [edge, full, zone33]


def simulate(policy: str, costs: list[float], workers: int) -> tuple[list[float], list[list[int]], dict[int, list]]:
    """Play ``workers`` workers against the pure Scheduler: each works through its batch (window ``i`` costs
    ``costs[i]``), then asks for more. Returns each worker's busy time, the batches in the order handed out, and
    each worker's windows in the order it got them."""
    ranks = tuple(range(1, workers + 1))
    scheduler = Scheduler(0, [True] * len(costs), ranks, policy)
    busy = {w: 0.0 for w in ranks}
    done = {w: 0 for w in ranks}
    got: dict[int, list] = {w: [] for w in ranks}
    batches: list[list[int]] = []
    clock: list[tuple[float, int]] = []
    for w, batch in scheduler.first_batches().items():
        batches.append([i.index for i in batch])
        got[w] += batches[-1]
        busy[w] += sum(costs[i] for i in batches[-1])
        heapq.heappush(clock, (busy[w], w))
    while clock:
        now, w = heapq.heappop(clock)
        done[w] = len(got[w])
        scheduler.request(w, 0, done[w])
        for worker, batch in scheduler.replies():
            if batch:
                batches.append([i.index for i in batch])
                got[worker] += batches[-1]
                busy[worker] += sum(costs[i] for i in batches[-1])
                heapq.heappush(clock, (now + sum(costs[i] for i in batches[-1]), worker))
    assert scheduler.finished
    return [busy[w] for w in ranks], batches, got


def test_dynamic_schedule_balances_what_static_does_not(edge_and_zone, tmp_path):
    """Each schedule is judged by what it controls (which worker gets which windows, in what batches and order),
    not by wall-clock busy time on a shared machine: that figure is ``make bench``'s (``worker_busy_imbalance``)."""
    runs = {}
    for schedule in ("static", "dynamic"):
        out, report = tmp_path / f"{schedule}.tif", tmp_path / f"{schedule}.json"
        result = run_mpi_s2(["compose", *edge_and_zone, "-o", str(out), "-q", "--schedule", schedule,
                             "--report", str(report)], ranks=3, timeout=300)
        assert result.returncode == 0, result.stderr
        runs[schedule] = (read_array(out), json.loads(report.read_text()))
    (static_px, static_run), (dynamic_px, dynamic_run) = runs["static"], runs["dynamic"]
    assert np.array_equal(static_px, dynamic_px)
    assert [i["reprojected"] for i in dynamic_run["inputs"]] == [False, False, True]
    # the windows: 1024 px (4 x the 256 blocks) over the 2048 x 4096 mosaic, row-major
    height, width = static_px.shape[1:]
    assert (width, height) == (2048, 4096)
    windows = [(r, c) for r in range(0, height, 1024) for c in range(0, width, 1024)]
    assert static_run["windows"] == dynamic_run["windows"] == len(windows) == 8
    for run in (static_run, dynamic_run):
        workers = sorted((r for r in run["ranks"] if r["role"] == "worker"), key=lambda r: r["rank"])
        assert [r["rank"] for r in workers] == [1, 2]
        assert all(r["cpu_s"] > 0 and r["host"] for r in workers)
        assert sum(r["windows"] for r in workers) == run["windows"]
        for source in run["inputs"]:
            assert source["blocks"]["decoded"] == source["blocks"]["distinct"] == source["blocks"]["total"]
    # static: fixed contiguous halves of each phase, whatever the load, rank 1 first
    workers = sorted((r for r in static_run["ranks"] if r["role"] == "worker"), key=lambda r: r["rank"])
    assert [r["windows"] for r in workers] == [4, 4]
    units = static_run["stage_units"]
    assert [r["stage_units"] for r in workers] == [-(-units // 2), units // 2]
    # dynamic: both workers got windows (a first batch each)
    assert all(r["windows"] >= 1 for r in dynamic_run["ranks"] if r["role"] == "worker")

    # The same windows played against the pure Scheduler, each costing its valid pixels (the work the inputs
    # hold there; 5 % fixed cost per window): the orbit-edge windows are cheap, the full and reprojected dear.
    alpha = static_px[3] > 0
    costs = [0.05 + alpha[r:r + 1024, c:c + 1024].mean() for r, c in windows]
    assert min(costs[:4]) < 0.5 < max(costs[4:])
    static_busy, static_batches, static_got = simulate("static", costs, 2)
    dynamic_busy, dynamic_batches, dynamic_got = simulate("dynamic", costs, 2)
    imbalance = [max(b) / (sum(b) / len(b)) for b in (static_busy, dynamic_busy)]
    assert imbalance[0] > 1.25 and imbalance[1] < 1.2, imbalance
    # static: one contiguous share per worker, in order; dynamic: contiguous row-major batches, at most MAX_BATCH,
    # shrinking as the work runs out, every window once
    assert static_got == {1: [0, 1, 2, 3], 2: [4, 5, 6, 7]}
    assert [i for b in dynamic_batches for i in b] == list(range(len(windows)))
    sizes = [len(b) for b in dynamic_batches]
    assert all(1 <= n <= MAX_BATCH for n in sizes) and sizes == sorted(sizes, reverse=True) and sizes[-1] == 1


@pytest.mark.parametrize("window", [(0, 0, 64, 64), (3, 5, 61, 57), (1, 1, 1, 1), (100, 37, 28, 91)])
def test_a_20m_scl_read_on_its_own_grid_equals_its_pixels_repeated_2x2(tmp_path, window):
    """The SCL of a 10 m band set, read on its own 20 m grid and repeated 2 x 2 by numpy (mask_factor 2), equals
    the SCL's pixels repeated with np.repeat, for windows on and off the 2-pixel grid."""
    from osgeo import gdal

    from mpi_s2.inputs.bands import Grid, TileReader, inspect_mask
    from mpi_s2.planning.mosaic import mask_factor
    from mpi_s2.windows import Window

    gt10 = (500000.0, 10.0, 0.0, 5300000.0, 0.0, -10.0)
    rng = np.random.default_rng(3)
    scl = rng.integers(0, 12, (64, 64), dtype=np.uint8)
    paths = {}
    for name, size, gt, data in (("b", 128, gt10, None), ("scl", 64, (gt10[0], 20.0, 0.0, gt10[3], 0.0, -20.0), scl)):
        path = str(tmp_path / f"{name}.tif")
        ds = gdal.GetDriverByName("GTiff").Create(path, size, size, 1, gdal.GDT_UInt16 if data is None else
                                                  gdal.GDT_Byte)
        ds.SetGeoTransform(gt)
        ds.SetProjection("EPSG:32632")
        if data is not None:
            ds.GetRasterBand(1).WriteArray(data)
        ds = None
        paths[name] = path
    mask_grid = inspect_mask(paths["scl"]).grid
    assert mask_factor(Grid(128, 128, gt10, mask_grid.crs_wkt), mask_grid) == 2
    assert mask_factor(Grid(128, 128, (gt10[0] + 10, *gt10[1:]), mask_grid.crs_wkt), mask_grid) == 0  # shifted
    reader = TileReader((paths["b"],) * 3, (paths["b"],) * 3, paths["scl"], paths["scl"], mask_factor=2)
    w = Window(*window)
    out = np.empty(w.shape, dtype=np.uint8)
    reader.read_mask(w, out)
    expected = np.repeat(np.repeat(scl, 2, axis=0), 2, axis=1)[w.row_off:w.row_off + w.height,
                                                               w.col_off:w.col_off + w.width]
    assert np.array_equal(out, expected)
