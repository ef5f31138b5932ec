"""Cloud-free composites from a season (``--composite median|medoid``, ``--order``, ``--dates``,
``--max-cloud-cover``), end to end under mpirun, on synthetic L2A time series (``mpi-s2 synth --series``: JPEG 2000,
moving clouds, shadows and cirrus with their SCL, baselines on both sides of 04.00).

The reference is numpy written from the definitions on the products' own files, read with GDAL: DN from the JPEG
2000 bands, the offset from the product name's baseline (N04xx and later: -1000), validity from DN 0 and the 20 m
SCL repeated 2 x 2, then float64 ``numpy.median`` and the contract's formula. Nothing of mpi_s2 computes it.
"""

from __future__ import annotations

import glob
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from mpi_s2.tools.synth import SeriesOptions, synthesize_series

from conftest import error_lines, run_mpi_s2

SIZE = 256
MASKED = (3, 8, 9, 10)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """Synthetic series of 3, 4, 7 and 12 dates of one 256 x 256 tile (JPEG 2000 blocks of 128)."""
    made = {}

    def make(dates: int):
        if dates not in made:
            made[dates] = synthesize_series(str(tmp_path_factory.mktemp(f"series{dates}")),
                                            SeriesOptions(dates=dates, size=SIZE, jp2_block=128))
        return made[dates]
    return make


