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

import functools
import math

import numpy as np

from mpi_s2.errors import InputError
from mpi_s2.pixels.radiometry import Stretch

COMPOSITES = ("first", "median", "medoid")
#: bytes per observation and pixel of a window's stack: three uint16 DNs and the valid flag (the temporaries
#: are per strip, see :func:`strip_pixels`)
STACK_BYTES_PER_SAMPLE = 3 * 2 + 1
#: added to an invalid observation's value (or distance): it then sorts after every valid one
_LAST = 1 << 30
#: bytes of the temporaries of one strip (three int32 per observation and pixel of the strip): strips of
#: about 87,000 pixels for 6 dates, 16,000 for 32
STRIP_BYTES = 6 << 20


def strip_pixels(observations: int) -> int:
    """Pixels worked out at a time for a stack of ``observations``: temporaries within :data:`STRIP_BYTES`."""
    return max(4096, STRIP_BYTES // (12 * max(1, observations)))


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


@functools.lru_cache(maxsize=None)
def sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Comparators ``(i, j)``, ``i < j``, that sort ``n`` values: Batcher's odd-even merge sort for the next
    power of two, without the comparators that touch the padding (values past ``n`` that sort last)."""
    size = 1 << max(0, n - 1).bit_length()
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        pairs.append((a, b))
            k //= 2
        p *= 2
    return tuple(pairs)


def sort_rows(values: np.ndarray, spare: np.ndarray) -> None:
    """Sort each column of ``values`` (``(T, n)``) in place, row against row through a sorting network:
    elementwise minima and maxima of contiguous rows, several times faster than ``sort(axis=0)`` for the few
    dates of a stack. ``spare``: one row of scratch."""
    for a, b in sorting_network(values.shape[0]):
        np.minimum(values[a], values[b], out=spare)
        np.maximum(values[a], values[b], out=values[b])
        values[a] = spare


def composite(dn: np.ndarray, offsets: np.ndarray, valid: np.ndarray, mode: str,
              strip: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The composite of a stack: ``dn`` ``(T, 3, N)`` uint16, ``offsets`` ``(T, 3)`` int (per observation and
    band), ``valid`` ``(T, N)``.

    Returns ``(doubled, any_valid)``: ``(3, N)`` int32 values ``2 * v`` to render with :func:`doubled_lut`
    (0 where no observation is valid), and where some observation is. Worked out ``strip`` pixels at a time
    (default :func:`strip_pixels`), so that the temporaries stay small beside the stack.

    Within a strip the values are kept as ``v - min(offsets)`` (never negative, below 2**17) plus
    :data:`_LAST` where the observation is invalid, so invalid ones sort after every valid one: two additions
    instead of a masked copy."""
    t, _, n = dn.shape
    if mode not in ("median", "medoid"):
        raise ValueError(mode)
    doubled = np.zeros((3, n), dtype=np.int32)
    any_valid = np.zeros(n, dtype=bool)
    offsets = np.asarray(offsets, dtype=np.int64)
    shift = int(offsets.min()) if offsets.size else 0
    relative = (offsets - shift).astype(np.int32)  # >= 0
    width = min(n, strip or strip_pixels(t)) if n else 0
    work = np.empty((t, width), dtype=np.int32)
    last = np.empty((t, width), dtype=np.int32)
    spare = np.empty(width, dtype=np.int32)
    distance = np.empty((t, width), dtype=np.int32) if mode == "medoid" else None
    columns = np.arange(width, dtype=np.intp)
    for start in range(0, n, max(1, width)):
        stop = min(n, start + width)
        m = stop - start
        part_valid = valid[:, start:stop]
        flag = last[:, :m]
        np.multiply(part_valid, -_LAST, out=flag, casting="unsafe")
        flag += _LAST  # _LAST where invalid, 0 where valid
        count = part_valid.sum(axis=0, dtype=np.int32)
        found = count > 0
        any_valid[start:stop] = found
        column = columns[:m]
        low = (np.maximum(count, 1) - 1) // 2 * m + column  # flat indices of the two middle values
        high = np.minimum(count // 2, t - 1) * m + column
        v = work[:, :m]
        medians = doubled[:, start:stop]
        for b in range(3):
            np.add(dn[:, b, start:stop], relative[:, b, None], out=v, casting="unsafe")
            v += flag
            sort_rows(v, spare[:m])
            flat = v.ravel()
            np.add(flat.take(low), flat.take(high), out=medians[b])
        if mode == "medoid":
            assert distance is not None
            d = distance[:, :m]
            d[...] = flag  # invalid ones are farther than every valid one (distances are below 2**20)
            for b in range(3):
                np.add(dn[:, b, start:stop], relative[:, b, None], out=v, casting="unsafe")
                v *= 2
                v -= medians[b]
                np.abs(v, out=v)
                d += v
            chosen = np.argmin(d, axis=0)  # the first of equal distances: the earliest in order
            for b in range(3):
                picked = dn[:, b, start:stop][chosen, column].astype(np.int32)
                picked += relative[chosen, b]
                np.multiply(picked, 2, out=medians[b])
        medians += 2 * shift
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
