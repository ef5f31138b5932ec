"""Sentinel-2 product metadata (``MTD_MSIL2A.xml`` / ``MTD_MSIL1C.xml``): pure parsing, no GDAL, no MPI.

What it extracts: product level, processing baseline, the band files (``IMAGE_FILE`` elements, the only reliable
way to find them), and the radiometric constants per band: ``reflectance = (DN + ADD_OFFSET) / QUANTIFICATION``.
The offset is read from the metadata (``BOA_ADD_OFFSET`` for L2A, ``RADIO_ADD_OFFSET`` for L1C) and is 0 when the
element is absent (baselines before 04.00): it is decided by the metadata, never by the date.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from mpi_s2.errors import InputError

METADATA_FILES = {"L2A": "MTD_MSIL2A.xml", "L1C": "MTD_MSIL1C.xml"}
#: Band names in the order this package uses them: red, green, blue.
RGB_BANDS = ("B04", "B03", "B02")
SCL_BAND = "SCL"
RESOLUTIONS = (10, 20, 60)

_L2A_FILE = re.compile(r"_(?P<band>B\d[\dA]|SCL|TCI|AOT|WVP)_(?P<res>\d+)m$")
_L1C_FILE = re.compile(r"_(?P<band>B\d[\dA]|TCI)$")
_L1C_NATIVE = {"B02": 10, "B03": 10, "B04": 10, "B08": 10, "TCI": 10, "B05": 20, "B06": 20, "B07": 20,
               "B8A": 20, "B11": 20, "B12": 20, "B01": 60, "B09": 60, "B10": 60}


@dataclass(frozen=True)
class BandRadiometry:
    """``reflectance = (DN + offset) / quantification`` for one band."""

    offset: float
    quantification: float


@dataclass(frozen=True)
class ProductMetadata:
    level: str  # "L2A" or "L1C"
    baseline: str
    product_uri: str
    #: band name ("B02", "SCL", ...) -> resolution in metres -> path relative to the product root, with ".jp2"
    band_files: dict[str, dict[int, str]]
    #: band name ("B02", ...) -> radiometry
    radiometry: dict[str, BandRadiometry]
    nodata_dn: int = 0
    saturated_dn: int = 65535
    sensing_time: str | None = None  # PRODUCT_START_TIME, ISO 8601
    cloud_cover: float | None = None  # percent: L2A CLOUDY_PIXEL_PERCENTAGE, else Cloud_Coverage_Assessment

    def resolutions_with(self, bands: tuple[str, ...]) -> list[int]:
        """Resolutions at which every one of ``bands`` has a file."""
        return [r for r in RESOLUTIONS if all(r in self.band_files.get(b, {}) for b in bands)]

    def band_path(self, band: str, resolution: int) -> str:
        return self.band_files[band][resolution]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find_all(root: ET.Element, name: str) -> list[ET.Element]:
    return [el for el in root.iter() if _local(el.tag) == name]


def _text(root: ET.Element, name: str) -> str | None:
    found = _find_all(root, name)
    return found[0].text.strip() if found and found[0].text else None


def _physical_band(name: str) -> str:
    """``'B2'`` -> ``'B02'``, ``'B8A'`` -> ``'B8A'``."""
    return f"B{int(name[1:]):02d}" if name[1:].isdigit() else name


def parse_metadata(xml_bytes: bytes, source: str) -> ProductMetadata:
    """Parse a product metadata file; ``source`` names it in error messages."""
    try:
        root = ET.fromstring(xml_bytes)
    except ET.ParseError as exc:
        raise InputError(f"{source}: metadata is not valid XML ({exc})") from None
    root_name = _local(root.tag)
    if root_name.startswith("Level-2A"):
        level = "L2A"
    elif root_name.startswith("Level-1C"):
        level = "L1C"
    else:
        raise InputError(f"{source}: not a Sentinel-2 L1C or L2A product metadata file (root <{root_name}>)")
    baseline = _text(root, "PROCESSING_BASELINE") or "unknown"
    product_uri = _text(root, "PRODUCT_URI") or ""

    band_files: dict[str, dict[int, str]] = {}
    for el in _find_all(root, "IMAGE_FILE"):
        rel = (el.text or "").strip()
        if not rel:
            continue
        stem = rel.rsplit("/", 1)[-1]
        if level == "L2A":
            match = _L2A_FILE.search(stem)
            if not match:
                continue
            band, res = match["band"], int(match["res"])
        else:
            match = _L1C_FILE.search(stem)
            if not match or match["band"] not in _L1C_NATIVE:
                continue
            band, res = match["band"], _L1C_NATIVE[match["band"]]
        band_files.setdefault(band, {})[res] = rel + ".jp2"
    if not band_files:
        raise InputError(f"{source}: metadata lists no band files (no IMAGE_FILE elements)")

    quant_name = "BOA_QUANTIFICATION_VALUE" if level == "L2A" else "QUANTIFICATION_VALUE"
    offset_name = "BOA_ADD_OFFSET" if level == "L2A" else "RADIO_ADD_OFFSET"
    quant_text = _text(root, quant_name)
    if quant_text is None:
        raise InputError(f"{source}: metadata has no {quant_name}")
    quantification = float(quant_text)
    band_ids = {el.get("bandId"): _physical_band(el.get("physicalBand", ""))
                for el in _find_all(root, "Spectral_Information") if el.get("bandId") is not None}
    if not band_ids:  # metadata without the spectral table: the documented order (0 = B01, 1 = B02, ...)
        band_ids = {str(i): b for i, b in enumerate(["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08",
                                                     "B8A", "B09", "B10", "B11", "B12"])}
    offsets = {band_ids.get(el.get("band_id")): float(el.text) for el in _find_all(root, offset_name)
               if el.text and el.get("band_id") in band_ids}
    radiometry = {band: BandRadiometry(offsets.get(band, 0.0), quantification) for band in band_ids.values()}

    special = {(_text(el, "SPECIAL_VALUE_TEXT") or ""): int(_text(el, "SPECIAL_VALUE_INDEX") or -1)
               for el in _find_all(root, "Special_Values")}
    cloud_text = (_text(root, "CLOUDY_PIXEL_PERCENTAGE") if level == "L2A" else None) \
        or _text(root, "Cloud_Coverage_Assessment")
    try:
        cloud_cover = float(cloud_text) if cloud_text is not None else None
    except ValueError:
        raise InputError(f"{source}: cloud cover {cloud_text!r} is not a number") from None
    return ProductMetadata(level, baseline, product_uri, band_files, radiometry,
                           nodata_dn=special.get("NODATA", 0), saturated_dn=special.get("SATURATED", 65535),
                           sensing_time=_text(root, "PRODUCT_START_TIME"), cloud_cover=cloud_cover)
