"""``--stac-search`` and ``mpi-s2 search``: a STAC API served as static JSON pages from 127.0.0.1, with paging.

The API is the tests' own: a landing page that conforms to item search, and search results in two pages linked
by ``next``. It answers every search with the same pages (a static API ignores the parameters), and records the
requests, so the tests check both what was asked and that the dates and cloud cover are applied to what comes back.
"""

from __future__ import annotations

import copy
import http.server
import json
import threading
import urllib.parse

import numpy as np
import pytest
from osgeo import gdal

from conftest import REAL_DATA, error_lines, require, run_mpi_s2

COG_DIR = REAL_DATA / "l2a-cog-T29RKH"
ITEM = COG_DIR / "S2A_29RKH_20200219_0_L2A.json"
#: (id suffix, datetime, cloud cover): two pages of items; the search below keeps b and d
ITEMS = [("a", "2020-01-20T11:34:25Z", 4.0), ("b", "2020-02-19T11:34:25Z", 4.05), ("c", "2020-03-10T11:34:25Z", 80.0),
         ("d", "2020-03-30T11:34:25Z", 35.0), ("e", "2020-04-19T11:34:25Z", 2.0)]


class StaticApi:
    """A STAC API of static pages: ``/`` (landing), ``/search`` (page 1), ``/search/2`` (page 2)."""

    def __init__(self, items: list[dict]):
        self.items = items
        self.requests: list[str] = []

    def __enter__(self) -> StaticApi:
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
                pass

            def do_GET(self):
                api.requests.append(self.path)
                body = api.page(urllib.parse.urlsplit(self.path).path)
                if body is None:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def page(self, path: str) -> dict | None:
        link = {"type": "application/geo+json", "method": "GET"}
        if path in ("", "/"):
            return {"type": "Catalog", "id": "static-api", "stac_version": "1.0.0", "description": "test API",
                    "conformsTo": ["https://api.stacspec.org/v1.0.0/core",
                                   "https://api.stacspec.org/v1.0.0/item-search"],
                    "links": [{"rel": "self", "href": self.url + "/"}, {"rel": "root", "href": self.url + "/"},
                              {"rel": "search", "href": self.url + "/search", **link}]}
        if path == "/search":
            return {"type": "FeatureCollection", "features": self.items[:3],
                    "links": [{"rel": "next", "href": self.url + "/search/2", **link}]}
        if path == "/search/2":
            return {"type": "FeatureCollection", "features": self.items[3:], "links": []}
        return None


@pytest.fixture(scope="module")
def local_items() -> list[dict]:
    """Variants of the real Earth Search item, their band assets pointing at the local COGs."""
    require(ITEM.is_file(), f"the real Earth Search item {ITEM}",
            "put the project's shared/ beside the checkout, or set MPI_S2_REAL_DATA=DIR")
    real = json.loads(ITEM.read_text())
    items = []
    for suffix, when, cloud in ITEMS:
        item = copy.deepcopy(real)
        item["id"] = f"{real['id']}-{suffix}"
        item["properties"].update({"datetime": when, "eo:cloud_cover": cloud})
        item["links"] = []
        for role, band in {"red": "B04", "green": "B03", "blue": "B02", "scl": "SCL"}.items():
            item["assets"][role]["href"] = (COG_DIR / f"{band}.tif").as_uri()  # an absolute href, as APIs give
        items.append(item)
    return items


SEARCH = ["--collection", "sentinel-2-l2a", "--bbox", "-11.3,24.8,-10.2,25.3", "--dates", "2020-02-01/2020-03-31",
          "--max-cloud-cover", "40"]


def test_search_follows_pages_and_saves_what_was_asked_for(local_items, tmp_path):
    saved = tmp_path / "items.json"
    with StaticApi(local_items) as api:
        result = run_mpi_s2(["search", api.url, *SEARCH, "--save-items", str(saved)])
    assert result.returncode == 0, result.stderr
    searches = [urllib.parse.urlsplit(r) for r in api.requests if r.startswith("/search")]
    assert [s.path for s in searches] == ["/search", "/search/2"]  # page 2 through the next link
    asked = urllib.parse.parse_qs(searches[0].query)
    assert asked["collections"] == ["sentinel-2-l2a"] and asked["bbox"] == ["-11.3,24.8,-10.2,25.3"]
    assert asked["datetime"][0].startswith("2020-02-01") and "2020-03-31" in asked["datetime"][0]
    # the static API returned all five: the dates and the cloud cover keep b (page 1) and d (page 2)
    document = json.loads(saved.read_text())
    assert document["type"] == "FeatureCollection"
    assert [f["id"] for f in document["features"]] == [f"{local_items[0]['id'][:-2]}-{s}" for s in "bd"]
    assert f"saved 2 items to {saved}" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["items.json"]  # no temporary file left


