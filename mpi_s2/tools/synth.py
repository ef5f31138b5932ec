"""A synthetic Sentinel-2-like scene: three georeferenced uint16 band files, no download needed.

The scene sits on the UTM 32N 10 m grid of tile 32TMS (central Switzerland). Its texture is smooth terrain plus
per-pixel noise derived from the pixel coordinates, so every pixel differs from its neighbours and a window
written to the wrong place is visible. It holds what a real tile holds: a nodata wedge at the swath edge,
dark water, bright clouds above the 10000 clip, a few saturated pixels (65535) and a patch where only the
blue band is nodata (nodata in any band must make the pixel invalid).

:func:`synthesize_product` writes such a scene as an L2A product (SAFE layout, JPEG 2000, MTD_MSIL2A.xml);
:func:`synthesize_observation` writes given arrays as one; :func:`synthesize_series` writes a time series of
products of one tile under moving clouds, and returns the cloud-free truth they were made from.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

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
    # percent written as Cloud_Coverage_Assessment / CLOUDY_PIXEL_PERCENTAGE; None: no Quality_Indicators_Info
    cloud_cover: float | None = None

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
    if max(array.shape) < 32:  # a small coarse band of a small product: OpenJPEG's smallest block is 32
        block = 32
    gdal.GetDriverByName("JP2OpenJPEG").CreateCopy(
        path, mem, options=["QUALITY=100", "REVERSIBLE=YES", f"BLOCKXSIZE={block}", f"BLOCKYSIZE={block}"])


def _start_time(sensing: str) -> str:
    """``'20230715T102559'`` -> ``'2023-07-15T10:25:59.024Z'`` (PRODUCT_START_TIME, as ESA writes it)."""
    try:
        when = datetime.strptime(sensing, "%Y%m%dT%H%M%S")
    except ValueError:
        raise InputError(f"sensing time {sensing!r}: expected YYYYMMDDTHHMMSS, e.g. 20230715T102559") from None
    return when.strftime("%Y-%m-%dT%H:%M:%S") + ".024Z"


#: Image_Content_QI elements of an L2A product and the SCL classes each counts (percent of the valid pixels)
_SCL_CONTENT = {"CLOUD_SHADOW_PERCENTAGE": (3,), "VEGETATION_PERCENTAGE": (4,), "NOT_VEGETATED_PERCENTAGE": (5,),
                "WATER_PERCENTAGE": (6,), "MEDIUM_PROBA_CLOUDS_PERCENTAGE": (8,),
                "HIGH_PROBA_CLOUDS_PERCENTAGE": (9,), "THIN_CIRRUS_PERCENTAGE": (10,)}
#: the classes that make up the cloud cover this module writes: cloud shadow, clouds (medium, high), thin cirrus
CLOUDY_CLASSES = (3, 8, 9, 10)


def scl_cloud_cover(scl: np.ndarray) -> float:
    """Percent of the valid (SCL != 0) pixels of ``scl`` in :data:`CLOUDY_CLASSES`, rounded to 6 decimals."""
    valid = int(np.count_nonzero(scl))
    cloudy = int(np.count_nonzero(np.isin(scl, CLOUDY_CLASSES)))
    return round(100.0 * cloudy / valid, 6) if valid else 0.0


def _scl_content(scl: np.ndarray) -> dict[str, float]:
    """The Image_Content_QI percentages of ``scl``: NODATA of all pixels, the classes of the valid ones."""
    valid = int(np.count_nonzero(scl))
    content = {"NODATA_PIXEL_PERCENTAGE": round(100.0 * (scl.size - valid) / scl.size, 6)}
    for name, classes in _SCL_CONTENT.items():
        count = int(np.count_nonzero(np.isin(scl, classes)))
        content[name] = round(100.0 * count / valid, 6) if valid else 0.0
    return content


def _quality_xml(cloud_cover: float | None, content: dict[str, float] | None) -> str:
    """``<n1:Quality_Indicators_Info>`` as in a real MTD_MSIL2A.xml (after General_Info); "" without a cover."""
    if cloud_cover is None:
        return ""
    items = {"CLOUDY_PIXEL_PERCENTAGE": cloud_cover, "CLOUDY_PIXEL_OVER_LAND_PERCENTAGE": cloud_cover,
             **(content or {})}
    lines = "\n".join(f"      <{name}>{value:.6f}</{name}>" for name, value in items.items())
    return f"""  <n1:Quality_Indicators_Info>
    <Cloud_Coverage_Assessment>{cloud_cover:.6f}</Cloud_Coverage_Assessment>
    <Image_Content_QI>
{lines}
    </Image_Content_QI>
  </n1:Quality_Indicators_Info>
