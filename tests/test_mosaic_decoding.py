"""Mosaics at the decoding floor: every source block decoded once, and the dynamic schedule balancing the load.

The 2 x 2 mosaic is Sentinel-2's situation at small scale: tiles of 1200 px whose origins are 1000 px apart,
JPEG 2000 blocks of 256, so the neighbours' blocks start 232 px off the first tile's (1000 mod 256), as real
neighbours' 1024 blocks start 784 px off. OpenJPEG itself says when it decodes a tile (``CPL_DEBUG``): the
count of its messages is the independent evidence that no block is decoded twice.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal
from test_mosaic import _corner_in_zone_33, expected_tile, paste

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


def test_dynamic_schedule_balances_what_static_does_not(edge_and_zone, tmp_path):
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
    # static: the first worker's contiguous share is the orbit edge's tile, mostly nodata (cheap to decode);
    # the second one's is the full tile and the reprojected one
    assert static_run["worker_busy_imbalance"] > 1.25
    assert dynamic_run["worker_busy_imbalance"] < static_run["worker_busy_imbalance"]
    assert dynamic_run["worker_busy_imbalance"] < 1.2
    for run in (static_run, dynamic_run):
        workers = [r for r in run["ranks"] if r["role"] == "worker"]
        assert all(r["cpu_s"] > 0 and r["host"] for r in workers)
        assert sum(r["windows"] for r in workers) == run["windows"]
        for source in run["inputs"]:
            assert source["blocks"]["decoded"] == source["blocks"]["distinct"] == source["blocks"]["total"]