def test_compose_from_a_search_then_from_the_saved_items(local_items, tmp_path):
    local = tmp_path / "local.tif"
    bands = [f"--{role}={COG_DIR / band}.tif" for role, band in (("red", "B04"), ("green", "B03"), ("blue", "B02"))]
    assert run_mpi_s2(["compose", *bands, "-o", str(local), "-q"], ranks=2).returncode == 0
    searched, saved, again = tmp_path / "searched.tif", tmp_path / "items.json", tmp_path / "again.tif"
    with StaticApi(local_items) as api:
        result = run_mpi_s2(["compose", "--stac-search", api.url, *SEARCH, "--save-items", str(saved),
                             "--composite", "median", "-o", str(searched), "--report", str(tmp_path / "r.json")],
                            ranks=3)
    assert result.returncode == 0, result.stderr
    assert "--stac-search " + api.url + ": 2 items" in result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert [i["input"] for i in report["inputs"]] == [f"item {f['id']}" for f in
                                                       json.loads(saved.read_text())["features"]]
    # offline: the saved items alone, no API
    result = run_mpi_s2(["compose", "--stac", str(saved), "--composite", "median", "-o", str(again), "-q"], ranks=3)
    assert result.returncode == 0, result.stderr
    expected = gdal.Open(str(local)).ReadAsArray()
    for path in (searched, again):
        assert np.array_equal(gdal.Open(str(path)).ReadAsArray(), expected)  # two dates of the same pixels


def test_an_empty_search_is_one_line(local_items, tmp_path):
    out = tmp_path / "out.tif"
    with StaticApi(local_items) as api:
        result = run_mpi_s2(["compose", "--stac-search", api.url, *SEARCH[:4], "--dates", "2021-01-01/2021-12-31",
                             "-o", str(out)], ranks=2)
    assert result.returncode == 2, result.stderr
    assert error_lines(result.stderr) == [
        f"mpi_s2: error: --stac-search {api.url}: found no items (collection sentinel-2-l2a, bbox -11.3,24.8,-10.2,"
        f"25.3, dates 2021-01-01/2021-12-31)"]
    assert not list(tmp_path.iterdir())


def test_search_options_need_a_search(tmp_path):
    result = run_mpi_s2(["compose", "--stac", str(ITEM), "--bbox", "1,2,3,4", "-o", str(tmp_path / "o.tif")])
    assert result.returncode == 2
    assert error_lines(result.stderr) == ["mpi_s2: error: --bbox needs --stac-search URL"]


def test_an_unreachable_api_is_one_line(tmp_path):
    with StaticApi([]) as api:
        url = api.url
    result = run_mpi_s2(["search", url, "--collection", "x", "--save-items", str(tmp_path / "i.json")])
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"mpi_s2: error: --stac-search {url}: ") and "onnection" in lines[0]
    assert not list(tmp_path.iterdir())


def test_aoi_file_errors(tmp_path):
    from mpi_s2.errors import InputError
    from mpi_s2.inputs.area import read_aoi

    polygon = {"type": "Polygon", "coordinates": [[[8, 46], [9, 46], [9, 47], [8, 46]]]}
    (tmp_path / "f.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": polygon, "properties": {}}]}))
    assert read_aoi(str(tmp_path / "f.geojson")) == polygon
    (tmp_path / "p.geojson").write_text(json.dumps({"type": "Point", "coordinates": [8, 46]}))
    with pytest.raises(InputError, match=r"p.geojson: has no Polygon or MultiPolygon \(type 'Point'\)"):
        read_aoi(str(tmp_path / "p.geojson"))
    with pytest.raises(InputError, match="no such file"):
        read_aoi(str(tmp_path / "missing.geojson"))
