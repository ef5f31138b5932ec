import math

import numpy as np
import pytest

from mpi_s2.errors import InputError
from mpi_s2.pixels.radiometry import LUT_SIZE, Stretch, build_lut, render_window


def formula(dn: int, offset: float, scale: float, max_reflectance: float, gamma: float) -> int:
    """The radiometric contract, scalar, with Python's math (not numpy)."""
    reflectance = (dn + offset) / scale
    x = min(max(reflectance / max_reflectance, 0.0), 1.0)
    return math.floor(255 * x ** (1 / gamma) + 0.5)


@pytest.mark.parametrize("stretch", [Stretch(), Stretch(offset=-1000.0), Stretch(max_reflectance=0.3),
                                     Stretch(gamma=1.0), Stretch(offset=-1000, scale=10000, max_reflectance=0.25,
                                                                 gamma=2.5)])
def test_lut_equals_formula_for_all_65536_inputs(stretch):
    lut = build_lut(stretch)
    assert lut.dtype == np.uint8 and lut.shape == (LUT_SIZE,)
    expected = [formula(dn, stretch.offset, stretch.scale, stretch.max_reflectance, stretch.gamma)
                for dn in range(LUT_SIZE)]
    mismatches = np.flatnonzero(lut != np.array(expected, dtype=np.int64))
    assert mismatches.size == 0, f"first mismatching DNs: {mismatches[:10]}"


def test_lut_clips_at_max_reflectance_and_saturated_is_full_brightness():
    lut = build_lut(Stretch())
    assert lut[10000] == 255 and lut[12000] == 255 and lut[65535] == 255
    assert lut[0] == 0 and lut[1] > 0 and lut[9999] == 255  # 0.9999 ** (1/2.2) * 255 rounds to 255


def test_offset_maps_dark_valid_pixels_to_zero_unless_zero_is_reserved():
    assert build_lut(Stretch(offset=-1000.0))[1000] == 0
    assert build_lut(Stretch(offset=-1000.0), reserve_zero=True)[1000] == 1
    assert build_lut(Stretch(offset=-1000.0), reserve_zero=True).min() == 1


def test_render_window_nodata_in_any_band_and_alpha():
    red = np.array([[0, 500, 20000], [1000, 65535, 3]], dtype=np.uint16)
    green = np.array([[400, 0, 20000], [1000, 65535, 3]], dtype=np.uint16)
    blue = np.array([[400, 500, 20000], [1000, 65535, 0]], dtype=np.uint16)
    lut = build_lut(Stretch())
    out = np.full((4, 2, 3), 7, dtype=np.uint8)
    render_window((red, green, blue), (lut, lut, lut), out, alpha=True)
    valid = np.array([[0, 0, 1], [1, 1, 0]], dtype=bool)
    assert (out[3] == np.where(valid, 255, 0)).all()
    assert (out[:3, ~valid] == 0).all()
    assert out[0, 0, 2] == 255 and out[0, 1, 1] == 255  # clipped and saturated: full brightness
    assert out[0, 1, 0] == lut[1000]


@pytest.mark.parametrize("kwargs", [{"scale": 0}, {"max_reflectance": -1}, {"gamma": 0}])
def test_invalid_stretch_raises(kwargs):
    with pytest.raises(InputError):
        Stretch(**kwargs)


def test_dn_range_is_gdal_translate_scale():
    assert Stretch(offset=-1000, scale=10000, max_reflectance=0.5).dn_range == (1000, 6000)
