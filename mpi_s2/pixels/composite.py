"""Multi-date compositing: one value per pixel from the valid observations of a stack of inputs.

An *observation* of a pixel is one input that covers it; it is *valid* when none of its three bands is the
nodata DN and, with cloud masking, its scene class is not masked. Values are harmonised per input:
``v = DN + offset`` with that input's own (integer) offset, so products of baseline 04.00 and older mix.

* ``median``: per band and pixel, the median of ``v`` over the valid observations, as ``numpy.median`` takes it
  (the mean of the two middle values for an even count). Kept on a doubled scale, ``2 * median``, an integer,
  so nothing is rounded before the lookup table.
* ``medoid``: per pixel, the valid observation whose three values are nearest to the per-band medians (sum of
  absolute differences); ties go to the earliest observation in the stack's order. All three bands come from
  that one observation.

Both are rendered by one lookup table on the doubled scale (:func:`doubled_lut`), with the contract's formula
``out = floor(255 * clip((v / scale) / max_reflectance, 0, 1) ** (1 / gamma) + 0.5)``.

Memory: a stack of T observations over N pixels holds the DNs (``T x 3 x N`` uint16), the valid flags
(``T x N``) and, one band at a time, the harmonised values (``T x N`` int32, sorted in place) and the
medoid's distances (``T x N`` int32): :data:`STACK_BYTES_PER_SAMPLE` bytes per observation and pixel.
"""

from __future__ import annotations

import math

import numpy as np

from mpi_s2.errors import InputError
from mpi_s2.pixels.radiometry import Stretch

COMPOSITES = ("first", "median", "medoid")
#: bytes per observation and pixel a composite's stack takes (see the module's docstring)
STACK_BYTES_PER_SAMPLE = 3 * 2 + 1 + 4 + 4
_INVALID = np.iinfo(np.int32).max  # sorts after every value


def check_stretches(stretches: list[tuple[Stretch, Stretch, Stretch]], labels: list[str]) -> tuple[Stretch, int]:
    """The common stretch of a median or medoid composite and the smallest offset (harmonised values must be
    exact integers on one scale): one line naming the input that breaks it."""
    first = stretches[0][0]
    for label, bands in zip(labels, stretches, strict=True):
        for s in bands:
            if s.scale != first.scale:
                raise InputError(f"{label}: its quantification ({s.scale:g}) differs from {labels[0]}'s "
                                 f"({first.scale:g}): a median over dates needs one scale")
            if not float(s.offset).is_integer():
                raise InputError(f"{label}: offset {s.offset:g} is not a whole number of DN: a median over dates "
                                 f"harmonises DN + offset exactly")
    return first, int(min(s.offset for bands in stretches for s in bands))


def doubled_lut(stretch: Stretch, min_offset: int, max_offset: int, *, reserve_zero: bool) -> tuple[np.ndarray, int]:
    """The uint8 table of ``2 * v`` for every harmonised value ``v`` (half-integers too), and its base: entry
    ``k`` is the display value of ``v = (k + base) / 2``."""
    base = 2 * (1 + min_offset)  # DN 1 (the smallest valid) with the smallest offset
    top = 2 * (65535 + max_offset)
    v = (np.arange(base, top + 1, dtype=np.float64)) / 2.0
    ratio = np.clip((v / stretch.scale) / stretch.max_reflectance, 0.0, 1.0)
    lut = np.floor(255.0 * np.power(ratio, 1.0 / stretch.gamma) + 0.5).astype(np.uint8)
    if reserve_zero:
        np.maximum(lut, 1, out=lut)
    return lut, base


def harmonised(dn: np.ndarray, offsets: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``(T, N)`` int32: ``DN + offset`` of each observation (``offsets``: ``(T,)``, this band's) where valid,
    and a value that sorts last elsewhere."""
    v = dn.astype(np.int32)
    v += offsets[:, None]
    v[~valid] = _INVALID
    return v


def doubled_median(v: np.ndarray, count: np.ndarray) -> np.ndarray:
    """``2 * median`` per pixel of ``v`` (``(T, N)`` from :func:`harmonised`, sorted in place here) over its
    ``count`` valid observations (int64; 0 where none)."""
    v.sort(axis=0)
    lower = np.maximum(count - 1, 0) // 2
    upper = np.maximum(count, 1) // 2
    picked = np.take_along_axis(v, lower[None, :], axis=0)[0].astype(np.int64)
    picked += np.take_along_axis(v, np.minimum(upper, v.shape[0] - 1)[None, :], axis=0)[0]
    picked[count == 0] = 0
    return picked


def composite(dn: np.ndarray, offsets: np.ndarray, valid: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """The composite of a stack: ``dn`` ``(T, 3, N)`` uint16, ``offsets`` ``(T, 3)`` int (per observation and
    band), ``valid`` ``(T, N)``.

    Returns ``(doubled, any_valid)``: ``(3, N)`` int64 values ``2 * v`` to render with :func:`doubled_lut`
    (0 where no observation is valid), and where some observation is."""
    count = valid.sum(axis=0)
    any_valid = count > 0
    t, _, n = dn.shape
    medians = np.empty((3, n), dtype=np.int64)
    for b in range(3):
        medians[b] = doubled_median(harmonised(dn[:, b], offsets[:, b], valid), count)
    if mode == "median":
        return medians, any_valid
    if mode != "medoid":
        raise ValueError(mode)
    distance = np.zeros((t, n), dtype=np.int32)
    for b in range(3):
        v2 = dn[:, b].astype(np.int32)
        v2 += offsets[:, b, None].astype(np.int32)
        v2 *= 2
        v2 -= medians[b].astype(np.int32)[None, :]
        np.abs(v2, out=v2)
        distance += v2
    distance[~valid] = _INVALID
    chosen = np.argmin(distance, axis=0)  # the first of equal distances: the earliest in order
    out = np.empty((3, n), dtype=np.int64)
    for b in range(3):
        picked = np.take_along_axis(dn[:, b], chosen[None, :], axis=0)[0].astype(np.int64)
        out[b] = 2 * (picked + offsets[chosen, b])
    out[:, ~any_valid] = 0
    return out, any_valid


def window_budget_side(observations: int, tile: int, budget: int, preferred: int) -> int | None:
    """The largest window side (a multiple of ``tile``, at most ``preferred``) whose stack of ``observations``
    fits ``budget`` bytes; None when not even one tile does."""
    side = max(tile, preferred - preferred % tile)
    while side >= tile:
        if observations * STACK_BYTES_PER_SAMPLE * side * side <= budget:
            return side
        side = tile * max(1, math.floor(side / tile / 2)) if side > tile else 0
    return None
