"""Multi-date compositing, the pure parts (no MPI): median and medoid of a stack against numpy written from the
definitions, the doubled lookup table against the formula, the window budget, and the selection and order of
inputs (--dates, --max-cloud-cover, --order)."""

from __future__ import annotations

import numpy as np
import pytest

from mpi_s2.errors import InputError
from mpi_s2.pixels.composite import (
    STACK_BYTES_PER_SAMPLE,
    check_stretches,
    composite,
    doubled_lut,
    sort_rows,
    sorting_network,
    window_budget_side,
)
from mpi_s2.pixels.radiometry import Stretch
from mpi_s2.planning.mosaic import TileInput
from mpi_s2.planning.observations import order_inputs, select_inputs


def reference(dn: np.ndarray, offsets: np.ndarray, valid: np.ndarray, mode: str) -> np.ndarray:
    """float64 per pixel: numpy.median over the valid harmonised values; the medoid by its definition (the first
    of equal distances). NaN where no observation is valid."""
    t, _, n = dn.shape
    v = dn.astype(np.float64) + offsets[:, :, None]
    out = np.full((3, n), np.nan)
    for p in range(n):
        rows = np.flatnonzero(valid[:, p])
        if not len(rows):
            continue
        median = np.median(v[rows, :, p], axis=0)
        if mode == "median":
            out[:, p] = median
        else:
            distance = np.abs(v[rows, :, p] - median).sum(axis=1)
            out[:, p] = v[rows[int(np.argmin(distance))], :, p]
    return out


@pytest.mark.parametrize("mode", ["median", "medoid"])
@pytest.mark.parametrize("dates", [1, 2, 3, 4, 7, 12, 32, 33])
def test_composite_equals_numpy_from_the_definition(mode, dates):
    rng = np.random.default_rng(dates)
    n = 4000
    dn = rng.integers(0, 12000, (dates, 3, n)).astype(np.uint16)
    dn[rng.random((dates, 3, n)) < 0.05] = 0
    dn[:, :, :40] = rng.integers(1000, 1003, (dates, 3, 40))  # many ties
    offsets = np.array([[-1000] * 3 if t % 2 else [0] * 3 for t in range(dates)])  # baselines both sides of 04.00
    valid = (dn != 0).all(axis=1) & (rng.random((dates, n)) > 0.25)
    valid[:, 100] = False  # no valid observation
    doubled, any_valid = composite(dn, offsets, valid, mode, strip=1500)  # strips of 1500 pixels, and a rest
    expected = reference(dn, offsets, valid, mode)
    assert np.array_equal(any_valid, ~np.isnan(expected[0]))
    assert np.array_equal(doubled[:, any_valid] / 2.0, expected[:, any_valid])
    assert (doubled[:, ~any_valid] == 0).all()
    counts = valid.sum(axis=0)
    if dates >= 2:  # both parities of valid counts occur: halves from even counts, whole values from odd ones
        assert (counts % 2 == 0).any() and (counts % 2 == 1).any()
    if mode == "median" and dates >= 2:
        assert (doubled[:, any_valid] % 2 == 1).any()  # a half-integer median, kept exact


@pytest.mark.parametrize("mode", ["median", "medoid"])
def test_composite_at_the_ends_of_the_dn_range(mode):
    """DN 1 with offset -1000 beside DN 65535 with offset 0: no overflow, the same values as numpy."""
    rng = np.random.default_rng(7)
    dates, n = 5, 3000
    dn = np.where(rng.random((dates, 3, n)) < 0.5, 1, 65535).astype(np.uint16)
    offsets = np.array([[-1000] * 3, [0] * 3, [-1000] * 3, [0] * 3, [-1000] * 3])
    valid = rng.random((dates, n)) > 0.2
    doubled, any_valid = composite(dn, offsets, valid, mode)
    expected = reference(dn, offsets, valid, mode)
    assert np.array_equal(doubled[:, any_valid] / 2.0, expected[:, any_valid])


@pytest.mark.parametrize("n", list(range(1, 34)) + [64])
def test_the_sorting_network_sorts_like_numpy(n):
    rng = np.random.default_rng(n)
    values = rng.integers(-5, 5, (n, 500)).astype(np.int32)  # many ties
    values[:, :3] = np.arange(n)[::-1, None]  # reversed
    expected = np.sort(values, axis=0)
    sort_rows(values, np.empty(500, dtype=np.int32))
    assert np.array_equal(values, expected)
    assert all(0 <= a < b < n for a, b in sorting_network(n))


@pytest.mark.parametrize("gamma, top", [(2.2, 1.0), (1.0, 0.3), (1.7, 0.25)])
def test_doubled_lut_is_the_formula_on_half_integers(gamma, top):
    stretch = Stretch(offset=-1000, scale=10000.0, max_reflectance=top, gamma=gamma)
    lut, base = doubled_lut(stretch, -1000, 0, reserve_zero=False)
    v = np.array([-999, -0.5, 0, 0.5, 1, 1234.5, 2999.5, 3000, 64534.5, 65535])
    expected = np.floor(255 * np.clip((v / 10000.0) / top, 0, 1) ** (1 / gamma) + 0.5)
    assert np.array_equal(lut[(2 * v).astype(np.int64) - base], expected.astype(np.uint8))
    assert lut.size == 2 * (65535 - (1 - 1000)) + 1
    reserved, _ = doubled_lut(stretch, -1000, 0, reserve_zero=True)
    assert reserved.min() == 1


