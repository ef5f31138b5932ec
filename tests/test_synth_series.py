"""The synthetic L2A time series (``synthesize_series``): products that parse, metadata that says what the rasters
hold, and a truth the rasters agree with. No MPI: generation and reading only."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from mpi_s2.inputs.metadata import parse_metadata
from mpi_s2.inputs.products import Product, open_product
from mpi_s2.tools.synth import (
    CLOUDY_CLASSES,
    SERIES_NODATA_BLOCK,
    ProductOptions,
    SeriesOptions,
    SeriesResult,
    synthesize_observation,
    synthesize_product,
    synthesize_series,
)

gdal.UseExceptions()

OPTIONS = SeriesOptions()  # the defaults: 7 dates of 512 x 512, what a pipeline test would use
N = OPTIONS.size
RGB = ("B04", "B03", "B02")


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> SeriesResult:
    return synthesize_series(str(tmp_path_factory.mktemp("series")), OPTIONS)


def _read(path: str) -> np.ndarray:
    return gdal.Open(path).ReadAsArray()


def _upsample(scl: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.repeat(np.repeat(scl, 2, axis=0), 2, axis=1)[:shape[0], :shape[1]]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(element: ET.Element, name: str) -> ET.Element:
    found = [c for c in element if _local(c.tag) == name]
    assert len(found) == 1, f"<{_local(element.tag)}> has {len(found)} <{name}>"
    return found[0]


@pytest.fixture(scope="module")
def rasters(series) -> list[dict[str, np.ndarray]]:
    """Per date: the 10 m bands (DN), their harmonised values v = DN + offset, SCL at 20 m and on the 10 m grid."""
    out = []
    for path in series.products:
        product = open_product(path)
        dn = np.stack([_read(f) for f in product.rgb_files(10)]).astype(np.int64)
        offset = product.metadata.radiometry["B04"].offset
        scl = _read(product.scl_file(20))
        out.append({"dn": dn, "v": dn + offset, "scl": scl, "scl10": _upsample(scl, (N, N)), "offset": offset})
    return out


def test_products_parse_and_carry_baseline_start_time_and_cloud_cover(series):
    assert len(series.products) == len(series.dates) == len(series.cloud_cover) == OPTIONS.dates
    first = datetime.strptime(OPTIONS.start, "%Y%m%dT%H%M%S")
    for i, path in enumerate(series.products):
        product = open_product(path)
        md = product.metadata
        baseline = "02.14" if i % 2 == 0 else "05.09"  # 1st, 3rd, ... date: old baseline; 2nd, 4th, ...: new
        assert md.level == "L2A" and md.baseline == baseline == series.baselines[i]
        for band in RGB:
            assert md.radiometry[band].offset == (-1000.0 if baseline == "05.09" else 0.0)
            assert md.radiometry[band].quantification == 10000.0
        assert sorted(md.resolutions_with(RGB)) == [10, 20, 60]
        assert product.scl_file(20).endswith("_SCL_20m.jp2")
        when = first + timedelta(days=i * OPTIONS.step_days)
        assert series.dates[i] == when.strftime("%Y%m%dT%H%M%S") and series.dates[i] in Path(path).name

        root = ET.parse(Path(path) / "MTD_MSIL2A.xml").getroot()
        info = _child(_child(root, "General_Info"), "Product_Info")
        assert _child(info, "PRODUCT_START_TIME").text == when.strftime("%Y-%m-%dT%H:%M:%S.024Z")
        assert _child(info, "PROCESSING_BASELINE").text == baseline
        quality = _child(root, "Quality_Indicators_Info")  # where a real MTD_MSIL2A.xml has it
        assert float(_child(quality, "Cloud_Coverage_Assessment").text or "") == series.cloud_cover[i]
        content = _child(quality, "Image_Content_QI")
        assert float(_child(content, "CLOUDY_PIXEL_PERCENTAGE").text or "") == series.cloud_cover[i]
        assert 0.0 < series.cloud_cover[i] < 60.0
    assert len(set(series.cloud_cover)) == OPTIONS.dates  # the clouds differ from date to date


def test_cloud_cover_is_the_cloudy_share_of_the_scl(series, rasters):
    seen: set[int] = set()
    for i, r in enumerate(rasters):
        scl = r["scl"]
        assert scl.shape == (-(-N // 2), -(-N // 2))
        classes = set(np.unique(scl).tolist())
        assert classes <= {0, 3, 4, 5, 8, 9, 10}
        seen |= classes
        valid = scl != 0
        share = 100.0 * np.isin(scl[valid], CLOUDY_CLASSES).mean()
        assert share == pytest.approx(series.cloud_cover[i], abs=1e-6)
        # the metadata's class percentages add up with it
        content = {_local(e.tag): float(e.text or "") for e in ET.parse(Path(series.products[i]) / "MTD_MSIL2A.xml")
                   .getroot().iter() if _local(e.tag).endswith("_PERCENTAGE")}
        parts = sum(content[k] for k in ("CLOUD_SHADOW_PERCENTAGE", "MEDIUM_PROBA_CLOUDS_PERCENTAGE",
                                         "HIGH_PROBA_CLOUDS_PERCENTAGE", "THIN_CIRRUS_PERCENTAGE"))
        assert parts == pytest.approx(series.cloud_cover[i], abs=1e-5)
        assert content["NODATA_PIXEL_PERCENTAGE"] == pytest.approx(100.0 * (~valid).mean(), abs=1e-6)
    assert seen == {0, 3, 4, 5, 8, 9, 10}  # clouds of both probabilities, shadows, cirrus, both land classes


def test_rasters_agree_with_their_scl_and_the_truth(series, rasters):
    truth = series.truth
    assert truth.shape == (3, N, N) and truth.dtype == np.float64
    assert truth.min() >= 300 and truth.max() <= 3000 and np.array_equal(truth, np.rint(truth))
    assert np.abs(np.diff(truth, axis=2)).mean() > 10  # textured: neighbours differ
    for i, r in enumerate(rasters):
        dn, v, scl10 = r["dn"], r["v"], r["scl10"]
        nodata = scl10 == 0
        assert (dn[:, nodata] == 0).all()  # nodata in every band exactly where the SCL says so
        assert ((dn[:, ~nodata] >= 1) & (dn[:, ~nodata] <= 65534)).all()
        clear = np.isin(scl10, (4, 5))
        assert np.array_equal(clear, series.clear[i])
        # clear: the surface within the 3 % per-date variation
        assert (np.abs(v - truth)[:, clear] <= 0.03 * truth[:, clear] + 0.5).all()
        core, edge, shadow, cirrus = (scl10 == 9), (scl10 == 8), (scl10 == 3), (scl10 == 10)
        assert core.any() and shadow.any()
        assert ((v[:, core] >= 6000) & (v[:, core] <= 9200)).all()
        assert (v[:, edge] >= 4000).all()
        assert (v[:, shadow] <= 0.3 * 1.03 * truth[:, shadow] + 1).all()  # dark
        assert (v[:, cirrus] >= 0.75 * 0.97 * truth[:, cirrus] + 1499).all()  # brighter than the ground
        # 20 m and 60 m sample the 10 m bands; the 60 m SCL samples the 20 m one (JPEG 2000 is lossless)
        product = open_product(series.products[i])
        for k, band in enumerate(RGB):
            assert np.array_equal(_read(product.file(product.metadata.band_path(band, 20))), dn[k, ::2, ::2])
            assert np.array_equal(_read(product.file(product.metadata.band_path(band, 60))), dn[k, ::6, ::6])
        assert np.array_equal(_read(product.file(product.metadata.band_path("SCL", 60))), r["scl"][::3, ::3])


def test_the_median_of_the_clear_dates_is_the_truth(series, rasters):
    values = np.stack([r["v"] for r in rasters]).astype(np.float64)  # (dates, 3, h, w)
    clear = np.stack([np.isin(r["scl10"], (4, 5)) & (r["dn"] != 0).all(axis=0) for r in rasters])
    values[np.broadcast_to(~clear[:, None], values.shape)] = np.nan
    assert np.nanmax(np.abs(values - series.truth)) >= 0.02 * 300  # the dates differ from the truth and each other
    count = clear.sum(axis=0)
    seen = count > 0
    with np.errstate(all="ignore"):
        median = np.nanmedian(values[:, :, seen], axis=0)
    assert (np.abs(median - series.truth[:, seen]) <= 0.03 * series.truth[:, seen] + 0.5).all()
    every = count == OPTIONS.dates  # odd number of dates, all clear: the median is the truth itself
    assert every.any()
    assert np.array_equal(np.median(values[:, :, every], axis=0), series.truth[:, every])


def test_nodata_square_on_every_date(series, rasters):
    block = SERIES_NODATA_BLOCK
    for r in rasters:
        assert (r["dn"][:, :block, :block] == 0).all()
        assert (r["scl"][:block // 2, :block // 2] == 0).all()
        assert r["dn"][:, block, block].all()  # just outside: data (no date has nodata there)
    count = series.clear_count
    assert (count[:block, :block] == 0).all()
    outside = np.ones((N, N), dtype=bool)
    outside[:block, :block] = False
    assert count[outside].min() >= OPTIONS.dates // 2  # every other pixel is clear on about half the dates or more


def test_odd_and_even_numbers_of_clear_dates(series, rasters):
    valid_dates = sum((r["dn"] != 0).all(axis=0).astype(int) for r in rasters)
    clear_dates = sum((np.isin(r["scl10"], (4, 5)) & (r["dn"] != 0).all(axis=0)).astype(int) for r in rasters)
    assert np.array_equal(clear_dates, series.clear_count)
    outside = valid_dates > 0
    counts = set(np.unique(clear_dates[outside]).tolist())
    assert any(c % 2 for c in counts) and any(c % 2 == 0 for c in counts), counts
    # a region that is nodata on exactly one date (the swath edge), and pixels with data on every date
    assert (valid_dates == OPTIONS.dates - 1).any() and (valid_dates == OPTIONS.dates).any()
    assert set(np.unique(valid_dates).tolist()) == {0, OPTIONS.dates - 1, OPTIONS.dates}


def test_series_is_deterministic_and_seeded(tmp_path):
    small = SeriesOptions(dates=3, size=97, seed=4)  # an odd size: the last 20 m column covers one 10 m column
    a = synthesize_series(str(tmp_path / "a"), small)
    b = synthesize_series(str(tmp_path / "b"), small)
    c = synthesize_series(str(tmp_path / "c"), SeriesOptions(dates=3, size=97, seed=5))
    assert np.array_equal(a.truth, b.truth) and a.cloud_cover == b.cloud_cover
    assert not np.array_equal(a.truth, c.truth) and a.cloud_cover != c.cloud_cover
    for pa, pb in zip(a.products, b.products, strict=True):
        fa, fb = open_product(pa).rgb_files(10)[0], open_product(pb).rgb_files(10)[0]
        assert np.array_equal(_read(fa), _read(fb))
    product: Product = open_product(a.products[0])
    red, scl = _read(product.rgb_files(10)[0]), _read(product.scl_file(20))
    assert red.shape == (97, 97) and scl.shape == (49, 49)
    assert np.array_equal(red == 0, _upsample(scl, red.shape) == 0)


def test_synthesize_product_without_cloud_cover_keeps_its_metadata(tmp_path):
    plain = synthesize_product(str(tmp_path / "plain"), ProductOptions(size=256, jp2_block=256))
    xml = (Path(plain) / "MTD_MSIL2A.xml").read_bytes()
    assert b"Quality_Indicators_Info" not in xml and b"CLOUDY_PIXEL" not in xml
    root = ET.fromstring(xml)
    info = _child(_child(root, "General_Info"), "Product_Info")
    assert _child(info, "PRODUCT_START_TIME").text == "2023-07-15T10:25:59.024Z"
    md = parse_metadata(xml, "plain")
    assert md.baseline == "05.09" and md.radiometry["B02"].offset == -1000.0

    cloudy = synthesize_product(str(tmp_path / "cloudy"), ProductOptions(size=256, jp2_block=256, cloud_cover=12.5))
    root = ET.parse(Path(cloudy) / "MTD_MSIL2A.xml").getroot()
    quality = _child(root, "Quality_Indicators_Info")
    assert float(_child(quality, "Cloud_Coverage_Assessment").text or "") == 12.5
    assert float(_child(_child(quality, "Image_Content_QI"), "CLOUDY_PIXEL_PERCENTAGE").text or "") == 12.5
    assert open_product(cloudy).metadata.baseline == "05.09"


def test_observation_writes_the_arrays_it_is_given(tmp_path):
    rng = np.random.default_rng(0)
    red, green, blue = (rng.integers(1, 65535, size=(70, 65), dtype=np.uint16) for _ in range(3))
    scl = rng.choice(np.array([0, 3, 4, 8], dtype=np.uint8), size=(35, 33))
    path = synthesize_observation(str(tmp_path), ProductOptions(baseline="02.14", sensing="20240102T030405"),
                                  red, green, blue, scl)
    product = open_product(path)
    for written, given in zip(product.rgb_files(10), (red, green, blue), strict=True):
        assert np.array_equal(_read(written), given)
    assert np.array_equal(_read(product.scl_file(20)), scl)
    root = ET.parse(Path(path) / "MTD_MSIL2A.xml").getroot()
    cover = float(_child(_child(root, "Quality_Indicators_Info"), "Cloud_Coverage_Assessment").text or "")
    assert cover == pytest.approx(100.0 * np.isin(scl[scl != 0], CLOUDY_CLASSES).mean(), abs=1e-6)
    with pytest.raises(ValueError, match="scl"):
        synthesize_observation(str(tmp_path), ProductOptions(), red, green, blue, scl[:, :-1])
    with pytest.raises(ValueError, match="green"):
        synthesize_observation(str(tmp_path), ProductOptions(), red, green[:-1], blue, scl)
