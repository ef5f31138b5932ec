"""The global percentile stretch (``--stretch percentile:LOW,HIGH``, ``--stretch-bands``, ``--stretch-from``,
``mpi-s2 stretch``), end to end under mpirun.

The reference is numpy written from the definitions: the harmonised values the output is rendered from (the
first valid observation, or the median of the valid ones; see tests/test_time_series.py), their LOW and HIGH
percentiles by ``numpy.percentile(..., method="inverted_cdf")`` over every valid pixel (the three bands pooled,
or per band), then ``floor(255 * clip((v - low) / (high - low), 0, 1) ** (1 / gamma) + 0.5)``.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal
from test_time_series import observation

from mpi_s2.errors import InputError
from mpi_s2.pixels.stretch import (
    HIST_BASE,
    HIST_SIZE,
    StretchRequest,
    ValueHistogram,
    limits_from_dict,
    parse_stretch,
    percentile_limits,
)
from mpi_s2.tools.synth import ORIGIN, SeriesOptions, synthesize_series

from conftest import error_lines, run_mpi_s2

SIZE = 256


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A synthetic series of 4 dates of one 256 x 256 tile (JPEG 2000 blocks of 128, a nodata corner)."""
    return synthesize_series(str(tmp_path_factory.mktemp("series")), SeriesOptions(dates=4, size=SIZE,
                                                                                   jp2_block=128))


