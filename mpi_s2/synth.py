"""A synthetic Sentinel-2-like scene: three georeferenced uint16 band files, no download needed.

The scene sits on the UTM 32N 10 m grid of tile 32TMS (central Switzerland). Its texture is smooth terrain plus
per-pixel noise derived from the pixel coordinates, so every pixel differs from its neighbours and a window
written to the wrong place is visible. It holds what a real tile holds: a nodata wedge at the swath edge,
dark water, bright clouds above the 10000 clip, a few saturated pixels (65535) and a patch where only the
blue band is nodata (nodata in any band must make the pixel invalid).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from osgeo import gdal, osr

from .errors import InputError, OutputError

gdal.UseExceptions()

EPSG = 32632
ORIGIN = (399960.0, 5300040.0)  # upper-left corner of tile 32TMS
PIXEL = 10.0
BAND_FILES = {"red": "B04.tif", "green": "B03.tif", "blue": "B02.tif"}
# mean surface reflectance (DN) and texture amplitude of each band: vegetation/soil mix
_BAND_LEVELS = {"red": (900.0, 700.0), "green": (1000.0, 550.0), "blue": (800.0, 450.0)}


@dataclass(frozen=True)
class SynthOptions:
    size: int = 1024
    height: int | None = None
    block: int = 512
    compress: str = "NONE"

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height or self.size, self.size)


def _hash_noise(rows: np.ndarray, cols: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic per-pixel noise in [0, 1) from the coordinates (an integer hash)."""
    h = (rows.astype(np.uint32) * np.uint32(73856093)) ^ (cols.astype(np.uint32) * np.uint32(19349663))
    h ^= np.uint32(salt * 83492791 & 0xFFFFFFFF)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0x5BD1E995)
    h ^= h >> np.uint32(15)
    return (h & np.uint32(0xFFFF)).astype(np.float32) / np.float32(65536.0)


def band_rows(band: str, row0: int, nrows: int, width: int, height: int) -> np.ndarray:
    """Rows ``row0 .. row0+nrows`` of ``band`` (uint16) in a scene of ``width`` x ``height``."""
    rows = np.arange(row0, row0 + nrows, dtype=np.float32)[:, None]
    cols = np.arange(width, dtype=np.float32)[None, :]
    u, v = cols / width, rows / height
    terrain = 0.5 + 0.25 * np.sin(7.0 * u + 3.0 * np.sin(5.0 * v)) * np.cos(6.0 * v - 2.0 * u)
    mean, amplitude = _BAND_LEVELS[band]
    salt = {"red": 1, "green": 2, "blue": 3}[band]
    noise = _hash_noise(rows.astype(np.int64), cols.astype(np.int64), salt)
    dn = mean + amplitude * (terrain - 0.5) * 2.0 + 400.0 * (noise - 0.5)
    # water: a dark lake, ellipse
    lake = ((u - 0.7) / 0.12) ** 2 + ((v - 0.35) / 0.08) ** 2 < 1.0
    dn = np.where(lake, 150.0 + 150.0 * noise, dn)
    # clouds: bright blobs well past the 10000 clip
    cloud = np.sin(11.0 * u) * np.sin(9.0 * v + 1.0) > 0.93
    dn = np.where(cloud, 9000.0 + 4000.0 * noise, dn)
    out = np.clip(dn, 1.0, 65534.0).astype(np.uint16)
    rows_i, cols_i = rows.astype(np.int64), cols.astype(np.int64)
    # saturated pixels: a sparse diagonal of glints
    out[((rows_i * 7 + cols_i * 3) % 4099 == 0) & np.ones_like(out, dtype=bool)] = 65535
    # swath edge: a nodata wedge on the left
    out[(cols_i + rows_i // 3 < width // 10) & np.ones_like(out, dtype=bool)] = 0
    if band == "blue":  # nodata in one band only
        r0, c0 = height // 2, width // 2
        patch = (rows_i >= r0) & (rows_i < r0 + max(1, height // 40)) & (cols_i >= c0) & (cols_i < c0 + max(1, width // 30))
        out[patch] = 0
    return out


def write_band(path: str, band: str, options: SynthOptions) -> None:
    height, width = options.shape
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(EPSG)
    co = ["TILED=YES", f"BLOCKXSIZE={options.block}", f"BLOCKYSIZE={options.block}",
          f"COMPRESS={options.compress}", "BIGTIFF=IF_SAFER"]
    ds = gdal.GetDriverByName("GTiff").Create(path, width, height, 1, gdal.GDT_UInt16, options=co)
    ds.SetGeoTransform((ORIGIN[0], PIXEL, 0.0, ORIGIN[1], 0.0, -PIXEL))
    ds.SetProjection(srs.ExportToWkt())
    out_band = ds.GetRasterBand(1)
    out_band.SetDescription(BAND_FILES[band].removesuffix(".tif"))
    step = options.block
    for row0 in range(0, height, step):
        nrows = min(step, height - row0)
        out_band.WriteArray(band_rows(band, row0, nrows, width, height), 0, row0)
    ds.FlushCache()
    ds = None


def synthesize(outdir: str, options: SynthOptions) -> dict[str, str]:
    """Write B04/B03/B02 GeoTIFFs into ``outdir`` (created if missing); return ``{band: path}``."""
    if options.size <= 0 or (options.height is not None and options.height <= 0):
        raise InputError(f"--size must be > 0, got {options.size}")
    if options.block <= 0 or options.block % 16:
        raise InputError(f"--block must be a positive multiple of 16, got {options.block}")
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{outdir}: cannot create directory: {exc.strerror}") from None
    paths = {}
    for band, name in BAND_FILES.items():
        path = os.path.join(outdir, name)
        write_band(path, band, options)
        paths[band] = path
    return paths