def observation(product: str, cloud_mask: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(3, h, w)`` float64 harmonised values (DN + offset) and ``(h, w)`` validity of one product."""
    def band(name: str) -> np.ndarray:
        path, = glob.glob(os.path.join(product, "GRANULE", "*", "IMG_DATA", "R10m", f"*_{name}_10m.jp2"))
        return gdal.Open(path).ReadAsArray()

    dn = np.stack([band(b) for b in ("B04", "B03", "B02")]).astype(np.float64)
    baseline = int(re.search(r"_N(\d{2})\d{2}_", os.path.basename(product)).group(1))
    offset = -1000.0 if baseline >= 4 else 0.0
    valid = (dn != 0).all(axis=0)
    if cloud_mask:
        path, = glob.glob(os.path.join(product, "GRANULE", "*", "IMG_DATA", "R20m", "*_SCL_20m.jp2"))
        scl = np.repeat(np.repeat(gdal.Open(path).ReadAsArray(), 2, axis=0), 2, axis=1)[:dn.shape[1], :dn.shape[2]]
        valid &= ~np.isin(scl, MASKED)
    return dn + offset, valid


def render(v: np.ndarray, max_reflectance: float = 1.0, gamma: float = 2.2) -> np.ndarray:
    return np.floor(255 * np.clip((v / 10000.0) / max_reflectance, 0, 1) ** (1 / gamma) + 0.5).astype(np.uint8)


def reference(products: list[str], mode: str, cloud_mask: bool) -> tuple[np.ndarray, np.ndarray]:
    """RGB and validity of ``mode`` over ``products`` (in this order: first and medoid ties)."""
    obs = [observation(p, cloud_mask) for p in products]
    v = np.stack([o[0] for o in obs])  # (T, 3, h, w)
    valid = np.stack([o[1] for o in obs])  # (T, h, w)
    any_valid = valid.any(axis=0)
    if mode == "first":
        index = np.argmax(valid, axis=0)
        value = np.take_along_axis(v, index[None, None], axis=0)[0]
    else:
        stacked = np.where(valid[:, None], v, np.nan)
        with np.errstate(all="ignore"):
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                median = np.nanmedian(stacked, axis=0)
        if mode == "median":
            value = median
        else:
            distance = np.where(valid, np.abs(v - median[None]).sum(axis=1), np.inf)
            value = np.take_along_axis(v, np.argmin(distance, axis=0)[None, None], axis=0)[0]
    rgb = render(np.nan_to_num(value))
    rgb[:, ~any_valid] = 0
    return rgb, any_valid


def compose(products: list[str], out: Path, *extra: str, ranks: int = 3) -> dict:
    report = out.with_suffix(".json")
    result = run_mpi_s2(["compose", *products, "-o", str(out), "--report", str(report), "-q", *extra], ranks=ranks)
    assert result.returncode == 0, result.stderr
    return json.loads(report.read_text())


def assert_equals_reference(out: Path, rgb: np.ndarray, valid: np.ndarray) -> None:
    image = gdal.Open(str(out)).ReadAsArray()
    assert np.array_equal(image[3], np.where(valid, 255, 0))
    mismatch = np.count_nonzero((image[:3] != rgb).any(axis=0))
    assert mismatch == 0, f"{mismatch} pixels differ from the numpy reference"


@pytest.mark.parametrize("cloud_mask", [True, False], ids=["cloud-mask", "no-mask"])
@pytest.mark.parametrize("mode", ["median", "medoid"])
@pytest.mark.parametrize("dates", [3, 4, 7, 12])
def test_median_and_medoid_equal_numpy_exactly(series, tmp_path, dates, mode, cloud_mask):
    made = series(dates)
    out = tmp_path / "c.tif"
    report = compose(made.products, out, "--composite", mode, *(["--cloud-mask"] if cloud_mask else []),
                     "--window", "128", "--co", "BLOCKXSIZE=128", "--co", "BLOCKYSIZE=128")
    rgb, valid = reference(made.products, mode, cloud_mask)
    assert_equals_reference(out, rgb, valid)
    assert not valid[:16, :16].any() and valid.mean() > 0.9  # the series' nodata square, and little else
    assert report["composite"] == {"mode": mode, "order": "given", "window": [128, 128],
                                   "observations_per_window": dates}
    for entry in report["inputs"]:  # decode once: every block of every date's bands (and SCL) exactly once
        assert entry["blocks"]["decoded"] == entry["blocks"]["distinct"] == entry["blocks"]["total"], entry
    assert gdal.Open(str(out)).GetMetadataItem("MPI_S2_COMPOSITE") == mode


def test_median_is_closer_to_the_cloud_free_truth_than_first_valid(series, tmp_path):
    """Mean absolute error per band against the truth's display values, over the pixels both made valid. Without
    a mask the first valid pixel is often a cloud or a shadow, while the median of 7 dates is not; with the
    (here perfect) SCL mask both are clear, and the median also evens out the dates' small differences."""
    made = series(7)
    truth = render(made.truth)
    errors = {}
    for mask in ([], ["--cloud-mask"]):
        images = {}
        for mode in ("first", "median"):
            out = tmp_path / f"{mode}{len(mask)}.tif"
            compose(made.products, out, "--composite", mode, *mask)
            images[mode] = gdal.Open(str(out)).ReadAsArray()
        both = (images["first"][3] == 255) & (images["median"][3] == 255)
        for mode, image in images.items():
            errors[f"{mode}{' --cloud-mask' if mask else ''}"] = [
                round(float(np.abs(image[b][both].astype(int) - truth[b][both]).mean()), 3) for b in range(3)]
    print(f"mean absolute error per band (R, G, B) against the cloud-free truth: {errors}")
    assert all(m < f / 5 for m, f in zip(errors["median"], errors["first"], strict=True)), errors
    assert max(errors["median --cloud-mask"]) < 0.5 and max(errors["median"]) < 1.0, errors


def test_the_same_bytes_for_every_rank_count_schedule_backend_window_and_cog(series, tmp_path):
    made = series(4)
    base = tmp_path / "base.tif"
    compose(made.products, base, "--composite", "median", "--cloud-mask", ranks=1)
    expected = gdal.Open(str(base)).ReadAsArray()
    runs = [(2, ["--schedule", "static"]), (3, ["--backend", "hdf5"]), (4, ["--window", "128", "--co",
            "BLOCKXSIZE=128", "--co", "BLOCKYSIZE=128"]), (3, ["--window", "256"]), (3, ["--cog"]),
            (2, ["--backend", "hdf5", "--cog", "--schedule", "static"])]
    for k, (ranks, extra) in enumerate(runs):
        out = tmp_path / f"run{k}.tif"
        compose(made.products, out, "--composite", "median", "--cloud-mask", *extra, ranks=ranks)
        assert np.array_equal(gdal.Open(str(out)).ReadAsArray(), expected), (ranks, extra)


def test_the_same_bytes_for_windows_of_256_512_and_1024(tmp_path):
    """A 1024 x 1024 series of 3 dates (JPEG 2000 tiled 256): windows of 256, 512 and 1024 (output tiles of
    256), medoid, on 3 ranks, and the default window on 1 rank: one image."""
    made = synthesize_series(str(tmp_path / "series"), SeriesOptions(dates=3, size=1024, jp2_block=256))
    images = []
    for window in ("256", "512", "1024", None):
        out = tmp_path / f"w{window}.tif"
        extra = ["--window", window] if window else []
        compose(made.products, out, "--composite", "medoid", "--cloud-mask", "--co", "BLOCKXSIZE=256", "--co",
                "BLOCKYSIZE=256", *extra, ranks=3 if window else 1)
        images.append(gdal.Open(str(out)).ReadAsArray())
    assert all(np.array_equal(images[0], other) for other in images[1:])
    assert_equals_reference(tmp_path / "w256.tif", *reference(made.products, "medoid", True))


def test_resume_after_sigkill_gives_the_same_composite(series, tmp_path):
    made = series(4)
    args = ["compose", *made.products, "--composite", "medoid", "--cloud-mask", "--window", "128", "--co",
            "BLOCKXSIZE=128", "--co", "BLOCKYSIZE=128", "-q"]
    whole = tmp_path / "whole.tif"
    assert run_mpi_s2([*args, "-o", str(whole)], ranks=3).returncode == 0
    out = tmp_path / "rgb.tif"
    killed = run_mpi_s2([*args, "-o", str(out)], ranks=3,
                        env={"MPI_S2_TEST_FAULT": "1:1:kill", "MPI_S2_COMMIT_INTERVAL": "0"})
    assert killed.returncode == 137, killed.stderr
    resumed = run_mpi_s2([*args, "-o", str(out), "--resume", "--report", str(tmp_path / "r.json")], ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "r.json").read_text())["windows_reused"] > 0
    assert np.array_equal(gdal.Open(str(out)).ReadAsArray(), gdal.Open(str(whole)).ReadAsArray())


