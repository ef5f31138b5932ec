"""A synthetic Sentinel-2-like scene: three georeferenced uint16 band files, no download needed.

The scene sits on the UTM 32N 10 m grid of tile 32TMS (central Switzerland). Its texture is smooth terrain plus
per-pixel noise derived from the pixel coordinates, so every pixel differs from its neighbours and a window
written to the wrong place is visible. It holds what a real tile holds: a nodata wedge at the swath edge,
dark water, bright clouds above the 10000 clip, a few saturated pixels (65535) and a patch where only the
blue band is nodata (nodata in any band must make the pixel invalid).
"""

from __future__ import annotations

import os
import shutil
import zipfile
from dataclasses import dataclass

import numpy as np
from osgeo import gdal, osr

from mpi_s2.errors import InputError, OutputError

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


def _fields(rows: np.ndarray, cols: np.ndarray, width: int, height: int) -> dict[str, np.ndarray]:
    """Scene fields at 10 m pixel coordinates ``rows`` (column vector) and ``cols`` (row vector)."""
    u, v = cols / width, rows / height
    terrain = 0.5 + 0.25 * np.sin(7.0 * u + 3.0 * np.sin(5.0 * v)) * np.cos(6.0 * v - 2.0 * u)
    cloud = np.sin(11.0 * u) * np.sin(9.0 * v + 1.0)
    shadow = np.sin(11.0 * (u - 0.02)) * np.sin(9.0 * (v - 0.03) + 1.0)
    lake = ((u - 0.7) / 0.12) ** 2 + ((v - 0.35) / 0.08) ** 2 < 1.0
    rows_i, cols_i = rows.astype(np.int64), cols.astype(np.int64)
    nodata = (cols_i + rows_i // 3 < width // 10) & np.ones_like(terrain, dtype=bool)
    return {"terrain": terrain, "cloud": cloud, "shadow": shadow, "lake": lake, "nodata": nodata,
            "rows": rows_i, "cols": cols_i, "v": np.broadcast_to(v, terrain.shape)}


def _band_from_fields(band: str, f: dict[str, np.ndarray], width: int, height: int) -> np.ndarray:
    mean, amplitude = _BAND_LEVELS[band]
    salt = {"red": 1, "green": 2, "blue": 3}[band]
    noise = _hash_noise(f["rows"], f["cols"], salt)
    dn = mean + amplitude * (f["terrain"] - 0.5) * 2.0 + 400.0 * (noise - 0.5)
    dn = np.where(f["lake"], 150.0 + 150.0 * noise, dn)  # water: a dark lake
    dn = np.where(f["cloud"] > 0.93, 9000.0 + 4000.0 * noise, dn)  # clouds past the 10000 clip
    out = np.clip(dn, 1.0, 65534.0).astype(np.uint16)
    glints = ((f["rows"] * 7 + f["cols"] * 3) % 4099 == 0) & np.ones_like(out, dtype=bool)
    out[glints] = 65535  # saturated pixels
    out[f["nodata"]] = 0  # swath edge
    if band == "blue":  # nodata in one band only
        r0, c0 = height // 2, width // 2
        patch = ((f["rows"] >= r0) & (f["rows"] < r0 + max(1, height // 40))
                 & (f["cols"] >= c0) & (f["cols"] < c0 + max(1, width // 30)))
        out[patch] = 0
    return out


def band_rows(band: str, row0: int, nrows: int, width: int, height: int, step: int = 1) -> np.ndarray:
    """Rows ``row0 .. row0+nrows`` of ``band`` (uint16) in a scene of ``width`` x ``height`` at 10 m.

    With ``step`` > 1 the rows and columns are those of a coarser grid (20 m: 2), sampling the 10 m scene.
    """
    rows = (np.arange(row0, row0 + nrows, dtype=np.float32) * step)[:, None]
    cols = (np.arange(-(-width // step), dtype=np.float32) * step)[None, :]
    return _band_from_fields(band, _fields(rows, cols, width, height), width, height)


def scl_rows(row0: int, nrows: int, width: int, height: int, step: int = 2) -> np.ndarray:
    """Scene classification rows on a grid ``step`` times coarser than 10 m, consistent with the bands."""
    rows = (np.arange(row0, row0 + nrows, dtype=np.float32) * step)[:, None]
    cols = (np.arange(-(-width // step), dtype=np.float32) * step)[None, :]
    f = _fields(rows, cols, width, height)
    scl = np.where(f["terrain"] > 0.5, 4, 5).astype(np.uint8)  # vegetation / not vegetated
    scl[f["lake"]] = 6
    scl[(f["v"] > 0.80) & (f["v"] < 0.83)] = 10  # a stripe of thin cirrus
    scl[(f["shadow"] > 0.93) & (f["cloud"] <= 0.88)] = 3  # cloud shadow
    scl[(f["cloud"] > 0.88) & (f["cloud"] <= 0.93)] = 8  # cloud edge: medium probability
    scl[f["cloud"] > 0.93] = 9  # cloud core: high probability
    scl[f["nodata"]] = 0
    return scl


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


# ---------------------------------------------------------------------------------------------------------
# A synthetic L2A product in SAFE layout (JPEG 2000 bands, SCL, MTD_MSIL2A.xml)

_RGB = {"red": "B04", "green": "B03", "blue": "B02"}
_PHYSICAL = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]


@dataclass(frozen=True)
class ProductOptions:
    size: int = 1024
    height: int | None = None
    tile: str = "32TMS"
    epsg: int = EPSG
    origin: tuple[float, float] = ORIGIN
    baseline: str = "05.09"  # >= 04.00: BOA_ADD_OFFSET -1000; "02.14": no offset element
    sensing: str = "20230715T102559"
    jp2_block: int = 1024
    zip: bool = False
    orbit_edge: float = 0.0  # fraction of the tile beyond the swath edge (nodata), as on an orbit's edge

    def beyond_swath(self, width: int, height: int, step: int = 1) -> np.ndarray | None:
        """True where the tile lies beyond the swath edge: a slanted edge cutting ``orbit_edge`` of the area."""
        if self.orbit_edge <= 0:
            return None
        rows = np.arange(0, height, step, dtype=np.float64)[:, None] / height
        cols = np.arange(0, width, step, dtype=np.float64)[None, :] / width
        return cols + 0.5 * rows < self.orbit_edge + 0.25

    @property
    def offset(self) -> int:
        return -1000 if self.baseline >= "04.00" else 0

    @property
    def name(self) -> str:
        baseline = self.baseline.replace(".", "")
        return f"S2B_MSIL2A_{self.sensing}_N{baseline}_R108_T{self.tile}_{self.sensing[:8]}T140000"


def _write_jp2(path: str, array: np.ndarray, options: ProductOptions, pixel: float) -> None:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(options.epsg)
    data_type = gdal.GDT_UInt16 if array.dtype == np.uint16 else gdal.GDT_Byte
    mem = gdal.GetDriverByName("MEM").Create("", array.shape[1], array.shape[0], 1, data_type)
    mem.SetGeoTransform((options.origin[0], pixel, 0.0, options.origin[1], 0.0, -pixel))
    mem.SetProjection(srs.ExportToWkt())
    mem.GetRasterBand(1).WriteArray(array)
    block = min(options.jp2_block, max(array.shape))
    gdal.GetDriverByName("JP2OpenJPEG").CreateCopy(
        path, mem, options=["QUALITY=100", "REVERSIBLE=YES", f"BLOCKXSIZE={block}", f"BLOCKYSIZE={block}"])


def _metadata_xml(options: ProductOptions, image_files: list[str]) -> str:
    files = "\n".join(f"            <IMAGE_FILE>{f}</IMAGE_FILE>" for f in image_files)
    offsets = ""
    if options.offset:
        offsets = ("<BOA_ADD_OFFSET_VALUES_LIST>\n"
                   + "\n".join(f'        <BOA_ADD_OFFSET band_id="{i}">{options.offset}</BOA_ADD_OFFSET>'
                               for i in range(len(_PHYSICAL)))
                   + "\n      </BOA_ADD_OFFSET_VALUES_LIST>")
    spectral = "\n".join(f'        <Spectral_Information bandId="{i}" physicalBand="{b}"/>'
                          for i, b in enumerate(_PHYSICAL))
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_URI>{options.name}.SAFE</PRODUCT_URI>
      <PROCESSING_LEVEL>Level-2A</PROCESSING_LEVEL>
      <PRODUCT_TYPE>S2MSI2A</PRODUCT_TYPE>
      <PROCESSING_BASELINE>{options.baseline}</PROCESSING_BASELINE>
      <Product_Organisation>
        <Granule_List>
          <Granule granuleIdentifier="L2A_T{options.tile}_SYNTHETIC" imageFormat="JPEG2000">
{files}
          </Granule>
        </Granule_List>
      </Product_Organisation>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values><SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX></Special_Values>
      <Special_Values><SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX></Special_Values>
      <QUANTIFICATION_VALUES_LIST>
        <BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE>
      </QUANTIFICATION_VALUES_LIST>
      {offsets}
      <Spectral_Information_List>
{spectral}
      </Spectral_Information_List>
    </Product_Image_Characteristics>
  </n1:General_Info>
</n1:Level-2A_User_Product>
"""


def product_dn(band: str, width: int, height: int, options: ProductOptions, step: int = 1) -> np.ndarray:
    """A band of the synthetic product: the scene's DN plus the product's offset (nodata and 65535 kept)."""
    dn = band_rows(band, 0, -(-height // step), width, height, step)
    if options.offset:
        shift = (dn != 0) & (dn != 65535)
        # the darkest water has slightly negative BOA reflectance, as real lakes often do: DN below -offset
        deep_water = shift & (dn < 220)
        dn[shift] = np.minimum(dn[shift].astype(np.int32) - options.offset, 65534).astype(np.uint16)
        dn[deep_water] -= np.uint16(300)
    beyond = options.beyond_swath(width, height, step)
    if beyond is not None:
        dn[beyond] = 0
    return dn


def synthesize_product(outdir: str, options: ProductOptions) -> str:
    """Write a synthetic L2A product (SAFE layout, JPEG 2000) into ``outdir``; return its path (.SAFE or .zip).

    R10m: B02, B03, B04; R20m: B02, B03, B04, SCL; R60m: B02, B03, B04, SCL. Same scene as :func:`synthesize`
    plus the product's offset (-1000 for baseline >= 04.00), and an SCL with clouds, shadows and cirrus.
    """
    height, width = options.height or options.size, options.size
    if width <= 0 or height <= 0:
        raise InputError(f"--size must be > 0, got {options.size}")
    os.makedirs(outdir, exist_ok=True)
    safe = os.path.join(outdir, options.name + ".SAFE")
    if os.path.exists(safe):
        shutil.rmtree(safe)
    granule = f"GRANULE/L2A_T{options.tile}_A000000_{options.sensing}/IMG_DATA"
    stem = f"T{options.tile}_{options.sensing}"
    image_files = []
    for res, step in ((10, 1), (20, 2), (60, 6)):
        folder = os.path.join(safe, granule, f"R{res}m")
        os.makedirs(folder, exist_ok=True)
        for band, code in _RGB.items():
            rel = f"{granule}/R{res}m/{stem}_{code}_{res}m"
            _write_jp2(os.path.join(safe, rel + ".jp2"), product_dn(band, width, height, options, step),
                       options, PIXEL * step)
            image_files.append(rel)
        if res >= 20:
            rel = f"{granule}/R{res}m/{stem}_SCL_{res}m"
            scl = scl_rows(0, -(-height // step), width, height, step)
            beyond = options.beyond_swath(width, height, step)
            if beyond is not None:
                scl[beyond] = 0  # class 0: no data
            _write_jp2(os.path.join(safe, rel + ".jp2"), scl, options, PIXEL * step)
            image_files.append(rel)
    with open(os.path.join(safe, "MTD_MSIL2A.xml"), "w", encoding="utf-8") as fh:
        fh.write(_metadata_xml(options, sorted(image_files)))
    if not options.zip:
        return safe
    archive = os.path.join(outdir, options.name + ".zip")
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        for folder, _dirs, names in os.walk(safe):
            for name in sorted(names):
                full = os.path.join(folder, name)
                zf.write(full, os.path.relpath(full, outdir))
    shutil.rmtree(safe)
    return archive