def test_one_scale_and_whole_offsets_or_one_line():
    a, b = Stretch(offset=-1000), Stretch(offset=0)
    assert check_stretches([(a, a, a), (b, b, b)], ["x", "y"]) == (a, -1000)
    with pytest.raises(InputError, match=r"^y: its quantification \(1000\) differs from x's \(10000\)"):
        check_stretches([(a, a, a), (Stretch(scale=1000),) * 3], ["x", "y"])
    with pytest.raises(InputError, match=r"^y: offset 0.5 is not a whole number of DN"):
        check_stretches([(a, a, a), (Stretch(offset=0.5),) * 3], ["x", "y"])


def test_window_budget_side():
    budget = 100 * 1024 * 1024
    assert window_budget_side(6, 512, budget, 1024) == 1024  # 6 dates of 1024^2 fit
    side = window_budget_side(32, 512, budget, 1024)  # 32 dates: 512 (1024 would take 224 MB)
    assert side == 512 and 32 * STACK_BYTES_PER_SAMPLE * side**2 <= budget
    assert window_budget_side(32, 256, budget, 1024) == 512
    assert window_budget_side(1000, 512, budget, 1024) is None


def tile(label: str, date: str | None, cloud: float | None, time: str | None = None) -> TileInput:
    s = Stretch()
    return TileInput(label, (label, label, label), None, (s, s, s), "", date=date, sensing_time=time,
                     cloud_cover=cloud, cloud_cover_from="metadata" if cloud is not None else "")


def test_order_by_date_cloud_cover_and_given():
    tiles = [tile("a", "2023-07-01", 30.0), tile("b", "2023-06-01", 5.0), tile("c", "2023-07-01", 5.0),
             tile("d", "2023-05-01", 80.0)]
    labels = lambda ts: [t.label for t in ts]  # noqa: E731
    assert labels(order_inputs(tiles, "given")) == ["a", "b", "c", "d"]
    assert labels(order_inputs(tiles, "date")) == ["d", "b", "a", "c"]  # equal dates: the given order
    assert labels(order_inputs(tiles, "date-desc")) == ["a", "c", "b", "d"]
    assert labels(order_inputs(tiles, "cloud-cover")) == ["b", "c", "a", "d"]  # equal cover: earlier date first


def test_select_by_dates_and_cloud_cover_says_what_it_dropped():
    tiles = [tile("a", "2023-07-01", 30.0), tile("b", "2023-06-01", 5.0), tile("c", "2023-08-01", 50.0)]
    kept, notes = select_inputs(tiles, ("2023-06-01", "2023-07-01"), 20.0)
    assert [t.label for t in kept] == ["b"]
    assert notes == ["--dates 2023-06-01/2023-07-01 dropped 1 of 3 inputs (acquired outside it)",
                     "--max-cloud-cover 20 dropped 1 of 2 inputs (cloudier)"]
    with pytest.raises(InputError, match=r"^no input left: --dates 2024-01-01/2024-02-01 dropped 3 of 3"):
        select_inputs(tiles, ("2024-01-01", "2024-02-01"), None)
    with pytest.raises(InputError, match=r"^x: has no date \(--dates needs it; give --date per band set\)"):
        select_inputs([tile("x", None, None)], ("2023-01-01", "2023-12-31"), None)
    with pytest.raises(InputError, match=r"^x: has no cloud cover \(--order cloud-cover needs it; give --scl"):
        order_inputs([tile("x", None, None)], "cloud-cover")


# ---------------------------------------------------------------------------- the planner's window budget
@pytest.fixture(scope="module")
def dates_1024(tmp_path_factory):
    """Four band sets of 1024 x 1024 (GeoTIFF tiled 512): four observations of every pixel."""
    from conftest import write_band

    directory = tmp_path_factory.mktemp("dates")
    rng = np.random.default_rng(3)
    sets = []
    for k in range(4):
        sets.append(tuple(write_band(directory / f"{b}-{k}.tif", rng.integers(1, 5000, (1024, 1024), dtype=np.uint16),
                                     block=512) for b in ("B04", "B03", "B02")))
    return directory, sets


def plan_for(directory, sets, **options):
    from mpi_s2.config import BandFiles, ComposeConfig
    from mpi_s2.planning.plan import make_plan

    config = ComposeConfig(output=str(directory / "out.tif"), band_sets=tuple(BandFiles(*s) for s in sets),
                           composite="median", overwrite=True, **options)
    return make_plan(config)


def test_windows_shrink_until_a_stack_fits_the_budget_and_the_report_says_so(dates_1024, monkeypatch, caplog):
    import mpi_s2.planning.plan as planning

    directory, sets = dates_1024
    assert plan_for(directory, sets).window_size == (1024, 1024)  # 4 x 15 B x 1024^2 = 60 MB: fits
    monkeypatch.setattr(planning, "COMPOSITE_STACK_BUDGET", 4 * STACK_BYTES_PER_SAMPLE * 512 * 512)
    plan = plan_for(directory, sets)
    assert plan.window_size == (512, 512) and plan.observations == 4 and len(plan.windows) == 4
    with caplog.at_level("WARNING", logger="mpi_s2"):  # --window wins, with one line
        plan = plan_for(directory, sets, window=1024)
    assert plan.window_size == (1024, 1024)
    assert [r.getMessage() for r in caplog.records] == [
        "--window 1024: a --composite median window of 4 observations takes 28 MB per rank, above the 7 MB "
        "budget (omit --window to fit it)"]
    monkeypatch.setattr(planning, "COMPOSITE_STACK_BUDGET", 1000)
    with pytest.raises(InputError, match=r"^--composite median: 4 observations of one 512 x 512 output tile take "
                                         r"7 MB, above the 0 MB a rank may hold: use fewer dates"):
        plan_for(directory, sets)
