"""A contrast stretch from the whole run's values: exact global percentiles, one stretch everywhere.

``--stretch fixed`` (the default) is the radiometric contract of :mod:`mpi_s2.pixels.radiometry`, a linear clamp
at ``--max-reflectance``. ``--stretch percentile:LOW,HIGH`` takes, over every valid output pixel of the run, the
LOW and HIGH percentiles of the harmonised values ``v = DN + offset`` the output is rendered from (after the
mosaic or the ``--composite``), as ``numpy.percentile(values, p, method="inverted_cdf")`` takes them: the
smallest value ``x`` with ``count(values <= x) >= p / 100 * N``. It then renders::

    out = floor(255 * clip((v - low) / (high - low), 0, 1) ** (1 / gamma) + 0.5)

``linked`` pools the three bands into one pair of limits (hues kept); ``per-band`` takes one pair per band
(white balanced too).

Values are counted on the doubled scale ``2 v`` (a median of an even count is a half-integer), into one
histogram per band: :class:`ValueHistogram`. Histograms of separate ranks add up (one ``Allreduce``), so the
limits are exact whatever the split of the windows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mpi_s2.errors import InputError

STRETCHES = ("fixed", "percentile")
STRETCH_BANDS = ("linked", "per-band")
#: harmonised values lie within DN 1 + the smallest offset and DN 65535 + the largest; offsets within this
#: range (Sentinel-2's are 0 and -1000): the histogram's doubled-scale base and size
OFFSET_RANGE = (-2000, 2000)
HIST_BASE = 2 * (1 + OFFSET_RANGE[0])
HIST_SIZE = 2 * (65535 + OFFSET_RANGE[1]) - HIST_BASE + 1
#: the GeoTIFF metadata item that records the stretch of an output (default domain)
STRETCH_ITEM = "MPI_S2_STRETCH"
#: the ``kind`` of a stretch file (``mpi-s2 stretch``'s output, or the ``stretch`` of a run report)
STRETCH_KIND = "mpi_s2.stretch"


@dataclass(frozen=True, slots=True)
class StretchRequest:
    """``--stretch`` and ``--stretch-bands``: how the limits are found."""

    mode: str = "fixed"
    low: float = 2.0  # percentiles (mode "percentile")
    high: float = 98.0
    bands: str = "linked"

    @property
    def percentile(self) -> bool:
        return self.mode == "percentile"


def parse_stretch(text: str, bands: str = "linked") -> StretchRequest:
    """``fixed`` or ``percentile:LOW,HIGH`` (0 <= LOW < HIGH <= 100): one line naming the option otherwise."""
    if bands not in STRETCH_BANDS:
        raise InputError(f"--stretch-bands {bands}: expected linked or per-band")
    if text == "fixed":
        return StretchRequest("fixed", bands=bands)
    mode, _, limits = text.partition(":")
    if mode != "percentile" or not limits:
        raise InputError(f"--stretch {text}: expected fixed or percentile:LOW,HIGH (e.g. percentile:2,98)")
    try:
        low, high = (float(part) for part in limits.split(","))
    except ValueError:
        raise InputError(f"--stretch {text}: LOW,HIGH must be two numbers, e.g. percentile:2,98") from None
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= 100 and 0 <= high <= 100):
        raise InputError(f"--stretch {text}: percentiles must lie within 0 and 100")
    if low >= high:
        raise InputError(f"--stretch {text}: LOW ({low:g}) must be below HIGH ({high:g})")
    return StretchRequest("percentile", low, high, bands)


def check_offsets(offsets: list[float], labels: list[str]) -> None:
    """A percentile stretch counts ``DN + offset`` exactly: whole offsets within :data:`OFFSET_RANGE`."""
    for offset, label in zip(offsets, labels, strict=True):
        if not float(offset).is_integer() or not OFFSET_RANGE[0] <= offset <= OFFSET_RANGE[1]:
            raise InputError(f"{label}: offset {offset:g} is not a whole number within {OFFSET_RANGE[0]} and "
                             f"{OFFSET_RANGE[1]}: a percentile stretch counts DN + offset exactly")


class ValueHistogram:
    """Per band, how many valid output pixels have each doubled harmonised value ``2 v`` (int64 counts, index
    ``2 v - HIST_BASE``)."""

    def __init__(self, counts: np.ndarray | None = None):
        self.counts = np.zeros((3, HIST_SIZE), dtype=np.int64) if counts is None else counts

    @property
    def pixels(self) -> int:
        return int(self.counts[0].sum())


def inverted_cdf_index(n: int, percent: float) -> int:
    """The 0-based rank in ``n`` sorted values of ``numpy.percentile(..., method="inverted_cdf")``."""
    q = np.float64(percent) / 100.0
    virtual = n * q - 1
    below = math.floor(virtual)
    rank = below if virtual - below == 0 else below + 1
    return min(max(rank, 0), n - 1)


def _value_at(cumulative: np.ndarray, rank: int) -> float:
    """The value (``v``) of the 0-based ``rank`` of the counted values."""
    k = int(np.searchsorted(cumulative, rank + 1, side="left"))
    return (k + HIST_BASE) / 2.0


@dataclass(frozen=True, slots=True)
class StretchLimits:
    """The stretch a run applies: ``limits[b] = (low, high)`` in harmonised values, per band (the same three
    times when linked)."""

    mode: str
    percentiles: tuple[float, float]
    bands: str
    limits: tuple[tuple[float, float], tuple[float, float], tuple[float, float]]
    pixels: int

    def as_dict(self) -> dict:
        return {"kind": STRETCH_KIND, "mode": self.mode, "percentiles": list(self.percentiles), "bands": self.bands,
                "limits": [list(pair) for pair in self.limits], "pixels": self.pixels}

    def metadata(self) -> str:
        """The GeoTIFF metadata item (``MPI_S2_STRETCH``)."""
        return json.dumps(self.as_dict(), separators=(",", ":"))


def percentile_limits(histogram: ValueHistogram, request: StretchRequest) -> StretchLimits:
    """The limits of ``request`` over the counted values; one line when no pixel was counted."""
    counts = histogram.counts
    if histogram.pixels == 0:
        raise InputError(f"--stretch percentile:{request.low:g},{request.high:g}: no valid pixel to take "
                         "percentiles of (every input is masked or DN 0 in the output's area)")
    pools = [counts.sum(axis=0)] if request.bands == "linked" else list(counts)
    pairs = []
    for pool in pools:
        cumulative = np.cumsum(pool)
        n = int(cumulative[-1])
        pairs.append((_value_at(cumulative, inverted_cdf_index(n, request.low)),
                      _value_at(cumulative, inverted_cdf_index(n, request.high))))
    limits = tuple(pairs * 3) if request.bands == "linked" else tuple(pairs)
    return StretchLimits("percentile", (request.low, request.high), request.bands, limits,  # type: ignore[arg-type]
                         histogram.pixels)


def render_values(v: np.ndarray, low: float, high: float, gamma: float) -> np.ndarray:
    """uint8 display values of harmonised values ``v`` (float64) with limits ``low``, ``high``: the formula.

    Equal limits (one value everywhere) render that value at 255 and everything below it at 0."""
    if high > low:
        ratio = np.clip((v - low) / (high - low), 0.0, 1.0)
    else:
        ratio = (v >= high).astype(np.float64)
    return np.floor(255.0 * np.power(ratio, 1.0 / gamma) + 0.5).astype(np.uint8)


def dn_luts(limits: StretchLimits, offsets: Sequence[Sequence[float]], gamma: float, *,
            reserve_zero: bool) -> np.ndarray:
    """``(sources, 3, 65536)`` uint8 tables by DN: entry ``dn`` of source ``i``, band ``b`` renders
    ``v = dn + offsets[i][b]`` (the first-valid mosaic's tables)."""
    dn = np.arange(1 << 16, dtype=np.float64)
    out = np.empty((len(offsets), 3, 1 << 16), dtype=np.uint8)
    for i, source in enumerate(offsets):
        for b in range(3):
            out[i, b] = render_values(dn + source[b], *limits.limits[b], gamma)
    if reserve_zero:
        np.maximum(out, 1, out=out)
    return out


def doubled_luts(limits: StretchLimits, gamma: float, base: int, size: int, *, reserve_zero: bool) -> np.ndarray:
    """``(3, size)`` uint8 tables on the doubled scale: entry ``k`` renders ``v = (k + base) / 2`` (a median or
    medoid composite's tables; see :func:`mpi_s2.pixels.composite.doubled_lut`)."""
    v = np.arange(base, base + size, dtype=np.float64) / 2.0
    out = np.stack([render_values(v, *limits.limits[b], gamma) for b in range(3)])
    if reserve_zero:
        np.maximum(out, 1, out=out)
    return out


def read_limits(path: str) -> StretchLimits:
    """The stretch of ``path``: a file of ``mpi-s2 stretch``, or a run report with one; one line otherwise."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except OSError as exc:
        raise InputError(f"--stretch-from {path}: cannot be read ({exc.strerror})") from None
    except ValueError:
        raise InputError(f"--stretch-from {path}: not JSON (expected the output of mpi-s2 stretch or a run "
                         "report)") from None
    if isinstance(data, dict) and isinstance(data.get("stretch"), dict):
        data = data["stretch"]
    return limits_from_dict(data, f"--stretch-from {path}")


def limits_from_dict(data: object, where: str) -> StretchLimits:
    """A :class:`StretchLimits` from its :meth:`StretchLimits.as_dict`; one line naming ``where`` otherwise."""
    problem = InputError(f"{where}: not a stretch (expected the output of mpi-s2 stretch, or the report of a "
                         "--stretch percentile run)")
    if not (isinstance(data, dict) and data.get("kind") == STRETCH_KIND and data.get("mode") == "percentile"):
        raise problem
    try:
        pairs = [(float(low), float(high)) for low, high in data["limits"]]
        low, high = (float(p) for p in data["percentiles"])
        pixels, bands = int(data["pixels"]), str(data["bands"])
    except (KeyError, TypeError, ValueError):
        raise problem from None
    if len(pairs) != 3 or not all(math.isfinite(x) for pair in pairs for x in pair) or bands not in STRETCH_BANDS:
        raise problem
    return StretchLimits("percentile", (low, high), bands, (pairs[0], pairs[1], pairs[2]), pixels)


# --- the values a counting pass keeps: ``2 v - HIST_BASE + 1`` (0: nodata), what the rendering pass reads back ---

class ValueTables:
    """Per source and band, the uint32 table by DN of the kept value of ``v = dn + offset`` (the first-valid
    mosaic composes these instead of display values in its counting pass). Indexed like the display tables,
    ``tables[i, b]`` or ``tables[i]``; one table per distinct offset (Sentinel-2 has two), however many
    sources."""

    def __init__(self, offsets: Sequence[Sequence[float]]):
        distinct = sorted({int(o) for source in offsets for o in source})
        dn = np.arange(1 << 16, dtype=np.int64)
        self._tables = {o: np.maximum(2 * (dn + o) - HIST_BASE + 1, 1).astype(np.uint32) for o in distinct}
        self._offsets = [tuple(int(o) for o in source) for source in offsets]

    def __getitem__(self, key):
        if isinstance(key, tuple):
            i, b = key
            return self._tables[self._offsets[i][b]]
        return tuple(self._tables[o] for o in self._offsets[key])


def doubled_value_table(base: int, size: int) -> np.ndarray:
    """``(size,)`` uint32: the kept value of doubled-scale entry ``k`` (``2 v = k + base``)."""
    return (np.arange(base, base + size, dtype=np.int64) - HIST_BASE + 1).astype(np.uint32)


def kept_display_luts(limits: StretchLimits, gamma: float, *, reserve_zero: bool) -> np.ndarray:
    """``(3, HIST_SIZE + 1)`` uint8 tables of kept values: entry 0 is nodata (0), entry ``j`` renders
    ``v = (j - 1 + HIST_BASE) / 2``."""
    out = np.zeros((3, HIST_SIZE + 1), dtype=np.uint8)
    out[:, 1:] = doubled_luts(limits, gamma, HIST_BASE, HIST_SIZE, reserve_zero=reserve_zero)
    return out


def count_kept(histogram: ValueHistogram, kept: np.ndarray) -> None:
    """Count kept values (``(3, N)``, 0 where nodata) into ``histogram`` (nodata lands in a bin dropped here:
    no mask to apply)."""
    for b in range(3):
        histogram.counts[b] += np.bincount(kept[b], minlength=HIST_SIZE + 1)[1:]
