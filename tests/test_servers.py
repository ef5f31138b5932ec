"""The remote-input tests' servers (tests/servers.py) work with GDAL: nginx over /vsicurl/ with its access log,
the fault-injecting proxy (503s, fixed failures, dropped connections, delays) and moto's S3 over /vsis3/ with
signatures checked. Each test takes a second or two."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from servers import NGINX, FaultProxy, Nginx, S3Server

gdal.UseExceptions()

SIZE, BLOCK, BANDS = 512, 128, 2
#: what every remote read here needs: no directory listing at open, only .tif fetched, no retries unless asked
BASE_OPTIONS = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif",
                "GDAL_HTTP_MAX_RETRY": "0", "GDAL_HTTP_TIMEOUT": "20"}
RETRIES = {"GDAL_HTTP_MAX_RETRY": "5", "GDAL_HTTP_RETRY_DELAY": "0.1"}


@contextmanager
def gdal_options(options: dict[str, str]) -> Iterator[None]:
    """GDAL configuration options set for the block (over BASE_OPTIONS), the previous values restored after;
    GDAL's /vsicurl/ caches (file sizes, content, existence) emptied before and after."""
    options = {**BASE_OPTIONS, **options}
    previous = {key: gdal.GetConfigOption(key) for key in options}
    gdal.VSICurlClearCache()
    for key, value in options.items():
        gdal.SetConfigOption(key, value)
    try:
        yield
    finally:
        for key, value in previous.items():
            gdal.SetConfigOption(key, value)
        gdal.VSICurlClearCache()


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(20240607).integers(0, 65536, (BANDS, SIZE, SIZE), dtype=np.uint16)


@pytest.fixture
def www(tmp_path: Path, pixels: np.ndarray) -> Path:
    """A folder with two identical tiled, DEFLATE-compressed GeoTIFFs a.tif and b.tif (16 tiles each)."""
    root = tmp_path / "www"
    root.mkdir()
    for name in ("a.tif", "b.tif"):
        ds = gdal.GetDriverByName("GTiff").Create(
            str(root / name), SIZE, SIZE, BANDS, gdal.GDT_UInt16,
            options=["TILED=YES", "COMPRESS=DEFLATE", f"BLOCKXSIZE={BLOCK}", f"BLOCKYSIZE={BLOCK}"])
        ds.SetGeoTransform([600000, 10, 0, 5000000, 0, -10])
        for band in range(BANDS):
            ds.GetRasterBand(band + 1).WriteArray(pixels[band])
        ds = None
    return root


@pytest.fixture
def nginx(www: Path, tmp_path: Path) -> Iterator[Nginx]:
    if not Path(NGINX).exists():
        pytest.fail(f"these tests need nginx at {NGINX}: apt-get install nginx-light (or nginx)", pytrace=False)
    with Nginx(www, tmp_path / "nginx") as server:
        yield server


def read_by_blocks(path: str) -> np.ndarray:
    """All pixels of ``path``, one block-sized window at a time (many small range requests, not one big one)."""
    ds = gdal.Open(path)
    out = np.zeros((ds.RasterCount, ds.RasterYSize, ds.RasterXSize), dtype=np.uint16)
    for y in range(0, ds.RasterYSize, BLOCK):
        for x in range(0, ds.RasterXSize, BLOCK):
            out[:, y:y + BLOCK, x:x + BLOCK] = ds.ReadAsArray(x, y, BLOCK, BLOCK)
    ds = None
    return out


def test_nginx_serves_ranges_and_logs_them(nginx: Nginx, www: Path, pixels: np.ndarray) -> None:
    local = gdal.Open(str(www / "a.tif")).ReadAsArray()
    np.testing.assert_array_equal(local, pixels)
    with gdal_options({}):
        remote = read_by_blocks("/vsicurl/" + nginx.url("a.tif"))
    np.testing.assert_array_equal(remote, local)

    requests = nginx.requests()
    assert requests, "nothing in nginx's access log"
    assert {r.path for r in requests} == {"/a.tif"}
    ranged = [r for r in requests if r.method == "GET"]
    assert ranged and all(r.range is not None and r.status == 206 for r in ranged), requests
    size = (www / "a.tif").stat().st_size
    covered = np.zeros(size, dtype=bool)
    for r in ranged:
        first, last = (int(v) for v in r.range.removeprefix("bytes=").split("-"))
        assert r.bytes_sent == min(last, size - 1) - first + 1, r
        covered[first:last + 1] = True
    assert covered.all(), "GDAL did not fetch the whole file by ranges"

    nginx.clear_log()
    assert nginx.requests() == []
    with urllib.request.urlopen(nginx.url("a.tif")) as response:
        assert response.headers["Content-Type"] == "image/tiff"
        assert response.headers["Accept-Ranges"] == "bytes"
    with pytest.raises(urllib.error.HTTPError) as listing:
        urllib.request.urlopen(nginx.url(""))
    assert listing.value.code in (403, 404)  # no directory listing
    assert [(r.method, r.path, r.status, r.range) for r in nginx.requests()] == [
        ("GET", "/a.tif", 200, None), ("GET", "/", listing.value.code, None)]


