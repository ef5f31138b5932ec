"""Output profiles: named sets of GeoTIFF creation options, copied on use."""

from __future__ import annotations

from typing import Mapping

from mpi_s2.errors import InputError

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
DEFAULT_PROFILE = "zstd"


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