def test_order_and_selection_by_cloud_cover_and_date(series, tmp_path):
    made = series(7)
    cover = dict(zip(made.products, made.cloud_cover, strict=True))
    by_cover = sorted(made.products, key=lambda p: (cover[p], p))
    out = tmp_path / "least-cloudy.tif"
    report = compose(list(reversed(made.products)), out, "--order", "cloud-cover", "--cloud-mask")
    assert [e["input"] for e in report["inputs"]] == by_cover
    assert [e["cloud_cover"] for e in report["inputs"]] == pytest.approx(sorted(made.cloud_cover), abs=1e-6)
    assert_equals_reference(out, *reference(by_cover, "first", True))

    out = tmp_path / "latest.tif"
    report = compose(made.products, out, "--order", "date-desc")
    assert [e["input"] for e in report["inputs"]] == list(reversed(made.products))
    assert_equals_reference(out, *reference(list(reversed(made.products)), "first", False))

    limit = sorted(made.cloud_cover)[3]  # keeps 4 of 7
    out = tmp_path / "selected.tif"
    result = run_mpi_s2(["compose", *made.products, "-o", str(out), "--report", str(tmp_path / "s.json"),
                         "--dates", "2023-06-06/2023-06-26", "--max-cloud-cover", f"{limit}", "--composite",
                         "median"], ranks=2)
    assert result.returncode == 0, result.stderr
    in_range = [p for p in made.products if "20230606" <= p.split("_")[-5][:8] <= "20230626"]
    kept = [p for p in in_range if cover[p] <= limit]
    report = json.loads((tmp_path / "s.json").read_text())
    assert [e["input"] for e in report["inputs"]] == kept
    assert f"--dates 2023-06-06/2023-06-26 dropped {7 - len(in_range)} of 7 inputs" in result.stderr
    if len(kept) < len(in_range):
        assert f"dropped {len(in_range) - len(kept)} of {len(in_range)} inputs (cloudier)" in result.stderr
    assert_equals_reference(out, *reference(kept, "median", False))


def test_first_is_the_default_and_keeps_its_bytes(series, tmp_path):
    """--composite first is today's mosaic: the same file as without the option, and no composite metadata."""
    made = series(3)
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    compose(made.products, a, "--cloud-mask")
    compose(made.products, b, "--cloud-mask", "--composite", "first")
    assert a.read_bytes() == b.read_bytes()
    assert gdal.Open(str(a)).GetMetadataItem("MPI_S2_COMPOSITE") is None
    assert_equals_reference(a, *reference(made.products, "first", True))