def composed_values(products: list[str], mode: str, cloud_mask: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(3, h, w)`` harmonised values the output is rendered from, and where some observation is valid."""
    obs = [observation(p, cloud_mask) for p in products]
    v = np.stack([o[0] for o in obs])
    valid = np.stack([o[1] for o in obs])
    if mode == "first":
        value = np.take_along_axis(v, np.argmax(valid, axis=0)[None, None], axis=0)[0]
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            value = np.nanmedian(np.where(valid[:, None], v, np.nan), axis=0)
    return value, valid.any(axis=0)


def numpy_limits(value: np.ndarray, valid: np.ndarray, low: float, high: float, per_band: bool) -> list:
    pools = [value[b][valid] for b in range(3)] if per_band else [value[:, valid].ravel()]
    pairs = [tuple(np.percentile(pool, [low, high], method="inverted_cdf")) for pool in pools]
    return pairs if per_band else pairs * 3


def numpy_render(value: np.ndarray, valid: np.ndarray, limits: list, gamma: float = 2.2) -> np.ndarray:
    rgb = np.zeros((4, *valid.shape), dtype=np.uint8)
    for b, (low, high) in enumerate(limits):
        ratio = np.clip((np.nan_to_num(value[b]) - low) / (high - low), 0, 1)
        rgb[b] = np.floor(255 * ratio ** (1 / gamma) + 0.5).astype(np.uint8)
    rgb[:3, ~valid] = 0
    rgb[3] = np.where(valid, 255, 0)
    return rgb


def compose(args: list[str], out: Path, ranks: int = 3, command: str = "compose") -> dict:
    report = out.with_suffix(".report.json")
    result = run_mpi_s2([command, *args, "-o", str(out), "--report", str(report), "-q"], ranks=ranks)
    assert result.returncode == 0, result.stderr
    return json.loads(report.read_text())


# --- the pure parts -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("per_band", [False, True], ids=["linked", "per-band"])
@pytest.mark.parametrize("low, high", [(2, 98), (0, 100), (0.5, 99.5), (25, 75), (1, 2)])
def test_limits_equal_numpy_inverted_cdf(low, high, per_band):
    rng = np.random.default_rng(int(low * 10 + high))
    doubled = rng.integers(2 * -999, 2 * 12000, (3, 4999))  # half-integer values too; 4999: fractional ranks
    doubled[:, :50] = 2 * 400  # ties
    histogram = ValueHistogram()
    for b in range(3):
        histogram.counts[b] += np.bincount(doubled[b] - HIST_BASE, minlength=HIST_SIZE)
    limits = percentile_limits(histogram, StretchRequest("percentile", low, high, "per-band" if per_band
                                                          else "linked"))
    value = doubled / 2.0
    expected = numpy_limits(value[:, None, :], np.ones((1, 4999), dtype=bool), low, high, per_band)
    assert [tuple(pair) for pair in limits.limits] == [tuple(pair) for pair in expected]
    assert limits.pixels == 4999


@pytest.mark.parametrize("text, message", [
    ("percentile:98,2", "LOW (98) must be below HIGH (2)"),
    ("percentile:5,5", "LOW (5) must be below HIGH (5)"),
    ("percentile:-1,98", "within 0 and 100"),
    ("percentile:2,101", "within 0 and 100"),
    ("percentile:2", "two numbers"),
    ("linear", "expected fixed or percentile:LOW,HIGH"),
])
def test_bad_stretch_option_is_one_line(text, message):
    with pytest.raises(InputError, match=re.escape(message)):
        parse_stretch(text)


def test_a_file_that_is_not_a_stretch_is_refused():
    for data in ({}, {"kind": "mpi_s2.stretch", "mode": "percentile"}, [1, 2], {"stretch": {"limits": []}}):
        with pytest.raises(InputError, match="not a stretch"):
            limits_from_dict(data, "x.json")


# --- end to end -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bands", ["linked", "per-band"])
@pytest.mark.parametrize("mode", ["first", "median"])
def test_output_equals_numpy_for_a_median_series_and_a_scene_with_nodata(series, tmp_path, mode, bands):
    """A median over 4 dates with the cloud mask; and one date alone (first, with its nodata corner)."""
    products = series.products if mode == "median" else series.products[:1]
    out = tmp_path / "s.tif"
    report = compose([*products, "--composite", mode, "--cloud-mask", "--stretch", "percentile:2,98",
                      "--stretch-bands", bands, "--window", "128", "--co", "BLOCKXSIZE=128", "--co",
                      "BLOCKYSIZE=128"], out)
    value, valid = composed_values(products, mode, cloud_mask=True)
    limits = numpy_limits(value, valid, 2, 98, bands == "per-band")
    assert [tuple(p) for p in report["stretch"]["limits"]] == [tuple(p) for p in limits]
    assert report["stretch"]["pixels"] == int(valid.sum()) and not valid.all()
    image = gdal.Open(str(out)).ReadAsArray()
    expected = numpy_render(value, valid, limits)
    assert np.count_nonzero(image != expected) == 0
    stored = json.loads(gdal.Open(str(out)).GetMetadataItem("MPI_S2_STRETCH"))
    assert stored["limits"] == report["stretch"]["limits"] and stored["bands"] == bands
    for entry in report["inputs"]:  # the counting pass decodes every block once; the rendering pass none
        assert entry["blocks"]["decoded"] == entry["blocks"]["distinct"] == entry["blocks"]["total"], entry
    assert sorted(os.listdir(tmp_path)) == ["s.report.json", "s.tif"]


def test_the_same_bytes_for_1_to_4_ranks_both_schedules_and_backends(series, tmp_path):
    args = [*series.products, "--composite", "median", "--cloud-mask", "--stretch", "percentile:1,99",
            "--window", "128", "--co", "BLOCKXSIZE=128", "--co", "BLOCKYSIZE=128"]
    compose(args, tmp_path / "base.tif", ranks=1)
    expected = gdal.Open(str(tmp_path / "base.tif")).ReadAsArray()
    for k, (ranks, extra) in enumerate([(2, ["--schedule", "static"]), (3, []), (4, ["--backend", "hdf5"]),
                                        (3, ["--backend", "hdf5", "--schedule", "static", "--cog"])]):
        out = tmp_path / f"run{k}.tif"
        compose([*args, *extra], out, ranks=ranks)
        assert np.array_equal(gdal.Open(str(out)).ReadAsArray(), expected), (ranks, extra)


def test_two_halves_with_stretch_from_match_the_whole_without_seams(tmp_path):
    """Two tiles side by side, composed as two jobs with --stretch-from of one mpi-s2 stretch over both: the
    halves equal the whole region composed at once, pixel for pixel."""
    halves = []
    for k in range(2):
        made = synthesize_series(str(tmp_path / f"half{k}"), SeriesOptions(
            dates=3, size=SIZE, jp2_block=128, seed=10 + k, origin=(ORIGIN[0] + k * SIZE * 10, ORIGIN[1])))
        halves.append(made.products)
    common = ["--composite", "median", "--cloud-mask"]
    stretch = tmp_path / "region.json"
    compose([*halves[0], *halves[1], *common], stretch, command="stretch")
    whole = tmp_path / "whole.tif"
    report = compose([*halves[0], *halves[1], *common, "--stretch", "percentile:2,98"], whole)
    assert json.loads(stretch.read_text())["limits"] == report["stretch"]["limits"]
    image = gdal.Open(str(whole)).ReadAsArray()
    for k in range(2):
        out = tmp_path / f"part{k}.tif"
        compose([*halves[k], *common, "--stretch-from", str(stretch)], out, ranks=2)
        part = gdal.Open(str(out)).ReadAsArray()
        assert np.array_equal(part, image[:, :, k * SIZE:(k + 1) * SIZE]), k
    # a job stretched on its own half alone would not match: the seam the shared limits remove
    alone = tmp_path / "alone.tif"
    compose([*halves[1], *common, "--stretch", "percentile:2,98"], alone, ranks=2)
    assert not np.array_equal(gdal.Open(str(alone)).ReadAsArray(), image[:, :, SIZE:])


def test_resume_keeps_the_limits_of_the_partial_run(series, tmp_path):
    args = ["compose", *series.products, "--composite", "median", "--cloud-mask", "--stretch", "percentile:2,98",
            "--window", "128", "--co", "BLOCKXSIZE=128", "--co", "BLOCKYSIZE=128", "-q"]
    whole = tmp_path / "whole.tif"
    assert run_mpi_s2([*args, "-o", str(whole)], ranks=3).returncode == 0
    out = tmp_path / "rgb.tif"
    killed = run_mpi_s2([*args, "-o", str(out)], ranks=3,
                        env={"MPI_S2_TEST_FAULT": "1:1:kill", "MPI_S2_COMMIT_INTERVAL": "0"})
    assert killed.returncode == 137, killed.stderr
    kept = tmp_path / ".rgb.tif.partial.stretch"
    assert json.loads(kept.read_text())["limits"] == json.loads(
        gdal.Open(str(whole)).GetMetadataItem("MPI_S2_STRETCH"))["limits"]
    resumed = run_mpi_s2([*args, "-o", str(out), "--resume", "--report", str(tmp_path / "r.json")], ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["windows_reused"] > 0
    assert "counted" not in json.dumps(report.get("progress", {}))
    assert np.array_equal(gdal.Open(str(out)).ReadAsArray(), gdal.Open(str(whole)).ReadAsArray())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "rgb.tif", "whole.tif"]
    # a kill in the counting pass leaves nothing to resume, and nothing beside the output
    early = tmp_path / "early.tif"
    killed = run_mpi_s2([*args, "-o", str(early)], ranks=3, env={"MPI_S2_TEST_FAULT": "1:1:kill:counted"})
    assert killed.returncode == 137, killed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "rgb.tif", "whole.tif"]


@pytest.mark.parametrize("case, extra, message", [
    ("low-high", ["--stretch", "percentile:98,2"], "--stretch percentile:98,2: LOW (98) must be below HIGH (2)"),
    ("range", ["--stretch", "percentile:2,120"], "--stretch percentile:2,120: percentiles must lie within 0 "
                                                  "and 100"),
    ("not-a-stretch", ["--stretch-from", "{report}"], "not a stretch"),
    ("no-valid-pixel", ["--stretch", "percentile:2,98", "--mask-classes", ",".join(map(str, range(12)))],
     "no valid pixel to take percentiles of"),
])
def test_bad_stretch_input_is_one_line(series, tmp_path, case, extra, message):
    not_a_stretch = tmp_path / "other.json"
    not_a_stretch.write_text(json.dumps({"output": "x.tif", "windows": 4}))
    extra = [e.replace("{report}", str(not_a_stretch)) for e in extra]
    out = tmp_path / "out.tif"
    result = run_mpi_s2(["compose", *series.products, "--cloud-mask", "-o", str(out), "-q", *extra], ranks=3)
    assert result.returncode == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json"]


@pytest.mark.parametrize("bands", ["linked", "per-band"])
def test_a_real_l2a_clip_equals_numpy(tmp_path, bands):
    """The real Earth Search COGs of T29RKH (100 m, SCL 200 m), first valid with the cloud mask, 2-98 %."""
    from conftest import REAL_DATA, require

    real = REAL_DATA / "l2a-cog-T29RKH"
    require((real / "B04.tif").exists(), f"the real Sentinel-2 files in {real}",
            "put the project's shared/ beside the checkout, or set MPI_S2_REAL_DATA=DIR")
    dn = np.stack([gdal.Open(str(real / f"{b}.tif")).ReadAsArray() for b in ("B04", "B03", "B02")])
    scl = gdal.Open(str(real / "SCL.tif")).ReadAsArray()
    classes = np.repeat(np.repeat(scl, 2, axis=0), 2, axis=1)[:dn.shape[1], :dn.shape[2]]
    valid = (dn != 0).all(axis=0) & ~np.isin(classes, (3, 8, 9, 10))
    value = dn.astype(np.float64)  # band files: offset 0
    out = tmp_path / "real.tif"
    report = compose(["--red", str(real / "B04.tif"), "--green", str(real / "B03.tif"), "--blue",
                      str(real / "B02.tif"), "--scl", str(real / "SCL.tif"), "--stretch", "percentile:2,98",
                      "--stretch-bands", bands], out)
    limits = numpy_limits(value, valid, 2, 98, bands == "per-band")
    assert [tuple(p) for p in report["stretch"]["limits"]] == [tuple(p) for p in limits]
    assert np.count_nonzero(gdal.Open(str(out)).ReadAsArray() != numpy_render(value, valid, limits)) == 0
    image = gdal.Open(str(out)).ReadAsArray()[:3][:, valid]
    assert image.std() > 40  # the stretch fills the range (the fixed default gives about 9 on such a scene)


@pytest.mark.parametrize("bands", ["linked", "per-band"])
def test_a_2x2_mosaic_of_2_dates_equals_numpy(tmp_path, bands):
    """Four overlapping tiles x 2 dates, median with the cloud mask, 1-99 %: every observation counts and the
    percentiles are over the whole mosaic."""
    shift = 2000.0  # metres: tiles of 256 px overlap by 56 px
    width = SIZE + int(shift / 10)
    v = np.zeros((8, 3, width, width))
    valid = np.zeros((8, width, width), dtype=bool)
    products = []
    for k, (dx, dy) in enumerate([(0, 0), (shift, 0), (0, -shift), (shift, -shift)]):
        made = synthesize_series(str(tmp_path / f"tile{k}"), SeriesOptions(
            dates=2, size=SIZE, jp2_block=128, seed=k + 1, origin=(ORIGIN[0] + dx, ORIGIN[1] + dy)))
        col, row = int(dx / 10), int(-dy / 10)
        for d, product in enumerate(made.products):
            values, ok = observation(product, cloud_mask=True)
            v[2 * k + d, :, row:row + SIZE, col:col + SIZE] = values
            valid[2 * k + d, row:row + SIZE, col:col + SIZE] = ok
            products.append(product)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        value = np.nanmedian(np.where(valid[:, None], v, np.nan), axis=0)
    any_valid = valid.any(axis=0)
    out = tmp_path / "mosaic.tif"
    report = compose([*products, "--composite", "median", "--cloud-mask", "--stretch", "percentile:1,99",
                      "--stretch-bands", bands], out)
    limits = numpy_limits(np.nan_to_num(value), any_valid, 1, 99, bands == "per-band")
    assert [tuple(p) for p in report["stretch"]["limits"]] == [tuple(p) for p in limits]
    assert np.count_nonzero(gdal.Open(str(out)).ReadAsArray() != numpy_render(value, any_valid, limits)) == 0