"""


def _metadata_xml(options: ProductOptions, image_files: list[str], content: dict[str, float] | None = None) -> str:
    """MTD_MSIL2A.xml: PRODUCT_START_TIME from ``options.sensing``; with ``options.cloud_cover`` also
    Quality_Indicators_Info (Cloud_Coverage_Assessment, Image_Content_QI with CLOUDY_PIXEL_PERCENTAGE and
    ``content``'s percentages)."""
    files = "\n".join(f"            <IMAGE_FILE>{f}</IMAGE_FILE>" for f in image_files)
    offsets = ""
    if options.offset:
        offsets = ("<BOA_ADD_OFFSET_VALUES_LIST>\n"
                   + "\n".join(f'        <BOA_ADD_OFFSET band_id="{i}">{options.offset}</BOA_ADD_OFFSET>'
                               for i in range(len(_PHYSICAL)))
                   + "\n      </BOA_ADD_OFFSET_VALUES_LIST>")
    spectral = "\n".join(f'        <Spectral_Information bandId="{i}" physicalBand="{b}"/>'
                          for i, b in enumerate(_PHYSICAL))
    quality = _quality_xml(options.cloud_cover, content)
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>{_start_time(options.sensing)}</PRODUCT_START_TIME>
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
{quality}</n1:Level-2A_User_Product>
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


def _write_safe(outdir: str, options: ProductOptions, band_at: Callable[[str, int], np.ndarray],
                scl_at: Callable[[int], np.ndarray], content: dict[str, float] | None = None) -> str:
    """The SAFE layout of a synthetic L2A product: ``band_at(band, step)`` and ``scl_at(step)`` give the rasters
    on the grid ``step`` times coarser than 10 m (1, 2, 6); returns the .SAFE folder, or the .zip of it."""
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
            _write_jp2(os.path.join(safe, rel + ".jp2"), band_at(band, step), options, PIXEL * step)
            image_files.append(rel)
        if res >= 20:
            rel = f"{granule}/R{res}m/{stem}_SCL_{res}m"
            _write_jp2(os.path.join(safe, rel + ".jp2"), scl_at(step), options, PIXEL * step)
            image_files.append(rel)
    with open(os.path.join(safe, "MTD_MSIL2A.xml"), "w", encoding="utf-8") as fh:
        fh.write(_metadata_xml(options, sorted(image_files), content))
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


def synthesize_product(outdir: str, options: ProductOptions) -> str:
    """Write a synthetic L2A product (SAFE layout, JPEG 2000) into ``outdir``; return its path (.SAFE or .zip).

    R10m: B02, B03, B04; R20m: B02, B03, B04, SCL; R60m: B02, B03, B04, SCL. Same scene as :func:`synthesize`
    plus the product's offset (-1000 for baseline >= 04.00), and an SCL with clouds, shadows and cirrus.
    """
    height, width = options.height or options.size, options.size
    if width <= 0 or height <= 0:
        raise InputError(f"--size must be > 0, got {options.size}")
    _start_time(options.sensing)  # a bad sensing time fails before any file is written

    def band_at(band: str, step: int) -> np.ndarray:
        return product_dn(band, width, height, options, step)

    def scl_at(step: int) -> np.ndarray:
        scl = scl_rows(0, -(-height // step), width, height, step)
        beyond = options.beyond_swath(width, height, step)
        if beyond is not None:
            scl[beyond] = 0  # class 0: no data
        return scl

    return _write_safe(outdir, options, band_at, scl_at)


def synthesize_observation(outdir: str, options: ProductOptions, red: np.ndarray, green: np.ndarray,
                           blue: np.ndarray, scl: np.ndarray) -> str:
    """Write an L2A product holding the given rasters (same layout, JPEG 2000 and metadata as
    :func:`synthesize_product`); return its path (.SAFE, or .zip with ``options.zip``).

    ``red``, ``green``, ``blue``: uint16 DN of B04, B03, B02 at 10 m, shape (height, width), written as they are
    (the caller adds the baseline's offset; 0 is nodata). ``scl``: uint8 at 20 m, shape (ceil(height/2),
    ceil(width/2)). The arrays set the size: ``options.size``, ``height`` and ``orbit_edge`` are not used. The
    20 m and 60 m bands sample the 10 m ones (every 2nd / 6th pixel), the 60 m SCL every 3rd 20 m pixel, so every
    coarse pixel agrees with the 10 m pixel at its upper-left corner. With ``options.cloud_cover`` None the cloud
    cover written is :func:`scl_cloud_cover` of ``scl``; the metadata also carries ``scl``'s class percentages.
    """
    bands = {"red": red, "green": green, "blue": blue}
    shape = red.shape
    for name, array in bands.items():
        if array.dtype != np.uint16 or array.ndim != 2 or array.shape != shape or 0 in shape:
            raise ValueError(f"{name}: expected a non-empty 2-D uint16 array of the shape of red {shape}, "
                             f"got {array.dtype} {array.shape}")
    scl_shape = (-(-shape[0] // 2), -(-shape[1] // 2))
    if scl.dtype != np.uint8 or scl.shape != scl_shape:
        raise ValueError(f"scl: expected a uint8 array of shape {scl_shape} (20 m), got {scl.dtype} {scl.shape}")
    _start_time(options.sensing)
    if options.cloud_cover is None:
        options = replace(options, cloud_cover=scl_cloud_cover(scl))

    def band_at(band: str, step: int) -> np.ndarray:
        return np.ascontiguousarray(bands[band][::step, ::step])

    def scl_at(step: int) -> np.ndarray:
        return scl if step == 2 else np.ascontiguousarray(scl[::step // 2, ::step // 2])

    return _write_safe(outdir, options, band_at, scl_at, _scl_content(scl))


# ---------------------------------------------------------------------------------------------------------
# A time series of L2A products: one slowly changing surface under moving clouds, with a known truth

#: side, in 10 m pixels, of the square in the upper-left corner that is nodata on every date
SERIES_NODATA_BLOCK = 16
#: the date (index) on which a slanted wedge in the lower-right corner is beyond the swath (nodata), as on an
#: orbit's edge: those pixels are valid on one date fewer than their neighbours
SERIES_EDGE_DATE = 1
#: clear surface classes of the series' SCL (everything else, 0 included, is not a clear observation)
SERIES_CLEAR_CLASSES = (4, 5)


@dataclass(frozen=True)
class SeriesOptions:
    dates: int = 7
    size: int = 512  # width = height, 10 m pixels
    tile: str = "32TMS"
    epsg: int = EPSG
    origin: tuple[float, float] = ORIGIN
    jp2_block: int = 256
    start: str = "20230601T102559"  # sensing time of the first date
    step_days: int = 5
    seed: int = 1
    # baseline of date i (0-based) is baselines[i % len(baselines)]: 1st, 3rd, ... date 02.14 (no offset),
    # 2nd, 4th, ... 05.09 (BOA_ADD_OFFSET -1000)
    baselines: tuple[str, ...] = ("02.14", "05.09")
    zip: bool = False

    def sensing(self, index: int) -> str:
        first = datetime.strptime(self.start, "%Y%m%dT%H%M%S")
        return (first + timedelta(days=index * self.step_days)).strftime("%Y%m%dT%H%M%S")

    def product(self, index: int, cloud_cover: float | None = None) -> ProductOptions:
        return ProductOptions(size=self.size, tile=self.tile, epsg=self.epsg, origin=self.origin,
                              baseline=self.baselines[index % len(self.baselines)], sensing=self.sensing(index),
                              jp2_block=self.jp2_block, zip=self.zip, cloud_cover=cloud_cover)


@dataclass(frozen=True)
class SeriesResult:
    products: list[str]  # paths, in date order
    #: (3, h, w) float64: the cloud-free harmonised value reflectance * 10000 of R, G, B (B04, B03, B02)
    truth: np.ndarray
    dates: list[str]  # sensing times, YYYYMMDDTHHMMSS, in date order
    cloud_cover: list[float]  # percent written into each product's metadata
    baselines: list[str]  # processing baseline of each product
    #: (dates, h, w) bool: the 10 m pixel is a clear observation (SCL 4 or 5, DN non-zero) on that date
    clear: np.ndarray

    @property
    def clear_count(self) -> np.ndarray:
        """(h, w): on how many dates each 10 m pixel is clear."""
        return self.clear.sum(axis=0)


def _value_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth noise in [0, 1]: a random lattice every ``cell`` pixels, interpolated (smoothstep)."""
    h, w = shape
    grid = rng.random((int(h / cell) + 2, int(w / cell) + 2))
    y, x = np.arange(h) / cell, np.arange(w) / cell
    y0, x0 = y.astype(np.int64), x.astype(np.int64)
    ty, tx = y - y0, x - x0
    ty, tx = (ty * ty * (3 - 2 * ty))[:, None], (tx * tx * (3 - 2 * tx))[None, :]
    rows0, rows1 = grid[y0], grid[y0 + 1]
    top = rows0[:, x0] + (rows0[:, x0 + 1] - rows0[:, x0]) * tx
    bottom = rows1[:, x0] + (rows1[:, x0 + 1] - rows1[:, x0]) * tx
    return top + (bottom - top) * ty


def _fractal(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Three octaves of :func:`_value_noise`, in [0, 1]."""
    octaves = [(1.0, cell), (0.5, cell / 2.7), (0.25, cell / 7.0)]
    total = np.zeros(shape)
    for amplitude, cell_size in octaves:
        total += amplitude * _value_noise(rng, shape, max(cell_size, 1.5))
    return total / sum(amplitude for amplitude, _cell in octaves)


def _series_truth(options: SeriesOptions) -> tuple[np.ndarray, np.ndarray]:
    """The cloud-free surface (3, h, w) (integer-valued float64, 300..3000) and its vegetation mask (h, w)."""
    n = options.size
    rng = np.random.default_rng([options.seed, 7919])
    cell = max(n / 6.0, 4.0)
    vegetation = np.clip((_fractal(rng, (n, n), cell) - 0.5) * 4.0 + 0.5, 0.0, 1.0)  # fields and meadows
    brightness = 0.85 + 0.3 * _fractal(rng, (n, n), cell / 2.0)  # slopes, soils
    rows, cols = np.arange(n)[:, None], np.arange(n)[None, :]
    truth = np.empty((3, n, n))
    # vegetation and bare soil: R, G, B as reflectance * 10000
    for k, (veg, soil) in enumerate(((450.0, 2300.0), (800.0, 1900.0), (500.0, 1500.0))):
        texture = 0.9 + 0.2 * _hash_noise(rows, cols, 1000 * options.seed + k + 1).astype(np.float64)
        truth[k] = np.rint(np.clip((vegetation * veg + (1 - vegetation) * soil) * brightness * texture,
                                   300.0, 3000.0))
    return truth, vegetation > 0.5


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``mask`` moved by ``dy`` rows and ``dx`` columns, False where it moved in from outside."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        mask[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def _series_scl(options: SeriesOptions, index: int, vegetation20: np.ndarray) -> np.ndarray:
    """The 20 m SCL of date ``index``: clouds (8, 9), their shadows (3) and thin cirrus (10) in a weather band
    that moves one lane across the tile per date, clear land (4, 5) elsewhere, nodata (0) as documented."""
    n = options.dates
    h2 = w2 = -(-options.size // 2)
    rng = np.random.default_rng([options.seed, index, 104729])
    u = (np.arange(w2)[None, :] + 0.5) / w2
    v = (np.arange(h2)[:, None] + 0.5) / h2
    # lanes: the tile cut into n slanted, wavy bands; date d's weather covers `width` lanes starting at lane d, so
    # each pixel is under it on `width` of the n dates (shadows reach a little beyond it)
    weather_rng = np.random.default_rng([options.seed, 15485863])  # the same lanes on every date
    s = (u + 0.4 * v + 0.12 * (_value_noise(weather_rng, (h2, w2), max(h2 / 3.0, 2.0)) - 0.5)) / 1.4
    s = np.clip(s, 0.0, 1.0 - 1e-9) * n
    width = max(1, round(0.3 * n))
    inside = (s - index) % n  # position within the weather band, in lanes: [0, width) is inside
    taper = 0.35
    window = np.clip(np.minimum(inside, width - inside) / taper, 0.0, 1.0) * (inside < width)
    clouds = _fractal(rng, (h2, w2), max(h2 / 8.0, 3.0)) * window
    zone = window > 0
    scl = np.where(vegetation20, 4, 5).astype(np.uint8)
    if zone.any():
        share = rng.uniform(0.25, 0.6)  # of the weather band under cloud
        cut = np.quantile(clouds[zone], 1.0 - share)
        core = np.quantile(clouds[zone], 1.0 - 0.55 * share)
        cloudy = clouds > max(cut, 1e-6)
        shift = max(2, round(0.03 * h2))
        # a morning sun in the south-east: shadows fall to the north-west (up and left)
        shadow = _shift(cloudy, -shift, -(shift + shift // 2)) & ~cloudy
        cirrus_field = _value_noise(rng, (h2, w2), max(h2 / 5.0, 2.0)) * window
        cirrus = (cirrus_field > np.quantile(cirrus_field[zone], 1.0 - rng.uniform(0.05, 0.3))) & ~cloudy & ~shadow
        scl[cirrus] = 10
        scl[shadow] = 3
        scl[cloudy] = 8
        scl[clouds > max(core, 1e-6)] = 9
    if index == SERIES_EDGE_DATE:
        scl[(1.0 - u) + 0.5 * (1.0 - v) < 0.25] = 0  # beyond the swath edge
    block = SERIES_NODATA_BLOCK // 2
    scl[:block, :block] = 0
    return scl


def synthesize_series(outdir: str, options: SeriesOptions) -> SeriesResult:
    """Write ``options.dates`` L2A products of one tile into ``outdir``, ``step_days`` apart; return their paths and
    the truth they were made from (``from mpi_s2.tools.synth import SeriesOptions, synthesize_series``).

    Values: ``truth`` is the cloud-free harmonised value ``v = reflectance * 10000`` (integers, 300..3000). On date
    d the clear value of band b is ``round(truth[b] * (1 + gain[b, d]))``, where each band's gains are a
    permutation of ``linspace(-0.03, 0.03, dates)``: the per-pixel median over the clear dates is within 3 % of
    ``truth``, and equals it exactly where every date is clear and their number is odd. The stored DN is ``v + 1000``
    for baselines >= 04.00 (BOA_ADD_OFFSET -1000) and ``v`` before; 0 is nodata; valid DN stay in 1..65534.

    Weather, deterministic from ``seed``, in a band that crosses the tile one lane per date (each pixel is under
    it on about 30 % of the dates): clouds (SCL 9 core: v 6000..9200; SCL 8 edge: 0.8 of that + 0.2 of the
    surface), their shadows offset to the north-west (SCL 3: v 0.3 of the surface), thin cirrus (SCL 10: v 0.75
    of the surface + 1500); clear land is SCL 4 (vegetation) or 5. The classes are drawn at 20 m (the SCL grid)
    and repeated 2 x 2 at 10 m, so each 10 m pixel agrees with its SCL pixel. Nodata (DN 0 in every band, SCL 0):
    the upper-left :data:`SERIES_NODATA_BLOCK` square on every date, and on date :data:`SERIES_EDGE_DATE` a wedge
    in the lower-right corner. The cloud cover written into each product (and returned) is the percent of its
    valid (non-zero) 20 m SCL pixels in :data:`CLOUDY_CLASSES`.
    """
    if options.dates < 1:
        raise InputError(f"dates must be >= 1, got {options.dates}")
    if options.size < 2 * SERIES_NODATA_BLOCK:
        raise InputError(f"size must be >= {2 * SERIES_NODATA_BLOCK}, got {options.size}")
    if options.step_days < 1:
        raise InputError(f"step_days must be >= 1, got {options.step_days}")
    if not options.baselines:
        raise InputError("baselines must name at least one processing baseline")
    _start_time(options.start)
    n = options.size
    truth, vegetation = _series_truth(options)
    gains = np.linspace(-0.03, 0.03, options.dates) if options.dates > 1 else np.zeros(1)
    order = np.random.default_rng([options.seed, 3571])
    gain = np.stack([order.permutation(gains) for _band in range(3)])  # (3, dates)
    vegetation20 = vegetation[::2, ::2]

    products, dates, covers, baselines, clear = [], [], [], [], []
    for d in range(options.dates):
        scl = _series_scl(options, d, vegetation20)
        scl10 = np.repeat(np.repeat(scl, 2, axis=0), 2, axis=1)[:n, :n]
        cloud_level = 6000.0 + 2800.0 * _fractal(np.random.default_rng([options.seed, d, 7]), (n, n), max(n / 10, 3))
        cover = scl_cloud_cover(scl)
        product = options.product(d, cover)
        dns = []
        for b in range(3):
            surface = np.rint(truth[b] * (1.0 + gain[b, d]))
            value = np.where(scl10 == 10, np.rint(0.75 * surface + 1500.0), surface)
            value = np.where(scl10 == 3, np.rint(0.3 * surface), value)
            bright = cloud_level + 200.0 * (2 - b)  # clouds a little bluish (b: 0 red, 2 blue)
            value = np.where(scl10 == 8, np.rint(0.8 * bright + 0.2 * surface), value)
            value = np.where(scl10 == 9, np.rint(bright), value)
            dn = np.clip(value - product.offset, 1.0, 65534.0).astype(np.uint16)
            dn[scl10 == 0] = 0
            dns.append(dn)
        products.append(synthesize_observation(outdir, product, dns[0], dns[1], dns[2], scl))
        dates.append(product.sensing)
        covers.append(cover)
        baselines.append(product.baseline)
        clear.append(np.isin(scl10, SERIES_CLEAR_CLASSES))
    return SeriesResult(products=products, truth=truth, dates=dates, cloud_cover=covers, baselines=baselines,
                        clear=np.stack(clear))
