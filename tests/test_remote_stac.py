"""STAC items whose COGs are read over HTTP from nginx (and S3 from moto) on 127.0.0.1: the local pixels, every
source tile fetched once, retries, and the errors of bad remote inputs.

The servers are tests/servers.py's: Debian's nginx with its access log (method, path, status, bytes, Range), a
fault-injecting proxy of the tests' own in front of it, and moto's S3 server with signed requests.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from conftest import REAL_DATA, error_lines, require, run_mpi_s2
from servers import NGINX, FaultProxy, Nginx, S3Server

COG_DIR = REAL_DATA / "l2a-cog-T29RKH"
ITEM = COG_DIR / "S2A_29RKH_20200219_0_L2A.json"
ROLES = {"red": "B04", "green": "B03", "blue": "B02", "scl": "SCL"}
FAST_RETRIES = {"GDAL_HTTP_RETRY_DELAY": "0.05"}  # the user's own variable wins over mpi_s2's 1 s default
EVERY_WINDOW = {"MPI_S2_COMMIT_INTERVAL": "0"}  # journal each window at once


@pytest.fixture(scope="module")
def real_item() -> dict:
    require(ITEM.is_file(), f"the real Earth Search item {ITEM}",
            "put the project's shared/ beside the checkout, or set MPI_S2_REAL_DATA=DIR")
    require(os.access(NGINX, os.X_OK), f"nginx ({NGINX})", "apt-get install nginx (make test installs it)")
    return json.loads(ITEM.read_text())


@pytest.fixture(scope="module")
def nginx(real_item, tmp_path_factory):
    with Nginx(COG_DIR, tmp_path_factory.mktemp("nginx")) as server:
        yield server


def item_at(real_item: dict, href, path: Path) -> str:
    """The real item with its band assets at ``href(band)``, written to ``path``."""
    item = copy.deepcopy(real_item)
    for role, band in ROLES.items():
        item["assets"][role]["href"] = href(band)
    path.write_text(json.dumps(item))
    return str(path)


@pytest.fixture(scope="module")
def local_pixels(real_item, tmp_path_factory) -> np.ndarray:
    """The same bands composed from the local files (--cloud-mask with their SCL)."""
    out = tmp_path_factory.mktemp("local") / "local.tif"
    bands = [f"--{role}={COG_DIR / band}.tif" for role, band in ROLES.items()]
    result = run_mpi_s2(["compose", *bands, "-o", str(out), "-q"], ranks=2)
    assert result.returncode == 0, result.stderr
    return gdal.Open(str(out)).ReadAsArray()


def tiles(path: Path) -> list[tuple[int, int]]:
    """(offset, size) of every full-resolution tile of a GeoTIFF, from its TIFF tags (as GDAL reports them)."""
    dataset = gdal.Open(str(path))
    band = dataset.GetRasterBand(1)
    bx, by = band.GetBlockSize()
    return [(int(band.GetMetadataItem(f"BLOCK_OFFSET_{x}_{y}", "TIFF")),
             int(band.GetMetadataItem(f"BLOCK_SIZE_{x}_{y}", "TIFF")))
            for y in range(-(-dataset.RasterYSize // by)) for x in range(-(-dataset.RasterXSize // bx))]


def byte_range(header: str | None, sent: int) -> tuple[int, int]:
    match = re.fullmatch(r"bytes=(\d+)-(\d+)", header or "")
    assert match, f"a GET without a single byte range: {header!r}"
    start = int(match.group(1))
    return start, start + sent


def test_the_real_item_over_nginx_gives_the_local_pixels_and_fetches_each_tile_once(
        real_item, nginx, local_pixels, tmp_path):
    item = item_at(real_item, lambda band: nginx.url(f"{band}.tif"), tmp_path / "item.json")
    out = tmp_path / "remote.tif"
    nginx.clear_log()
    result = run_mpi_s2(["compose", "--stac", item, "--cloud-mask", "-o", str(out), "-q"], ranks=3)
    assert result.returncode == 0, result.stderr
    assert np.array_equal(gdal.Open(str(out)).ReadAsArray(), local_pixels)

    requests = nginx.requests()
    assert {r.status for r in requests} <= {200, 206}
    header_bytes = 32768  # mpi_s2's GDAL_INGESTED_BYTES_AT_OPEN: what one open of a file reads first
    for band in ROLES.values():
        gets = [byte_range(r.range, r.bytes_sent) for r in requests if r.path == f"/{band}.tif" and r.method == "GET"]
        opens = [g for g in gets if g[0] == 0]
        assert 1 <= len(opens) <= 3  # the planner and each worker that reads it open it once
        data = [g for g in gets if g[0] != 0]
        needed = [t for t in tiles(COG_DIR / f"{band}.tif") if t[0] >= header_bytes or band == "SCL"]
        # Every tile arrives. Beyond that, GDAL reads whole 16 kB chunks (CPL_VSIL_CURL_CHUNK_SIZE) and reads
        # through a small tile lying between two it needs: the chunk a tile shares with its neighbour, or that
        # small tile, may also reach the rank reading the neighbour. The bytes below bound that excess.
        for offset, size in needed:
            fetched = sum(max(0, min(end, offset + size) - max(start, offset)) for start, end in data or opens[:1])
            assert fetched >= size, (band, offset, size, fetched, gets)
        if band != "SCL":  # (the SCL, 8 kB, arrives whole with each open)
            assert len(data) < len(needed)  # consecutive tiles are merged into one request (in 16 kB chunks)
            tile_bytes = sum(size for _, size in needed)
            sent = sum(end - start for start, end in data)
            assert sent <= 1.1 * tile_bytes, (band, sent, tile_bytes)
            assert sum(end - start for start, end in opens) <= len(opens) * header_bytes


def compose_through(proxy: FaultProxy, real_item: dict, tmp_path: Path) -> Path:
    """Compose the real item with ``--cloud-mask`` on 3 ranks, its COGs read through ``proxy``; the output."""
    item = item_at(real_item, lambda band: proxy.url(f"{band}.tif"), tmp_path / "item.json")
    out = tmp_path / "remote.tif"
    result = run_mpi_s2(["compose", "--stac", item, "--cloud-mask", "-o", str(out), "-q"], ranks=3, env=FAST_RETRIES)
    assert result.returncode == 0, result.stderr
    return out


def test_a_third_of_requests_failing_still_gives_the_exact_pixels(real_item, nginx, local_pixels, tmp_path):
    with FaultProxy(nginx.url(), fail_fraction=0.3, seed=19) as proxy:
        out = compose_through(proxy, real_item, tmp_path)
        assert proxy.faults >= 5, (proxy.faults, proxy.requests)
    assert np.array_equal(gdal.Open(str(out)).ReadAsArray(), local_pixels)


def test_a_missing_file_stops_the_job_at_planning_naming_its_url(real_item, nginx, tmp_path):
    item = item_at(real_item, lambda band: nginx.url(f"missing-{band}.tif" if band == "B03" else f"{band}.tif"),
                   tmp_path / "item.json")
    out = tmp_path / "out.tif"
    result = run_mpi_s2(["compose", "--stac", item, "-o", str(out)], ranks=3)
    assert result.returncode == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"mpi_s2: error: /vsicurl/{nginx.url('missing-B03.tif')}: "), lines
    assert "404" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["item.json"]  # no output, no debris


def test_a_source_failing_for_good_mid_run_is_one_line_and_resume_finishes(real_item, nginx, local_pixels,
                                                                          tmp_path):
    out = tmp_path / "remote.tif"
    # 9 windows of 512 (the COGs' tiles); B02 answers its first 12 requests (the opens and some tiles), then 503
    with FaultProxy(nginx.url(), fail_paths={"/B02.tif"}, fail_after=12) as proxy:
        item = item_at(real_item, lambda band: proxy.url(f"{band}.tif"), tmp_path / "item.json")
        args = ["compose", "--stac", item, "--cloud-mask", "-o", str(out), "--window", "512", "-q"]
        failed = run_mpi_s2(args, ranks=3, env={**FAST_RETRIES, **EVERY_WINDOW})
        assert failed.returncode != 0
        lines = error_lines(failed.stderr)
        assert len(lines) == 1 and proxy.url("B02.tif") in lines[0], failed.stderr
        assert not out.exists()
        assert (tmp_path / ".remote.tif.partial.journal").exists(), sorted(p.name for p in tmp_path.iterdir())
        assert "the partial run is kept beside" in failed.stderr
        proxy.fail_paths = set()
        resumed = run_mpi_s2([*args[:-1], "--resume", "--report", str(tmp_path / "r.json")], ranks=3,
                             env=FAST_RETRIES)
    assert resumed.returncode == 0, resumed.stderr
    assert np.array_equal(gdal.Open(str(out)).ReadAsArray(), local_pixels)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["windows_reused"] > 0 and report["windows_reused"] + report["windows_computed"] == 9, report


def test_s3_hrefs_on_an_s3_endpoint_with_signed_requests(real_item, local_pixels, tmp_path):
    with S3Server() as s3:
        s3.create_bucket("sentinel-cogs")
        for band in ROLES.values():
            s3.upload("sentinel-cogs", f"29/R/KH/{band}.tif", COG_DIR / f"{band}.tif")
        item = item_at(real_item, lambda band: f"s3://sentinel-cogs/29/R/KH/{band}.tif", tmp_path / "item.json")
        out = tmp_path / "s3.tif"
        result = run_mpi_s2(["compose", "--stac", item, "--cloud-mask", "-o", str(out), "-q"], ranks=3,
                            env=s3.gdal_env())
        assert result.returncode == 0, result.stderr
        assert np.array_equal(gdal.Open(str(out)).ReadAsArray(), local_pixels)
        denied = run_mpi_s2(["compose", "--stac", item, "-o", str(tmp_path / "denied.tif")], ranks=2,
                            env=s3.gdal_env(wrong_secret=True))
    assert denied.returncode == 2
    lines = error_lines(denied.stderr)
    assert len(lines) == 1 and lines[0].startswith("mpi_s2: error: /vsis3/sentinel-cogs/29/R/KH/B04.tif: "), lines


@pytest.mark.parametrize("case", ["not-stac", "no-assets", "other-grids"])
def test_bad_catalogue_input_is_one_line(real_item, tmp_path, case):
    path = tmp_path / "input.json"
    if case == "not-stac":
        path.write_text(json.dumps({"type": "Topology", "objects": {}}))
        expected = f"{path}: not a STAC item, item collection or catalog (its type is 'Topology')"
    elif case == "no-assets":
        item = copy.deepcopy(real_item)
        del item["assets"]["green"]
        path.write_text(json.dumps(item))
        expected = f"item {item['id']} ({path}): has no green asset: looked for green or B03"
    else:  # green at the SCL's 200 m grid
        item_at(real_item, lambda band: str(COG_DIR / ("SCL" if band == "B03" else band)) + ".tif", path)
        expected = f"{COG_DIR / 'SCL.tif'}: "
    out = tmp_path / "out.tif"
    result = run_mpi_s2(["compose", "--stac", str(path), "-o", str(out)], ranks=2)
    assert result.returncode == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"mpi_s2: error: {expected}"), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.json"]


@pytest.fixture(scope="module")
def mosaic_series(tmp_path_factory):
    """A 2 x 2 mosaic of tiles x 3 dates of synthetic L2A products (baselines 02.14 and 05.09 in turn), and the
    same observations as COGs with one STAC item each (half with raster:bands, half with the baseline only)."""
    from mpi_s2.inputs.products import open_product
    from mpi_s2.tools.synth import SeriesOptions, synthesize_series

    root = tmp_path_factory.mktemp("mosaic-series")
    products, items = [], []
    size = 256
    for tile, (dx, dy) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
        origin = (399960.0 + dx * size * 10, 5300040.0 - dy * size * 10)
        series = synthesize_series(str(root / f"products-{tile}"), SeriesOptions(
            dates=3, size=size, jp2_block=128, origin=origin, seed=tile + 3, start=f"2023060{tile + 1}T102559"))
        for product_path in series.products:
            product = open_product(product_path)
            md = product.metadata
            name = f"t{tile}-{md.sensing_time[:10]}"
            files = dict(zip(("red", "green", "blue"), product.rgb_files(10), strict=True))
            files["scl"] = product.scl_file(20)
            assets = {}
            for role, source in files.items():
                cog = root / "cogs" / name / f"{role}.tif"
                cog.parent.mkdir(parents=True, exist_ok=True)
                gdal.Translate(str(cog), source, format="COG", creationOptions=["BLOCKSIZE=128", "COMPRESS=DEFLATE"])
                assets[role] = {"href": f"{name}/{role}.tif", "type": "image/tiff; application=geotiff"}
                if role != "scl" and len(items) % 2 == 0:
                    offset = -0.1 if md.baseline >= "04.00" else 0.0
                    assets[role]["raster:bands"] = [{"scale": 0.0001, "offset": offset}]
            items.append({"type": "Feature", "stac_version": "1.0.0", "id": name, "geometry": None,
                          "properties": {"datetime": md.sensing_time, "eo:cloud_cover": md.cloud_cover,
                                         "s2:processing_baseline": md.baseline},
                          "links": [], "assets": assets})
            products.append(product_path)
    return products, items[::-1], root / "cogs"  # the items in another order than the products


@pytest.mark.parametrize("composite", ["median", "first"])
def test_an_item_collection_of_a_2x2_mosaic_of_3_dates_composes_as_the_local_products(mosaic_series, tmp_path,
                                                                                       composite):
    products, items, cogs = mosaic_series
    args = ["--cloud-mask", "--composite", composite, "--order", "cloud-cover", "-q"]
    local = tmp_path / "local.tif"
    result = run_mpi_s2(["compose", *products, *args, "-o", str(local)], ranks=3)
    assert result.returncode == 0, result.stderr
    with Nginx(cogs, tmp_path / "nginx") as server:
        collection = tmp_path / "items.json"  # relative hrefs: resolved against the collection's URL
        (cogs / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": items}))
        remote = tmp_path / "remote.tif"
        result = run_mpi_s2(["compose", "--stac", server.url("items.json"), *args, "-o", str(remote),
                             "--report", str(tmp_path / "r.json")], ranks=3)
        assert result.returncode == 0, result.stderr
        del collection
    assert np.array_equal(gdal.Open(str(remote)).ReadAsArray(), gdal.Open(str(local)).ReadAsArray())
    assert gdal.Open(str(remote)).GetGeoTransform() == gdal.Open(str(local)).GetGeoTransform()
    notes = {i["input"]: i["radiometry_note"] for i in json.loads((tmp_path / "r.json").read_text())["inputs"]}
    assert len(notes) == 12 and sum("from raster:bands" in n for n in notes.values()) == 6
    assert all("offsets -1000/-1000/-1000" in n or "offsets 0/0/0" in n for n in notes.values())


def test_slow_answers_and_dropped_connections_still_give_the_exact_pixels(real_item, nginx, local_pixels,
                                                                          tmp_path):
    # every answer 20 ms late, every 4th connection closed without an answer (libcurl resends on a new one)
    with FaultProxy(nginx.url(), delay=0.02, drop_every=4) as proxy:
        out = compose_through(proxy, real_item, tmp_path)
        assert proxy.dropped >= 3, (proxy.dropped, proxy.requests)
    assert np.array_equal(gdal.Open(str(out)).ReadAsArray(), local_pixels)


def test_offset_option_overrides_the_items_offsets(real_item, tmp_path):
    """--offset wins over raster:bands (the item says 0): the same pixels as the band files with --offset."""
    item = item_at(real_item, lambda band: str(COG_DIR / f"{band}.tif"), tmp_path / "item.json")
    bands = [f"--{role}={COG_DIR / band}.tif" for role, band in ROLES.items() if role != "scl"]
    outputs = {}
    for name, inputs in (("stac", ["--stac", item]), ("bands", bands)):
        outputs[name] = tmp_path / f"{name}.tif"
        result = run_mpi_s2(["compose", *inputs, "--offset", "-1000", "-o", str(outputs[name]), "--report",
                             str(tmp_path / f"{name}.json")], ranks=2)
        assert result.returncode == 0, result.stderr
    assert np.array_equal(gdal.Open(str(outputs["stac"])).ReadAsArray(), gdal.Open(str(outputs["bands"])).ReadAsArray())
    note = json.loads((tmp_path / "stac.json").read_text())["inputs"][0]["radiometry_note"]
    assert note == "offsets -1000/-1000/-1000 (B04/B03/B02), scale 10000, from raster:bands, overridden by options"


def test_the_planner_opens_remote_files_several_at_a_time(real_item, nginx):
    """Rank 0 inspects remote band files up to OPENS_AT_ONCE at a time (a season is thousands of files, each a
    round trip or two away): 4 items x 3 bands behind a proxy answering 0.2 s late are in flight together, and
    each set's grid is the local file's, read by GDAL directly."""
    from mpi_s2.inputs.bands import inspect_band_sets

    local = gdal.Open(str(COG_DIR / "B04.tif"))
    expected = (local.RasterXSize, local.RasterYSize, tuple(local.GetGeoTransform()))
    with FaultProxy(nginx.url(), delay=0.2) as proxy:
        sets = [tuple(f"/vsicurl/{proxy.url(f'{band}.tif')}?copy={k}" for band in ("B04", "B03", "B02"))
                for k in range(4)]
        inspected = inspect_band_sets(sets)  # type: ignore[arg-type]
        assert proxy.most_at_once >= 4, proxy.most_at_once
    assert [(g.width, g.height, g.geotransform) for g, _ in inspected] == [expected] * 4
    assert [[info.path for info in infos] for _, infos in inspected] == [list(s) for s in sets]


def test_the_planners_first_error_is_the_one_a_loop_over_the_items_meets(real_item, tmp_path):
    """Opened all at once, the sets still fail as a loop over them would: the first set's grid mismatch is
    reported, not the second set's missing file (whose 404 may well arrive first)."""
    from mpi_s2.errors import InputError
    from mpi_s2.inputs.bands import inspect_band_sets

    root = tmp_path / "root"
    root.mkdir()
    for band in ("B04", "B03", "B02"):
        (root / f"{band}.tif").symlink_to(COG_DIR / f"{band}.tif")
    gdal.Translate(str(root / "small.tif"), str(COG_DIR / "B03.tif"), width=100, height=100)
    with Nginx(root, tmp_path / "nginx") as server:
        url = lambda name: f"/vsicurl/{server.url(name)}"  # noqa: E731
        sets = [(url("B04.tif"), url("small.tif"), url("B02.tif")),
                (url("missing.tif"), url("B03.tif"), url("B02.tif"))]
        with pytest.raises(InputError) as error:
            inspect_band_sets(sets)  # type: ignore[arg-type]
    assert str(error.value).startswith(f"{url('small.tif')}: green band is 100 x 100 pixels"), error.value


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_a_remote_open_whose_new_connection_is_dropped_is_tried_again(nginx, reset):
    """libcurl resends a request only when a kept-alive connection is dropped, and GDAL 3.6 retries no drop; the
    planner's opens each begin on a new connection (one per thread), so open_dataset tries a dropped open again,
    GDAL_HTTP_MAX_RETRY times: two drops are survived, and with drops for good the error names the file after 1 +
    3 tries. A 404 is not tried again."""
    from mpi_s2.errors import InputError
    from mpi_s2.inputs.bands import open_dataset

    options = {"GDAL_HTTP_MAX_RETRY": "3", "GDAL_HTTP_RETRY_DELAY": "0.01", "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
    previous = {key: gdal.GetConfigOption(key) for key in options}
    for key, value in options.items():
        gdal.SetConfigOption(key, value)
    local = gdal.Open(str(COG_DIR / "B04.tif"))  # (held: a band outliving its dataset crashes GDAL)
    expected = local.GetRasterBand(1).ReadAsArray()
    try:
        with FaultProxy(nginx.url(), drop_first=2, drop_reset=reset) as proxy:
            ds = open_dataset(f"/vsicurl/{proxy.url('B04.tif')}")
            np.testing.assert_array_equal(ds.GetRasterBand(1).ReadAsArray(), expected)
            assert proxy.dropped == 2
        with FaultProxy(nginx.url(), drop_first=100, drop_reset=reset) as proxy:
            path = f"/vsicurl/{proxy.url('B03.tif')}"
            with pytest.raises(InputError) as error:
                open_dataset(path)
            assert proxy.dropped == 4
        reason = "Connection reset by peer" if reset else "Empty reply from server"
        assert str(error.value).startswith(f"{path}: cannot be read as a raster (") and reason in str(error.value)
        with FaultProxy(nginx.url()) as proxy:
            with pytest.raises(InputError, match="404"):
                open_dataset(f"/vsicurl/{proxy.url('missing.tif')}")
            assert proxy.requests == 1
    finally:
        for key, value in previous.items():
            gdal.SetConfigOption(key, value)
        gdal.VSICurlClearCache()
