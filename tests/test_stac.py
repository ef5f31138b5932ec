"""STAC items as inputs (mpi_s2.inputs.stac): reading catalogues, assets, hrefs and radiometry, without MPI.

The items are the real Earth Search item of ../shared/data/s2-real/l2a-cog-T29RKH, and variants of it with the
properties of other baselines and catalogues; expected offsets are written from the formulas (DN offset = raster
offset / raster scale; -1000 from baseline 04.00 on), not taken from the code.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest

from mpi_s2.errors import InputError
from mpi_s2.inputs.stac import band_sets, items_from, parse_assets, processing_baseline, read_catalogue

from conftest import REAL_DATA, require

ITEM = "l2a-cog-T29RKH/S2A_29RKH_20200219_0_L2A.json"
RGB_SCL = {"red": "B04", "green": "B03", "blue": "B02", "scl": "SCL"}


@pytest.fixture(scope="module")
def real_item() -> dict:
    path = REAL_DATA / ITEM
    require(path.is_file(), f"the real Earth Search item {path}",
            "put the project's shared/ beside the checkout, or set MPI_S2_REAL_DATA=DIR")
    return json.loads(path.read_text())


def write_json(path: Path, document: dict) -> str:
    path.write_text(json.dumps(document))
    return str(path)


def variant(item: dict, *, properties: dict | None = None, drop: tuple[str, ...] = (), raster: tuple | None = None,
            item_id: str | None = None) -> dict:
    """``item`` with properties set (None deletes), without ``raster:bands`` when raster is (), or with
    (scale, offset) in every RGB asset's raster:bands."""
    copied = copy.deepcopy(item)
    if item_id:
        copied["id"] = item_id
    for key, value in (properties or {}).items():
        if value is None:
            copied["properties"].pop(key, None)
        else:
            copied["properties"][key] = value
    for key in drop:
        copied["assets"].pop(key)
    if raster is not None:
        for key in ("red", "green", "blue"):
            if raster == ():
                copied["assets"][key].pop("raster:bands", None)
            else:
                copied["assets"][key]["raster:bands"] = [{"scale": raster[0], "offset": raster[1]}]
    return copied


def one_band_set(tmp_path, document: dict, **kwargs):
    return band_sets(read_catalogue(write_json(tmp_path / "item.json", document)), **kwargs)[0]