def children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (nginx's workers, for its master)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def test_nginx_stops_without_leftovers(www: Path, tmp_path: Path) -> None:
    with Nginx(www, tmp_path / "nginx") as server:
        master, port = server.process.pid, server.port
        workers = children(master)
        assert workers, "nginx runs without a worker process"
    assert server.process is None
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/a.tif", timeout=2)
    assert not [pid for pid in (master, *workers) if Path(f"/proc/{pid}").exists()]


def test_proxy_every_third_request_503_read_exact_with_retries(nginx: Nginx, pixels: np.ndarray) -> None:
    with FaultProxy(nginx.url(), fail_every=3) as proxy, gdal_options(RETRIES):
        remote = read_by_blocks("/vsicurl/" + proxy.url("a.tif"))
        assert proxy.faults > 0 and proxy.requests >= 3 * proxy.faults, (proxy.requests, proxy.faults)
    np.testing.assert_array_equal(remote, pixels)
    # upstream saw only the forwarded requests, with their Range headers
    assert len(nginx.requests()) == proxy.requests - proxy.faults


def test_proxy_random_fraction_is_seeded(nginx: Nginx, pixels: np.ndarray) -> None:
    counts = []
    for _ in range(2):
        with FaultProxy(nginx.url(), fail_fraction=0.3, seed=7) as proxy, gdal_options(RETRIES):
            np.testing.assert_array_equal(read_by_blocks("/vsicurl/" + proxy.url("a.tif")), pixels)
            counts.append((proxy.requests, proxy.faults))
    assert counts[0] == counts[1] and counts[0][1] > 0, counts


def test_proxy_failed_path_gives_http_503(nginx: Nginx, pixels: np.ndarray) -> None:
    with FaultProxy(nginx.url(), fail_paths={"b.tif"}) as proxy, gdal_options({}):
        np.testing.assert_array_equal(read_by_blocks("/vsicurl/" + proxy.url("a.tif")), pixels)
        with pytest.raises(RuntimeError, match="503"):
            gdal.Open("/vsicurl/" + proxy.url("b.tif"))
        assert proxy.faults == 1
        # fails for good, and for later requests only when asked: the first one (GDAL's HEAD) passes here
        proxy.fail_paths, proxy.fail_after = {"a.tif"}, 1
        gdal.VSICurlClearCache()
        with pytest.raises(RuntimeError):
            read_by_blocks("/vsicurl/" + proxy.url("a.tif"))
        assert proxy.faults >= 2


def test_proxy_dropped_connections(nginx: Nginx, pixels: np.ndarray) -> None:
    """A request whose kept-alive connection is closed without an answer is sent again on a fresh connection by
    libcurl itself; GDAL 3.6 does not retry a dropped connection ("Empty reply from server" or "Connection reset by
    peer") even with GDAL_HTTP_MAX_RETRY, so a drop on a fresh connection fails the read."""
    for reset in (False, True):
        with FaultProxy(nginx.url(), drop_every=3, drop_reset=reset) as proxy, gdal_options(RETRIES):
            np.testing.assert_array_equal(read_by_blocks("/vsicurl/" + proxy.url("a.tif")), pixels)
            assert proxy.dropped > 0 and proxy.dropped == proxy.faults
    with FaultProxy(nginx.url(), drop_every=1) as proxy, gdal_options(RETRIES):
        with pytest.raises(RuntimeError, match="Empty reply from server"):
            gdal.Open("/vsicurl/" + proxy.url("a.tif"))
    with FaultProxy(nginx.url(), drop_every=1, drop_reset=True) as proxy, gdal_options(RETRIES):
        with pytest.raises(RuntimeError, match="Connection reset by peer"):
            gdal.Open("/vsicurl/" + proxy.url("a.tif"))


def test_proxy_delay(nginx: Nginx) -> None:
    with FaultProxy(nginx.url(), delay=0.3) as proxy, gdal_options({}):
        start = time.monotonic()
        assert gdal.VSIStatL("/vsicurl/" + proxy.url("a.tif")) is not None
        assert time.monotonic() - start >= 0.3
        assert proxy.requests >= 1 and proxy.faults == 0


@pytest.fixture
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


def test_s3_reads_exact_pixels_with_signed_requests(s3: S3Server, www: Path, pixels: np.ndarray) -> None:
    s3.create_bucket("mpi-s2-tiles")
    s3.upload("mpi-s2-tiles", "T31TCJ/a.tif", www / "a.tif")
    with gdal_options(s3.gdal_env()):
        np.testing.assert_array_equal(read_by_blocks("/vsis3/mpi-s2-tiles/T31TCJ/a.tif"), pixels)
    with gdal_options(s3.gdal_env(wrong_secret=True)):
        with pytest.raises(RuntimeError, match="signature"):
            gdal.Open("/vsis3/mpi-s2-tiles/T31TCJ/a.tif")
    with gdal_options({**s3.gdal_env(), "AWS_NO_SIGN_REQUEST": "YES"}):
        with pytest.raises(RuntimeError):
            gdal.Open("/vsis3/mpi-s2-tiles/T31TCJ/a.tif")
