"""Sources: the input band files, their grid, and reading windows of them with GDAL.

Rank 0 inspects and checks the inputs (:func:`inspect_band_sets`, remote files several at a time); each worker
then opens its own handles (:class:`TileReader`), since a GDAL dataset must never be shared between processes.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, TypeVar

import numpy as np
from osgeo import gdal, osr

from mpi_s2.errors import InputError, SourceUnavailable
from mpi_s2.windows import Window

gdal.UseExceptions()

#: Order of the bands in every tuple of this package: red, green, blue.
BAND_NAMES = ("red", "green", "blue")


@dataclass(frozen=True, slots=True)
class Grid:
    """A raster's pixel grid: size, affine geotransform (GDAL order) and CRS as WKT ('' when absent)."""

    width: int
    height: int
    geotransform: tuple[float, float, float, float, float, float]
    crs_wkt: str

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)


@dataclass(frozen=True, slots=True)
class BandInfo:
    """What rank 0 learns about one band file before planning."""

    path: str
    grid: Grid
    block_size: tuple[int, int]
    data_type: str


#: URL schemes GDAL reads through a virtual file system: the path GDAL is given starts with the prefix.
_REMOTE = {"http://": "/vsicurl/", "https://": "/vsicurl/", "s3://": "/vsis3/", "gs://": "/vsigs/"}


#: GDAL's virtual file systems that read over a network
NETWORK_PREFIXES = ("/vsicurl/", "/vsis3/", "/vsigs/", "/vsiaz/", "/vsiadls/", "/vsioss/", "/vsiswift/",
                    "/vsiwebhdfs/", "/vsihdfs/")


def is_network_path(path: str) -> bool:
    """Whether GDAL reads ``path`` over a network (possibly inside an archive: ``/vsizip//vsicurl/...``)."""
    return any(prefix in path for prefix in NETWORK_PREFIXES)


def gdal_path(location: str) -> str:
    """What GDAL is given for a file named on the command line (or in a catalogue): a GDAL virtual path
    (``/vsicurl/...``, ``/vsis3/...``, ``/vsizip/...``) untouched; a URL through its virtual file system
    (``https://h/x.tif`` -> ``/vsicurl/https://h/x.tif``, ``s3://bucket/key`` -> ``/vsis3/bucket/key``); ``file://``
    and local paths made absolute. Never normalised otherwise: ``//`` in a URL must reach GDAL as it is."""
    if location.startswith("/vsi"):
        return location
    for scheme, prefix in _REMOTE.items():
        if location.startswith(scheme):
            return prefix + (location if prefix == "/vsicurl/" else location[len(scheme):])
    if location.startswith("file://"):
        location = location[len("file://"):]
    return os.path.abspath(location)


#: What libcurl reports when a server closes a new connection without answering, by an orderly close or a reset.
#: libcurl itself resends a request only when this happens on a kept-alive connection, and GDAL 3.6 retries neither
#: (it retries HTTP 429 and 5xx, and timeouts), so :func:`open_dataset` retries them as GDAL retries a 503.
DROPPED_CONNECTION = ("Empty reply from server", "Connection reset by peer")


def open_dataset(path: str) -> gdal.Dataset:
    """Open ``path`` read-only, turning GDAL's error into an :class:`InputError` that names the file. A remote open
    whose new connection is dropped (:data:`DROPPED_CONNECTION`) is tried again, up to ``GDAL_HTTP_MAX_RETRY``
    times, ``GDAL_HTTP_RETRY_DELAY`` seconds doubling between tries (the planner opens remote files on several
    threads, each on a connection of its own; so does each worker)."""
    if not path.startswith("/vsi") and not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    if not path.startswith("/vsi") and not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied")
    retries = int(gdal.GetConfigOption("GDAL_HTTP_MAX_RETRY") or 0) if is_network_path(path) else 0
    delay = float(gdal.GetConfigOption("GDAL_HTTP_RETRY_DELAY") or 30)
    attempt = 0
    while True:
        try:
            return gdal.Open(path, gdal.GA_ReadOnly)
        except RuntimeError as exc:
            reason = _gdal_reason(exc)
            if attempt == retries or not any(text in reason for text in DROPPED_CONNECTION):
                raise InputError(f"{path}: cannot be read as a raster ({reason})") from None
        gdal.VSICurlPartialClearCache(path)  # GDAL remembers the failed open
        time.sleep(delay * 2**attempt)
        attempt += 1


def _gdal_reason(exc: BaseException) -> str:
    text = str(exc).strip() or gdal.GetLastErrorMsg().strip()
    return text.splitlines()[0] if text else "the decoder gave no detail; the file is probably truncated or corrupt"


