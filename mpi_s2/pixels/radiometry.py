"""Radiometry: Sentinel-2 digital numbers to 8-bit display values.

The radiometric contract, per band::

    reflectance = (DN + offset) / scale
    out = floor(255 * clip(reflectance / max_reflectance, 0, 1) ** (1 / gamma) + 0.5)

Inputs are uint16, so the whole transform is one 65536-entry uint8 lookup table per band, built once and
identical for every window: exact, and consistent across windows and ranks by construction.
Nodata (DN 0 in any band) is decided separately and never confused with a valid dark pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mpi_s2.errors import InputError

#: Digital number that marks "no data" in Sentinel-2 products.
NODATA_DN = 0
#: Digital number that marks saturated pixels; they are valid (full brightness), not nodata.
SATURATED_DN = 65535
#: Number of entries of a uint16 lookup table.
LUT_SIZE = 1 << 16


@dataclass(frozen=True, slots=True)
class Stretch:
    """Parameters of the DN-to-display transform of one band."""

    offset: float = 0.0
    scale: float = 10000.0
    max_reflectance: float = 1.0
    gamma: float = 2.2

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise InputError(f"scale (quantification value) must be > 0, got {self.scale}")
        if not (math.isfinite(self.max_reflectance) and self.max_reflectance > 0):
            raise InputError(f"--max-reflectance must be a finite number > 0, got {self.max_reflectance}")
        if not (math.isfinite(self.gamma) and self.gamma > 0):
            raise InputError(f"--gamma must be a finite number > 0, got {self.gamma}")

    @property
    def dn_range(self) -> tuple[float, float]:
        """``(A, B)``: the DN mapped to 0 and to 255, as ``gdal_translate -scale A B 0 255`` takes them."""
        low = -self.offset
        return (low, low + self.scale * self.max_reflectance)


def build_lut(stretch: Stretch, *, reserve_zero: bool = False) -> np.ndarray:
    """The 65536-entry uint8 lookup table of ``stretch``.

    The arithmetic follows GDAL's exponential scaling (``(DN - A) / (B - A)`` clipped to [0, 1], raised to
    ``1/gamma``, times 255, rounded half up) so that the result is bit-for-bit ``gdal_translate``'s.
    With ``reserve_zero`` valid pixels are at least 1, leaving 0 to mean nodata (3-band output without alpha).
    """
    low, high = stretch.dn_range
    dn = np.arange(LUT_SIZE, dtype=np.float64)
    ratio = np.clip((dn - low) / (high - low), 0.0, 1.0)
    values = np.floor(255.0 * np.power(ratio, 1.0 / stretch.gamma) + 0.5)
    lut = values.astype(np.uint8)
    if reserve_zero:
        np.maximum(lut, 1, out=lut)
    return lut


def valid_mask(bands: list[np.ndarray] | tuple[np.ndarray, ...]) -> np.ndarray:
    """True where no band holds the nodata DN."""
    mask = bands[0] != NODATA_DN
    for band in bands[1:]:
        mask &= band != NODATA_DN
    return mask


def render_window(
    bands: tuple[np.ndarray, np.ndarray, np.ndarray],
    luts: tuple[np.ndarray, np.ndarray, np.ndarray],
    out: np.ndarray,
    *,
    alpha: bool,
    invalid: np.ndarray | None = None,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Transform three uint16 band arrays into ``out`` (``(3 or 4, rows, cols)`` uint8, C-contiguous).

    Invalid pixels (nodata DN in any band, or ``invalid``, e.g. masked clouds) are 0 in every band; with
    ``alpha`` the 4th band is 255 on valid pixels and 0 elsewhere. A caller that has the valid pixels already
    gives them as ``valid`` (then ``invalid`` is not used). Returns ``out``.
    """
    if valid is None:
        valid = valid_mask(bands)
        if invalid is not None:
            valid &= ~invalid
    for i, (band, lut) in enumerate(zip(bands, luts, strict=True)):
        np.take(lut, band, out=out[i])
        out[i] *= valid  # 0 on invalid pixels; uint8 * bool stays uint8
    if alpha:
        np.multiply(valid, 255, out=out[3], casting="unsafe")
    return out