@pytest.mark.parametrize("case, extra, message", [
    ("unknown composite", ["--composite", "mean"], r"argument --composite: invalid choice: 'mean'"),
    ("dates select nothing", ["--dates", "2024-01-01/2024-02-01"],
     r"^mpi_s2: error: no input left: --dates 2024-01-01/2024-02-01 dropped 3 of 3 inputs"),
    ("no date", ["--dates", "2023-01-01/2023-12-31", "--red", "B04", "--green", "B03", "--blue", "B02"],
     r"^mpi_s2: error: \S*B04_10m\.jp2: has no date \(--dates needs it; give --date per band set\)"),
    ("no cloud cover", ["--order", "cloud-cover", "--red", "B04", "--green", "B03", "--blue", "B02"],
     r"^mpi_s2: error: \S*B04_10m\.jp2: has no cloud cover \(--order cloud-cover needs it; give --scl"),
])
def test_bad_composite_input_is_one_line(series, tmp_path, case, extra, message):
    made = series(3)
    band = {name: glob.glob(os.path.join(made.products[0], "GRANULE", "*", "IMG_DATA", "R10m", f"*_{name}_10m.jp2"))[0]
            for name in ("B04", "B03", "B02")}
    extra = [band[e] if e in band else e for e in extra]
    args = ["compose", *made.products, *extra, "-o", str(tmp_path / "c.tif")]
    result = run_mpi_s2(args, ranks=2)
    assert result.returncode == 2, result.stderr
    assert re.search(message, result.stderr, re.MULTILINE), result.stderr
    assert len([line for line in result.stderr.splitlines() if "error" in line and "mpi_s2" in line
                or line.startswith("mpi-s2 compose: error")]) == 1, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_observation_that_cannot_be_placed_on_the_grid_is_one_line(series, tmp_path):
    """A band set without a CRS among georeferenced products (it was an internal error, exit 1)."""
    from conftest import write_band

    made = series(3)
    files = [write_band(tmp_path / f"{b}.tif", np.full((64, 64), 1000, dtype=np.uint16), epsg=None, block=64)
             for b in ("B04", "B03", "B02")]
    out = tmp_path / "c.tif"
    result = run_mpi_s2(["compose", *made.products, "--red", files[0], "--green", files[1], "--blue", files[2],
                         "-o", str(out), "--composite", "median"], ranks=2)
    assert result.returncode == 2, result.stderr
    assert error_lines(result.stderr) == [f"mpi_s2: error: {files[0]}: has no CRS, so it cannot be placed on the "
                                          f"grid of {made.products[0]}"], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["B02.tif", "B03.tif", "B04.tif"]


def test_medoid_with_no_valid_pixel_anywhere_writes_an_empty_image_and_says_so(tmp_path):
    from conftest import write_band

    zero = np.zeros((64, 64), dtype=np.uint16)
    sets = []
    for k in range(3):
        paths = [write_band(tmp_path / f"{b}-{k}.tif", zero, block=64) for b in ("B04", "B03", "B02")]
        sets += ["--red", paths[0], "--green", paths[1], "--blue", paths[2]]
    out = tmp_path / "empty.tif"
    result = run_mpi_s2(["compose", *sets, "-o", str(out), "--composite", "medoid"], ranks=2)
    assert result.returncode == 0 and not error_lines(result.stderr), result.stderr
    assert "no pixel has a valid observation (every input is DN 0 there): the output is all nodata" in result.stderr
    assert not gdal.Open(str(out)).ReadAsArray().any()


def test_a_2x2_mosaic_of_3_dates_composes_every_observation_of_a_pixel(tmp_path):
    """Four overlapping tiles x 3 dates (different clouds per tile): every observation of a pixel counts,
    whatever its tile; the grid is the union of the tiles' extents, computed here from their origins."""
    from mpi_s2.tools.synth import ORIGIN

    shift = 2000.0  # metres: tiles of 256 px (2560 m) overlap by 56 px
    tiles = []
    for k, (dx, dy) in enumerate([(0, 0), (shift, 0), (0, -shift), (shift, -shift)]):
        made = synthesize_series(str(tmp_path / f"tile{k}"), SeriesOptions(
            dates=3, size=SIZE, jp2_block=128, seed=k + 1, origin=(ORIGIN[0] + dx, ORIGIN[1] + dy)))
        tiles.append(((int(dx / 10), int(-dy / 10)), made.products))
    width = height = SIZE + int(shift / 10)
    v = np.zeros((12, 3, height, width))
    valid = np.zeros((12, height, width), dtype=bool)
    products = []
    for k, ((col, row), made_products) in enumerate(tiles):
        for d, product in enumerate(made_products):
            values, ok = observation(product, cloud_mask=True)
            v[3 * k + d, :, row:row + SIZE, col:col + SIZE] = values
            valid[3 * k + d, row:row + SIZE, col:col + SIZE] = ok
            products.append(product)
    out = tmp_path / "mosaic.tif"
    report = compose(products, out, "--composite", "median", "--cloud-mask", ranks=3)
    ds = gdal.Open(str(out))
    assert (ds.RasterXSize, ds.RasterYSize) == (width, height)
    assert ds.GetGeoTransform() == (ORIGIN[0], 10.0, 0.0, ORIGIN[1], 0.0, -10.0)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        median = np.nanmedian(np.where(valid[:, None], v, np.nan), axis=0)
    any_valid = valid.any(axis=0)
    rgb = render(np.nan_to_num(median))
    rgb[:, ~any_valid] = 0
    assert_equals_reference(out, rgb, any_valid)
    assert report["composite"]["observations_per_window"] == 12  # the window over the corner overlap
    assert valid.sum(axis=0).max() >= 9  # the overlap's pixels have valid observations from all four tiles