def inspect_band(path: str) -> BandInfo:
    """Open one single-band uint16 file and describe it; raise :class:`InputError` on anything unusable."""
    ds = open_dataset(path)
    if ds.RasterCount < 1:
        raise InputError(f"{path}: has no raster band")
    if ds.RasterCount > 1:
        raise InputError(f"{path}: has {ds.RasterCount} bands, expected one (each of --red, --green, --blue "
                         f"takes a single-band file: B04, B03, B02)")
    band = ds.GetRasterBand(1)
    data_type = gdal.GetDataTypeName(band.DataType)
    if band.DataType != gdal.GDT_UInt16:
        raise InputError(f"{path}: band 1 is {data_type}, expected UInt16 (Sentinel-2 digital numbers)")
    block_x, block_y = band.GetBlockSize()
    grid = Grid(
        width=ds.RasterXSize,
        height=ds.RasterYSize,
        geotransform=tuple(float(v) for v in ds.GetGeoTransform()),  # type: ignore[arg-type]
        crs_wkt=ds.GetProjection() or "",
    )
    return BandInfo(path=path, grid=grid, block_size=(block_x, block_y), data_type=data_type)


def same_crs(wkt_a: str, wkt_b: str) -> bool:
    """True when two WKT strings describe the same CRS (both empty counts as the same)."""
    if not wkt_a or not wkt_b:
        return wkt_a == wkt_b
    a, b = osr.SpatialReference(), osr.SpatialReference()
    a.ImportFromWkt(wkt_a)
    b.ImportFromWkt(wkt_b)
    return bool(a.IsSame(b))


def epsg_code(wkt: str) -> int | None:
    """The EPSG code of the CRS in ``wkt`` (e.g. 32632), identified by GDAL when the WKT does not name it; None
    without a CRS or when GDAL finds no code."""
    if not wkt:
        return None
    srs = osr.SpatialReference()
    try:
        srs.ImportFromWkt(wkt)
        with contextlib.suppress(RuntimeError):
            srs.AutoIdentifyEPSG()
        if srs.GetAuthorityCode(None) is None:  # e.g. from a PROJ string: ask PROJ's database for a sure match
            sure = [match for match, confidence in srs.FindMatches() or () if confidence >= 90]
            srs = sure[0] if len(sure) == 1 else srs
        code, name = srs.GetAuthorityCode(None), srs.GetAuthorityName(None)
    except RuntimeError:
        return None
    return int(code) if code and code.isdigit() and (name or "").upper() == "EPSG" else None


