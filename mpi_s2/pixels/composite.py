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

Memory: a stack of T observations over N pixels holds the DNs (``T x 3 x N`` uint16) and the valid flags
(``T x N``): :data:`STACK_BYTES_PER_SAMPLE` bytes per observation and pixel, and the result (``3 x N`` int32).
The harmonised values (sorted in place) and the medoid's distances are worked out a strip of pixels at a time.
"""

from __future__ import annotations

import math

import numpy as np

from mpi_s2.errors import InputError
from mpi_s2.pixels.radiometry import Stretch

COMPOSITES = ("first", "median", "medoid")
#: bytes per observation and pixel of a window's stack: three uint16 DNs and the valid flag (the temporaries
#: are per strip of :data:`STRIP_PIXELS`, see :func:`composite`)
STACK_BYTES_PER_SAMPLE = 3 * 2 + 1
_INVALID = np.iinfo(np.int32).max  # sorts after every value
#: pixels worked out at a time (the temporaries: a few int32 per observation and pixel of the strip)
STRIP_PIXELS = 1 << 16


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


def harmonised(dn: np.ndarray, offsets: np.ndarray, invalid: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out`` (``(T, n)`` int32): ``DN + offset`` of each observation (``offsets``: ``(T,)``, this band's),
    and a value that sorts last where ``invalid``."""
    np.add(dn, offsets[:, None], out=out, casting="unsafe")
    np.copyto(out, _INVALID, where=invalid)
    return out


def _median_picks(count: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices into a sorted ``(t, n)`` stack of the two middle values of each pixel's ``count``."""
    n = count.size
    column = np.arange(n, dtype=np.intp)
    lower = (np.maximum(count, 1) - 1) // 2
    upper = np.minimum(count // 2, t - 1)
    return lower * n + column, upper * n + column


def composite(dn: np.ndarray, offsets: np.ndarray, valid: np.ndarray, mode: str,
              strip: int = STRIP_PIXELS) -> tuple[np.ndarray, np.ndarray]:
    """The composite of a stack: ``dn`` ``(T, 3, N)`` uint16, ``offsets`` ``(T, 3)`` int (per observation and
    band), ``valid`` ``(T, N)``.

    Returns ``(doubled, any_valid)``: ``(3, N)`` int32 values ``2 * v`` to render with :func:`doubled_lut`
    (0 where no observation is valid), and where some observation is. Worked out ``strip`` pixels at a time,
    so that the temporaries stay small beside the stack."""
    t, _, n = dn.shape
    doubled = np.zeros((3, n), dtype=np.int32)
    any_valid = np.zeros(n, dtype=bool)
    if mode not in ("median", "medoid"):
        raise ValueError(mode)
    width = min(n, strip) if n else 0
    work = np.empty((t, width), dtype=np.int32)
    distance = np.empty((t, width), dtype=np.int32) if mode == "medoid" else None
    offsets = np.asarray(offsets, dtype=np.int32)
    for start in range(0, n, max(1, width)):
        stop = min(n, start + width)
        m = stop - start
        part_valid = valid[:, start:stop]
        invalid = ~part_valid
        count = part_valid.sum(axis=0, dtype=np.int32)
        found = count > 0
        any_valid[start:stop] = found
        low, high = _median_picks(count, t)
        v = work[:, :m]
        medians = doubled[:, start:stop]
        for b in range(3):
            harmonised(dn[:, b, start:stop], offsets[:, b], invalid, v)
            v.sort(axis=0)
            flat = v.ravel()
            np.add(flat.take(low), flat.take(high), out=medians[b])
        if mode == "medoid":
            assert distance is not None
            d = distance[:, :m]
            d[...] = 0
            for b in range(3):
                np.add(dn[:, b, start:stop], offsets[:, b, None], out=v, casting="unsafe")
                v *= 2
                v -= medians[b]
                np.abs(v, out=v)
                d += v
            np.copyto(d, _INVALID, where=invalid)
            chosen = np.argmin(d, axis=0)  # the first of equal distances: the earliest in order
            column = np.arange(m, dtype=np.intp)
            for b in range(3):
                picked = dn[:, b, start:stop][chosen, column].astype(np.int32)
                picked += offsets[chosen, b]
                np.multiply(picked, 2, out=medians[b])
        medians[:, ~found] = 0
    return doubled, any_valid


def window_budget_side(observations: int, tile: int, budget: int, preferred: int) -> int | None:
    """The largest window side (a multiple of ``tile``, at most ``preferred``) whose stack of ``observations``
    fits ``budget`` bytes; None when not even one tile does."""
    side = max(tile, preferred - preferred % tile)
    while side >= tile:
        if observations * STACK_BYTES_PER_SAMPLE * side * side <= budget:
            return side
        side = tile * max(1, math.floor(side / tile / 2)) if side > tile else 0
    return None