def test_median_and_medoid_over_a_real_l2a_clip_and_two_derived_dates(tmp_path):
    """The real Earth Search COGs of T29RKH (100 m, SCL 200 m) as one date, and two more dates derived from
    them: one with a bright cloud (SCL 9) and a dark shadow (SCL 3) over parts of the clip, and one with a +2 %
    gain and a strip of nodata. Median and medoid with --cloud-mask against numpy on the files as written."""
    from conftest import REAL_DATA, require

    real = REAL_DATA / "l2a-cog-T29RKH"
    require((real / "B04.tif").exists(), f"the real Sentinel-2 files in {real}",
            "put the project's shared/ beside the checkout, or set MPI_S2_REAL_DATA=DIR")
    names = ("B04", "B03", "B02")
    source = {b: gdal.Open(str(real / f"{b}.tif")) for b in names}
    dn = np.stack([source[b].ReadAsArray() for b in names])
    scl = gdal.Open(str(real / "SCL.tif")).ReadAsArray()

    def write(path: Path, array: np.ndarray, like) -> str:
        out = gdal.GetDriverByName("GTiff").Create(str(path), array.shape[1], array.shape[0], 1,
                                                   gdal.GDT_UInt16 if array.dtype == np.uint16 else gdal.GDT_Byte,
                                                   ["TILED=YES", "COMPRESS=DEFLATE"])
        out.SetGeoTransform(like.GetGeoTransform())
        out.SetProjection(like.GetProjection())
        out.GetRasterBand(1).WriteArray(array)
        out = None
        return str(path)

    cloudy, gained = dn.copy(), np.clip(dn.astype(np.int64) * 102 // 100, 0, 65535).astype(np.uint16)
    cloudy_scl, gained_scl = scl.copy(), scl.copy()
    cloudy[:, 100:400, 200:700] = 8500
    cloudy_scl[50:200, 100:350] = 9
    cloudy[:, 600:800, 100:300] //= 3
    cloudy_scl[300:400, 50:150] = 3
    gained[:, :, 900:] = 0  # beyond this date's swath
    sets = [("--red", str(real / "B04.tif"), "--green", str(real / "B03.tif"), "--blue", str(real / "B02.tif"),
             "--scl", str(real / "SCL.tif"), "--date", "2020-02-19")]
    derived = [(cloudy, cloudy_scl, "2020-02-24"), (gained, gained_scl, "2020-02-29")]
    for k, (bands, classes, date) in enumerate(derived):
        paths = [write(tmp_path / f"{b}-{k}.tif", bands[i], source[b]) for i, b in enumerate(names)]
        sets.append(("--red", paths[0], "--green", paths[1], "--blue", paths[2],
                     "--scl", write(tmp_path / f"SCL-{k}.tif", classes, gdal.Open(str(real / "SCL.tif"))),
                     "--date", date))
    stack = np.stack([dn, cloudy, gained]).astype(np.float64)
    classes = np.stack([np.repeat(np.repeat(c, 2, axis=0), 2, axis=1) for c in (scl, cloudy_scl, gained_scl)])
    valid = (stack != 0).all(axis=1) & ~np.isin(classes, MASKED)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        median = np.nanmedian(np.where(valid[:, None], stack, np.nan), axis=0)
    any_valid = valid.any(axis=0)
    # --order date-desc: the latest first; the medoid's ties go to the earliest in that order
    distance = np.where(valid[::-1], np.abs(stack[::-1] - median[None]).sum(axis=1), np.inf)
    medoid = np.take_along_axis(stack[::-1], np.argmin(distance, axis=0)[None, None], axis=0)[0]
    assert (valid.sum(axis=0) == 2).any() and (valid.sum(axis=0) == 3).any() and any_valid.mean() > 0.5
    for mode, value in (("median", median), ("medoid", medoid)):
        out = tmp_path / f"{mode}.tif"
        args = ["compose", *[a for s in sets for a in s], "-o", str(out), "--composite", mode, "--max-reflectance",
                "0.3", "--order", "date-desc", "-q"]
        result = run_mpi_s2(args, ranks=3)
        assert result.returncode == 0, result.stderr
        rgb = render(np.nan_to_num(value), max_reflectance=0.3)
        rgb[:, ~any_valid] = 0
        assert_equals_reference(out, rgb, any_valid)
        assert gdal.Open(str(out)).GetGeoTransform() == source["B04"].GetGeoTransform()