def test_the_real_earth_search_item(real_item, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        bands = one_band_set(tmp_path, real_item, cloud_mask=True)
    prefix = "/vsicurl/https://sentinel-cogs.s3.us-west-2.amazonaws.com/sentinel-s2-l2a-cogs/29/R/KH/2020/2/" \
             "S2A_29RKH_20200219_0_L2A/"
    assert (bands.red, bands.green, bands.blue, bands.scl) == tuple(prefix + f"{b}.tif" for b in RGB_SCL.values())
    assert bands.date == "2020-02-19" and bands.sensing_time.startswith("2020-02-19T11:34:25")
    assert bands.cloud_cover == pytest.approx(4.051854)
    # raster:bands scale 0.0001, offset 0: DN offset 0 / 0.0001 = 0, scale 1 / 0.0001 = 10000; baseline 02.14 agrees
    assert bands.radiometry == ((0.0, 10000.0),) * 3 and bands.radiometry_from == "raster:bands"
    assert bands.label == "item S2A_29RKH_20200219_0_L2A" and not caplog.records


@pytest.mark.parametrize("properties, item_id, offset, source", [
    ({"s2:processing_baseline": "05.09"}, None, -1000.0, "processing baseline 05.09"),
    ({"s2:processing_baseline": "04.00"}, None, -1000.0, "processing baseline 04.00"),
    ({"s2:processing_baseline": "03.01"}, None, 0.0, "processing baseline 03.01"),
    # no property: the baseline of the product id (s2:product_uri, then the item id)
    ({"s2:processing_baseline": None,
      "s2:product_uri": "S2B_MSIL2A_20230601T102559_N0509_R108_T32TMS_20230601T141214.SAFE"}, None, -1000.0,
     "processing baseline 05.09"),
    ({"s2:processing_baseline": None, "s2:product_uri": None}, "S2A_MSIL2A_20200219T112111_N0214_R037_T29RKH",
     0.0, "processing baseline 02.14"),
])
def test_offsets_from_the_baseline_without_raster_bands(real_item, tmp_path, properties, item_id, offset, source):
    bands = one_band_set(tmp_path, variant(real_item, properties=properties, raster=(), item_id=item_id))
    assert bands.radiometry == ((offset, 10000.0),) * 3
    # the real item says earthsearch:boa_offset_applied false: it agrees with the baseline
    assert bands.radiometry_from == f"{source}, earthsearch:boa_offset_applied false"


def test_offsets_from_raster_bands_of_a_new_baseline(real_item, tmp_path, caplog):
    # Earth Search v1, baseline 05.09: scale 0.0001, offset -0.1 -> DN offset -0.1 / 0.0001 = -1000
    item = variant(real_item, properties={"s2:processing_baseline": "05.09", "earthsearch:boa_offset_applied": False},
                   raster=(0.0001, -0.1))
    with caplog.at_level(logging.WARNING):
        bands = one_band_set(tmp_path, item)
    assert bands.radiometry == ((-1000.0, 10000.0),) * 3 and bands.radiometry_from == "raster:bands"
    assert not caplog.records


def test_contradicting_properties_warn_once_and_raster_bands_wins(real_item, tmp_path, caplog):
    # Earth Search issues 66/71: boa_offset_applied true (nothing to add) on an item whose raster:bands says -0.1
    item = variant(real_item, properties={"s2:processing_baseline": "05.10", "earthsearch:boa_offset_applied": True},
                   raster=(0.0001, -0.1))
    with caplog.at_level(logging.WARNING):
        bands = one_band_set(tmp_path, item)
    assert bands.radiometry == ((-1000.0, 10000.0),) * 3
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("item S2A_29RKH_20200219_0_L2A")
    assert "contradict" in lines[0] and "earthsearch:boa_offset_applied true means offset 0" in lines[0]
    assert "raster:bands means offset -1000" in lines[0] and "following raster:bands: offset -1000" in lines[0]


def test_an_item_telling_no_offset_is_one_error(real_item, tmp_path):
    item = variant(real_item, properties={"s2:processing_baseline": None, "s2:product_uri": None}, raster=())
    pattern = r"^item S2A_29RKH_20200219_0_L2A \(.*item.json\): neither raster:bands .* give --offset"
    with pytest.raises(InputError, match=pattern):
        one_band_set(tmp_path, item)


def test_planetary_computer_asset_names(real_item, tmp_path):
    item = copy.deepcopy(real_item)
    for role, key in RGB_SCL.items():
        item["assets"][key] = item["assets"].pop(role)
    bands = one_band_set(tmp_path, item, cloud_mask=True)
    assert bands.red.endswith("/B04.tif") and bands.scl.endswith("/SCL.tif")


def test_assets_option_and_missing_assets(real_item, tmp_path):
    item = variant(real_item, drop=("red",))
    with pytest.raises(InputError) as missing:
        one_band_set(tmp_path, item)
    assert str(missing.value).startswith(
        f"item S2A_29RKH_20200219_0_L2A ({tmp_path / 'item.json'}): has no red asset: looked for red or B04, it has")
    assert str(missing.value).endswith("; name them with --assets red=KEY,green=KEY,blue=KEY[,scl=KEY]")
    # any catalogue: the option names the keys (here the JPEG 2000 copies, s3:// hrefs -> /vsis3/)
    bands = one_band_set(tmp_path, item, assets=parse_assets("red=red-jp2,green=green-jp2,blue=blue-jp2"))
    assert bands.red == "/vsis3/sentinel-s2-l2a/tiles/29/R/KH/2020/2/19/0/B04.jp2"
    with pytest.raises(InputError, match="has no scl asset .--cloud-mask needs it.: looked for nope"):
        one_band_set(tmp_path, real_item, cloud_mask=True,
                     assets=parse_assets("red=red,green=green,blue=blue,scl=nope"))


@pytest.mark.parametrize("text, message", [
    ("red=a,green=b", "names no asset for blue"),
    ("red=a,green=b,blue=c,nir=d", "got 'nir=d'"),
    ("red=a,red=b,green=c,blue=d", "red is given twice"),
])
def test_bad_assets_option(text, message):
    with pytest.raises(InputError, match=f"^--assets {text}: .*{message}"):
        parse_assets(text)


def test_relative_hrefs_resolve_against_the_item(real_item, tmp_path):
    item = copy.deepcopy(real_item)
    item["links"] = [link for link in item["links"] if link["rel"] not in ("self", "canonical")]
    for role, band in RGB_SCL.items():
        item["assets"][role]["href"] = f"./{band}.tif"
    (tmp_path / "items").mkdir()
    bands = band_sets(read_catalogue(write_json(tmp_path / "items" / "item.json", item)))[0]
    assert bands.red == str(tmp_path / "items" / "B04.tif")
    # read from a file, an item's location is that file (pystac's rule), whatever its self link says; in an
    # ItemCollection, its self link
    item["links"].append({"rel": "self", "href": "https://example.test/cat/29RKH/item.json"})
    bands = band_sets(read_catalogue(write_json(tmp_path / "items.json",
                                                {"type": "FeatureCollection", "features": [item]})))[0]
    assert bands.blue == "/vsicurl/https://example.test/cat/29RKH/B02.tif"


def test_item_collection_and_recursive_catalog(real_item, tmp_path):
    import pystac

    second = variant(real_item, item_id="second")
    collection = {"type": "FeatureCollection", "features": [real_item, second]}
    assert [e.item.id for e in read_catalogue(write_json(tmp_path / "items.json", collection))] == [
        real_item["id"], "second"]

    catalog = pystac.Catalog("root", "a catalogue of two levels")
    child = pystac.Catalog("child", "its child")
    catalog.add_child(child)
    child.add_item(pystac.Item.from_dict(copy.deepcopy(real_item)))
    catalog.add_item(pystac.Item.from_dict(copy.deepcopy(second)))
    catalog.normalize_hrefs(str(tmp_path / "catalog"))
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    entries = items_from([str(tmp_path / "catalog" / "catalog.json")])
    assert sorted(e.item.id for e in entries) == sorted([real_item["id"], "second"])


@pytest.mark.parametrize("content, message", [
    ('{"type": "Topology"}', "not a STAC item, item collection or catalog (its type is 'Topology')"),
    ("<html>not json</html>", "cannot be read as a STAC catalogue (JSONDecodeError"),
    ('{"type": "Feature", "id": "x"}', "not a valid STAC Feature"),
    ('{"type": "FeatureCollection", "features": []}', "the STAC FeatureCollection has no items"),
])
def test_not_a_catalogue_is_one_error(tmp_path, content, message):
    path = tmp_path / "cat.json"
    path.write_text(content)
    with pytest.raises(InputError) as error:
        read_catalogue(str(path))
    assert str(error.value).startswith(f"{path}: {message}") and "\n" not in str(error.value)
    with pytest.raises(InputError, match="no such file"):
        read_catalogue(str(tmp_path / "missing.json"))


def test_baseline_from_properties_and_ids():
    import pystac

    def item(properties, item_id="x"):
        return pystac.Item(item_id, None, None, "2023-06-01T10:00:00Z", properties)

    assert processing_baseline(item({"s2:processing_baseline": "05.10"})) == "05.10"
    assert processing_baseline(item({}, "S2B_MSIL2A_20230601T102559_N0509_R108_T32TMS_20230601T141214")) == "05.09"
    assert processing_baseline(item({}, "S2A_29RKH_20200219_0_L2A")) is None


READ_IN_A_FRESH_PROCESS = """
import json, sys
from mpi_s2.inputs.stac import read_catalogue, warm_up
if sys.argv[2] == "warm":
    warm_up()
before = set(sys.modules)
read_catalogue(sys.argv[1])
print(json.dumps(sorted(set(sys.modules) - before)))
"""


@pytest.mark.parametrize("warm", [True, False], ids=["warmed-up", "cold"])
def test_warm_up_leaves_the_first_item_read_nothing_to_import(real_item, tmp_path, warm):
    """Rank 0 warms the STAC reader up while the other ranks start (cli.warm_up_planner): the plan's first read of
    an item then imports nothing (pystac, its extension hooks and its date parser are loaded). Cold, the same read
    imports pystac and more, which is what the warm-up takes off the workers' wait for the plan."""
    import subprocess
    import sys

    path = write_json(tmp_path / "item.json", real_item)
    out = subprocess.run([sys.executable, "-c", READ_IN_A_FRESH_PROCESS, path, "warm" if warm else "cold"],
                         capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    imported = json.loads(out.stdout)
    if warm:
        assert imported == []
    else:
        assert "pystac" in imported and "pystac.stac_io" in imported


@pytest.mark.parametrize("rank, stac, warmed", [("0", True, True), ("1", True, False), ("0", False, False)])
def test_only_the_planning_rank_warms_up_and_only_for_a_catalogue(monkeypatch, tmp_path, rank, stac, warmed):
    from mpi_s2 import cli
    from mpi_s2.inputs import stac as stac_module

    calls: list[bool] = []
    monkeypatch.setattr(stac_module, "warm_up", lambda search=False: calls.append(search))
    for key in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", rank)
    inputs = ["--stac", str(tmp_path / "items.json")] if stac else ["--red", "r.tif", "--green", "g.tif",
                                                                     "--blue", "b.tif"]
    args = cli.build_parser().parse_args(["compose", *inputs, "-o", str(tmp_path / "out.tif")])
    cli.warm_up_planner(cli.compose_config(args))
    assert calls == ([False] if warmed else [])
