"""Sentinel-2 products as ESA ships them: a ``.SAFE`` folder, or a ``.zip`` of one read in place via ``/vsizip/``.

The band files are found through the product metadata (``IMAGE_FILE``), never by guessing names.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass

from osgeo import gdal

from mpi_s2.errors import InputError
from mpi_s2.inputs.metadata import METADATA_FILES, RGB_BANDS, SCL_BAND, ProductMetadata, parse_metadata

gdal.UseExceptions()


@dataclass(frozen=True)
class Product:
    path: str  # as the user gave it
    root: str  # GDAL path of the product root (a folder, or /vsizip/...zip/NAME.SAFE)
    metadata: ProductMetadata

    @property
    def level(self) -> str:
        return self.metadata.level

    def file(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def rgb_files(self, resolution: int) -> tuple[str, str, str]:
        """GDAL paths of B04, B03, B02 at ``resolution``; a clear error when the product lacks them."""
        available = self.metadata.resolutions_with(RGB_BANDS)
        if resolution not in available:
            have = ", ".join(f"{r} m" for r in available) or "none"
            raise InputError(f"{self.path}: has no B04/B03/B02 at {resolution} m (resolutions with all "
                             f"three: {have}; choose one with --resolution)")
        return tuple(self._existing(self.metadata.band_path(b, resolution)) for b in RGB_BANDS)  # type: ignore

    def scl_file(self, resolution: int) -> str:
        """The scene classification band closest to ``resolution`` (SCL exists at 20 and 60 m)."""
        if self.level != "L2A":
            raise InputError(f"{self.path}: is an L1C product, which has no scene classification (SCL); "
                             "--cloud-mask needs L2A products")
        available = sorted(self.metadata.band_files.get(SCL_BAND, {}))
        if not available:
            raise InputError(f"{self.path}: metadata lists no SCL band")
        best = min(available, key=lambda r: (r < resolution, abs(r - resolution)))
        return self._existing(self.metadata.band_path(SCL_BAND, best))

    def _existing(self, relative: str) -> str:
        path = self.file(relative)
        if gdal.VSIStatL(path) is None:
            raise InputError(f"{self.path}: metadata names {relative}, but the file is missing")
        return path


def _read_vsi(path: str) -> bytes:
    stat = gdal.VSIStatL(path)
    handle = gdal.VSIFOpenL(path, "rb")
    try:
        return bytes(gdal.VSIFReadL(1, stat.size, handle))
    finally:
        gdal.VSIFCloseL(handle)


def _find_metadata(root: str, label: str) -> str:
    names = gdal.ReadDir(root) or []
    for name in METADATA_FILES.values():
        if name in names:
            return f"{root}/{name}"
    raise InputError(f"{label}: no {' or '.join(METADATA_FILES.values())} found (not a Sentinel-2 product?)")


def _zip_root(path: str) -> str:
    try:
        with zipfile.ZipFile(path) as archive:  # only the directory is read; GDAL reads the members
            if not archive.namelist():
                raise InputError(f"{path}: the zip archive is empty")
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{path}: cannot be read as a zip archive ({exc})") from None
    vsi = f"/vsizip/{os.path.abspath(path)}"
    entries = [e for e in (gdal.ReadDir(vsi) or []) if e and not e.startswith("__MACOSX")]
    if any(e in METADATA_FILES.values() for e in entries):
        return vsi
    safes = [e for e in entries if e.rstrip("/").endswith(".SAFE")]
    if len(safes) != 1:
        raise InputError(f"{path}: expected one .SAFE folder in the zip archive, found "
                         f"{len(safes) or 'none'} ({', '.join(entries[:5])})")
    return f"{vsi}/{safes[0].rstrip('/')}"


def open_product(path: str) -> Product:
    """Locate and parse the product at ``path`` (a .SAFE folder, or a .zip holding one)."""
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        root = os.path.abspath(path)
    elif path.lower().endswith(".zip"):
        root = _zip_root(path)
    else:
        raise InputError(f"{path}: not a product (expected a .SAFE folder or a .zip of one; "
                         "for band files use --red/--green/--blue)")
    md_path = _find_metadata(root, path)
    metadata = parse_metadata(_read_vsi(md_path), f"{path}: {md_path.rsplit('/', 1)[-1]}")
    return Product(path=path, root=root, metadata=metadata)