def same_geotransform(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Geotransforms equal to a millionth of a pixel."""
    tolerance = 1e-6 * max(abs(a[1]), abs(a[5]), 1e-12)
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


#: Remote files the planner opens at once. Opening one waits for one or two round trips (a HEAD, the header read),
#: and a season of a region is thousands of files: 600 items x 4 files at 20 ms a round trip would keep a whole
#: allocation waiting for about 90 s, one file at a time. GDAL lets other threads run while it waits.
OPENS_AT_ONCE = 16

_Opened = TypeVar("_Opened")


def open_all(open_one: Callable[[str], _Opened], paths: Sequence[str]) -> dict[str, _Opened | InputError]:
    """``open_one`` of each distinct path, up to :data:`OPENS_AT_ONCE` at a time when some path is remote (one at a
    time otherwise); an :class:`InputError` is kept as the path's value, for the caller to raise in its order."""
    distinct = list(dict.fromkeys(paths))

    def attempt(path: str) -> _Opened | InputError:
        try:
            return open_one(path)
        except InputError as exc:
            return exc

    if len(distinct) < 2 or not any(is_network_path(p) for p in distinct):
        return {path: attempt(path) for path in distinct}
    pool = ThreadPoolExecutor(min(OPENS_AT_ONCE, len(distinct)), thread_name_prefix="mpi_s2-open")
    try:
        return dict(zip(distinct, pool.map(attempt, distinct), strict=True))
    finally:  # a stop (a signal's exception) leaves the files not yet begun unopened
        pool.shutdown(wait=True, cancel_futures=True)


def opened(value: _Opened | InputError) -> _Opened:
    """A value of :func:`open_all`, or its error raised."""
    if isinstance(value, InputError):
        raise value
    return value


def inspect_band_sets(sets: Sequence[tuple[str, str, str]]) -> list[tuple[Grid, tuple[BandInfo, ...]]]:
    """Inspect each set's red, green and blue files (:func:`inspect_band`, opened by :func:`open_all`) and check
    that they share one grid (:func:`check_band_set`): the results, and the first error, of a loop over the sets."""
    infos = open_all(inspect_band, [path for paths in sets for path in paths])
    return [check_band_set(tuple(opened(infos[path]) for path in paths)) for paths in sets]


def check_band_set(infos: tuple[BandInfo, ...]) -> tuple[Grid, tuple[BandInfo, ...]]:
    """Check that the red, green and blue files described share one grid; return it with the infos."""
    first = infos[0]
    for name, info in zip(BAND_NAMES[1:], infos[1:], strict=True):
        if info.grid.size != first.grid.size:
            raise InputError(
                f"{info.path}: {name} band is {info.grid.width} x {info.grid.height} pixels, "
                f"but {first.path} is {first.grid.width} x {first.grid.height}"
            )
        if not same_crs(info.grid.crs_wkt, first.grid.crs_wkt):
            raise InputError(f"{info.path}: {name} band has a different CRS than {first.path}")
        if not same_geotransform(info.grid.geotransform, first.grid.geotransform):
            raise InputError(
                f"{info.path}: {name} band has geotransform {info.grid.geotransform}, "
                f"but {first.path} has {first.grid.geotransform}"
            )
    return first.grid, infos


def inspect_mask(path: str) -> BandInfo:
    """Open a scene classification (SCL) file: one uint8 band."""
    ds = open_dataset(path)
    band = ds.GetRasterBand(1)
    if band.DataType != gdal.GDT_Byte:
        raise InputError(f"{path}: scene classification band is {gdal.GetDataTypeName(band.DataType)}, "
                         "expected Byte (SCL classes 0..11)")
    grid = Grid(ds.RasterXSize, ds.RasterYSize, tuple(ds.GetGeoTransform()), ds.GetProjection() or "")
    return BandInfo(path=path, grid=grid, block_size=tuple(band.GetBlockSize()), data_type="Byte")


class TileReader:
    """Reads windows of one source's red, green, blue (and SCL) into caller-provided buffers.

    Each worker opens its own handles, and keeps the datasets referenced while it reads their bands.
    Window coordinates are the source's own pixel coordinates.
    """

    def __init__(self, files: tuple[str, ...], datasets: tuple[str, ...], mask_file: str | None = None,
                 mask_dataset: str | None = None, on_decode: Callable[[str, Window], None] | None = None,
                 mask_factor: int = 0):
        """``on_decode(file, window)`` is called after each read of a band file itself (not of a copy or VRT).
        ``mask_factor`` ``f`` > 1: the mask dataset is on its own grid, one pixel per ``f x f`` band pixels."""
        self.mask_factor = mask_factor
        self.files = files + ((mask_file,) if mask_file else ())
        pairs = list(zip(self.files, datasets + ((mask_dataset,) if mask_dataset else ()), strict=True))
        self._decodes = [on_decode if on_decode and d == f else None for f, d in pairs]
        self._datasets = [self._open(f, d) for f, d in pairs]
        self._bands = [ds.GetRasterBand(1) for ds in self._datasets]
        self.has_mask = mask_dataset is not None

    @staticmethod
    def _open(file: str, dataset: str) -> gdal.Dataset:
        if dataset == file:
            return open_dataset(file)
        try:
            return gdal.Open(dataset, gdal.GA_ReadOnly)
        except RuntimeError as exc:
            raise InputError(f"{file}: cannot be opened for reprojection ({_gdal_reason(exc)})") from None

    def read_band(self, i: int, window: Window, buf: np.ndarray) -> None:
        """Fill ``buf`` (``window.shape``) with band ``i`` of the reader (0: red or the only file)."""
        try:
            self._bands[i].ReadAsArray(*window.gdal_args(), buf_obj=buf)
        except RuntimeError as exc:
            error = SourceUnavailable if is_network_path(self.files[i]) else InputError
            raise error(
                f"{self.files[i]}: reading pixels at column {window.col_off}, row {window.row_off} "
                f"({window.width} x {window.height}) failed: {_gdal_reason(exc)}"
            ) from None
        on_decode = self._decodes[i]
        if on_decode is not None:
            on_decode(self.files[i], window)

    def read(self, window: Window, out: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        """Fill ``out`` (three ``window.shape`` uint16 arrays) with red, green and blue."""
        for i, buf in enumerate(out):
            self.read_band(i, window, buf)

    def read_mask(self, window: Window, out: np.ndarray) -> None:
        """Fill ``out`` (``window.shape`` uint8) with the scene classification: read on its own grid and
        repeated ``f x f`` (nearest neighbour, what a warp to the bands' grid gives, several times faster)."""
        f = self.mask_factor
        if f <= 1:
            self.read_band(3, window, out)
            return
        r0, c0 = window.row_off // f, window.col_off // f
        r1, c1 = -(-(window.row_off + window.height) // f), -(-(window.col_off + window.width) // f)
        native = np.empty((r1 - r0, c1 - c0), dtype=np.uint8)
        self.read_band(3, Window(c0, r0, c1 - c0, r1 - r0), native)
        if window.row_off % f == 0 and window.col_off % f == 0 and window.height % f == 0 and window.width % f == 0:
            out.reshape(window.height // f, f, window.width // f, f)[...] = native[:, None, :, None]
        else:
            dr, dc = window.row_off - r0 * f, window.col_off - c0 * f
            expanded = np.repeat(np.repeat(native, f, axis=0), f, axis=1)
            out[...] = expanded[dr:dr + window.height, dc:dc + window.width]
