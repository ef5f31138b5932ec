"""A small preview of the result (PNG or JPEG) next to the GeoTIFF, to look at without GIS software.

The preview is the GeoTIFF reduced by an integer factor (the longest side at most the asked size): each preview
pixel is the mean of the *valid* pixels of its cell, so nodata never darkens an edge; a cell without valid pixels
is transparent (PNG) or black (JPEG). Rank 0 reads the finished GeoTIFF in strips of whole cells, so memory stays
bounded whatever the mosaic size. Written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import os

import numpy as np
from osgeo import gdal

from mpi_s2.errors import InputError, OutputError

gdal.UseExceptions()

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
DEFAULT_SIZE = 1024


def quicklook_format(path: str) -> str:
    """GDAL driver for ``path``'s extension; :class:`InputError` for any other."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise InputError(f"{path}: --quicklook must end in .png or .jpg (got {ext or 'no extension'!r})")
    return FORMATS[ext]


def reduction_factor(width: int, height: int, max_size: int) -> int:
    """The smallest integer factor that brings the longest side to at most ``max_size``."""
    if max_size <= 0:
        raise InputError(f"--quicklook-size must be > 0, got {max_size}")
    return max(1, -(-max(width, height) // max_size))


def valid_mean(rgba: np.ndarray, valid: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Per ``factor`` x ``factor`` cell: mean RGB over valid pixels (rounded) and whether any is valid.

    ``rgba``: ``(bands, rows, cols)`` uint8 (RGB first); ``valid``: ``(rows, cols)`` bool. Partial cells at the
    right and bottom edge average what they have.
    """
    bands, rows, cols = rgba.shape
    out_r, out_c = -(-rows // factor), -(-cols // factor)
    pad_r, pad_c = out_r * factor - rows, out_c * factor - cols
    weights = np.pad(valid, ((0, pad_r), (0, pad_c))).astype(np.float64)
    counts = weights.reshape(out_r, factor, out_c, factor).sum(axis=(1, 3))
    mean = np.zeros((3, out_r, out_c), dtype=np.uint8)
    for b in range(3):
        band = np.pad(rgba[b], ((0, pad_r), (0, pad_c))).astype(np.float64) * weights
        sums = band.reshape(out_r, factor, out_c, factor).sum(axis=(1, 3))
        mean[b] = np.floor(np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0) + 0.5)
    return mean, counts > 0


def write_quicklook(geotiff: str, path: str, max_size: int = DEFAULT_SIZE) -> tuple[int, int]:
    """Write the preview of ``geotiff`` to ``path``; return its (width, height)."""
    driver = quicklook_format(path)
    src = gdal.Open(geotiff)
    width, height, bands = src.RasterXSize, src.RasterYSize, src.RasterCount
    factor = reduction_factor(width, height, max_size)
    out_w, out_h = -(-width // factor), -(-height // factor)
    out_bands = 4 if driver == "PNG" else 3
    mem = gdal.GetDriverByName("MEM").Create("", out_w, out_h, out_bands, gdal.GDT_Byte)
    strip = max(1, (64 << 20) // max(1, width * bands * factor)) * factor  # rows per read: whole cells
    for row in range(0, height, strip):
        rows = min(strip, height - row)
        block = src.ReadAsArray(0, row, width, rows)
        valid = block[3] > 0 if bands == 4 else (block[:3] > 0).any(axis=0)
        mean, any_valid = valid_mean(block, valid, factor)
        for b in range(3):
            mem.GetRasterBand(b + 1).WriteArray(mean[b], 0, row // factor)
        if out_bands == 4:
            mem.GetRasterBand(4).WriteArray(np.where(any_valid, 255, 0).astype(np.uint8), 0, row // factor)
    if out_bands == 4:
        mem.GetRasterBand(4).SetColorInterpretation(gdal.GCI_AlphaBand)
    head, tail = os.path.split(os.path.abspath(path))
    tmp = os.path.join(head, f".{tail}.partial")
    try:
        gdal.GetDriverByName(driver).CreateCopy(tmp, mem, options=["WORLDFILE=NO"] if driver == "PNG" else
                                                ["QUALITY=90"])
        for aux in (tmp + ".aux.xml",):
            if os.path.exists(aux):
                os.unlink(aux)
        os.replace(tmp, path)
    except (RuntimeError, OSError) as exc:
        for leftover in (tmp, tmp + ".aux.xml"):
            if os.path.exists(leftover):
                os.unlink(leftover)
        raise OutputError(f"{path}: writing the quicklook failed: {exc}") from None
    return out_w, out_h
