"""Cloud masking with the L2A scene classification (SCL): which classes make a pixel invalid."""

from __future__ import annotations

import numpy as np

from mpi_s2.errors import InputError

SCL_CLASSES = {
    0: "no data", 1: "saturated or defective", 2: "dark area / cast shadow", 3: "cloud shadow",
    4: "vegetation", 5: "not vegetated", 6: "water", 7: "unclassified", 8: "cloud medium probability",
    9: "cloud high probability", 10: "thin cirrus", 11: "snow or ice",
}


def parse_mask_classes(text: str) -> tuple[int, ...]:
    """``'3,8,9,10'`` -> ``(3, 8, 9, 10)``; every class must be an SCL class."""
    try:
        classes = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise InputError(f"--mask-classes {text!r}: expected comma-separated SCL classes, e.g. 3,8,9,10") from None
    unknown = [c for c in classes if c not in SCL_CLASSES]
    if unknown or not classes:
        raise InputError(f"--mask-classes {text!r}: SCL classes are 0..11 "
                         f"({', '.join(f'{k} {v}' for k, v in SCL_CLASSES.items())})")
    return classes


def invalid_class_lut(classes: tuple[int, ...]) -> np.ndarray:
    """A 256-entry boolean table: ``lut[scl]`` is True where the class is masked."""
    lut = np.zeros(256, dtype=bool)
    lut[list(classes)] = True
    return lut


def masked_fraction(scl_path: str, classes: tuple[int, ...], max_side: int = 1024) -> float | None:
    """The fraction of the pixels with data (class not 0) that are in ``classes``, from the classification at
    ``scl_path`` read at most ``max_side`` pixels across (nearest: a sample, enough to order inputs); None
    when it has no data at all. Used for the cloud cover of band sets, which have no product metadata."""
    from osgeo import gdal

    gdal.UseExceptions()
    try:
        ds = gdal.Open(scl_path)
        step = max(1, -(-max(ds.RasterXSize, ds.RasterYSize) // max_side))
        scl = ds.GetRasterBand(1).ReadAsArray(buf_xsize=max(1, ds.RasterXSize // step),
                                              buf_ysize=max(1, ds.RasterYSize // step))
    except RuntimeError as exc:
        raise InputError(f"{scl_path}: cannot read the scene classification ({exc})") from None
    data = np.count_nonzero(scl)
    if not data:
        return None
    return float(np.count_nonzero(invalid_class_lut(classes)[scl])) / data
