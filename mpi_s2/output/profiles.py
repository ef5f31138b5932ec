"""Output profiles: named sets of GeoTIFF creation options, copied on use."""

from __future__ import annotations

import os
from typing import Mapping

from osgeo import gdal

from mpi_s2.config import DEFAULT_PROFILE
from mpi_s2.errors import InputError, OutputError

gdal.UseExceptions()

#: Tiled, compressed, safe for files past 4 GB. ZSTD at a low level keeps the single writer rank fast.
GTIFF_PROFILES: dict[str, dict[str, str]] = {
    "zstd": {
        "TILED": "YES",
        "BLOCKXSIZE": "512",
        "BLOCKYSIZE": "512",
        "COMPRESS": "ZSTD",
        "ZSTD_LEVEL": "1",
        "PREDICTOR": "2",
        "BIGTIFF": "IF_SAFER",
    },
    "deflate": {
        "TILED": "YES",
        "BLOCKXSIZE": "512",
        "BLOCKYSIZE": "512",
        "COMPRESS": "DEFLATE",
        "ZLEVEL": "1",
        "PREDICTOR": "2",
        "BIGTIFF": "IF_SAFER",
    },
    "raw": {
        "TILED": "YES",
        "BLOCKXSIZE": "512",
        "BLOCKYSIZE": "512",
        "COMPRESS": "NONE",
        "BIGTIFF": "IF_SAFER",
    },
}


def parse_creation_option(text: str) -> tuple[str, str]:
    """``'KEY=VALUE'`` -> ``('KEY', 'VALUE')`` with the key upper-cased; raise :class:`InputError` otherwise."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise InputError(f"--co {text!r}: expected KEY=VALUE, e.g. --co COMPRESS=DEFLATE")
    return key.strip().upper(), value.strip()


def creation_options(
    profile: str = DEFAULT_PROFILE, overrides: Mapping[str, str] | None = None, *, alpha: bool = True
) -> dict[str, str]:
    """The creation options of ``profile`` updated with user ``overrides`` and the RGB(A) layout."""
    if profile not in GTIFF_PROFILES:
        known = ", ".join(sorted(GTIFF_PROFILES))
        raise InputError(f"unknown output profile {profile!r}; known profiles: {known}")
    options = dict(GTIFF_PROFILES[profile])
    user = {k.upper(): v for k, v in (overrides or {}).items()}
    options.update(user)
    if options.get("COMPRESS", "NONE").upper() == "NONE" and "PREDICTOR" not in user:
        options.pop("PREDICTOR", None)
    options["PHOTOMETRIC"] = "RGB"
    if alpha:
        options["ALPHA"] = "YES"
    else:
        options.pop("ALPHA", None)
    return options


def as_gdal_list(options: Mapping[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in options.items()]


def validate_creation_options(output: str, options: Mapping[str, str], band_count: int) -> None:
    """Raise :class:`OutputError` when GDAL rejects a creation option.

    GDAL only warns about an unknown option or value and then ignores it; a typo would silently give another
    file than asked for. A tiny in-memory file is created with the options and every warning is an error.
    """
    warnings: list[str] = []

    def collect(err_class, err_no, message):
        if err_class >= gdal.CE_Warning:
            warnings.append(message)

    probe = f"/vsimem/mpi_s2_validate_{os.getpid()}.tif"
    gdal.PushErrorHandler(collect)
    try:
        ds = gdal.GetDriverByName("GTiff").Create(probe, 16, 16, band_count, gdal.GDT_Byte,
                                                  options=as_gdal_list(options))
        del ds  # closes the probe file
    except RuntimeError as exc:
        warnings.append(str(exc))
    finally:
        gdal.PopErrorHandler()
        gdal.Unlink(probe)
    if warnings:
        raise OutputError(f"{output}: invalid creation option: {warnings[0].strip()}")


