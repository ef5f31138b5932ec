"""GDAL's GeoTIFF writer on the writer rank, for outputs whose tiles the workers cannot encode (JPEG, untiled,
band-interleaved): the writer rank then receives raw windows and GDAL encodes them.

GDAL cannot write one GeoTIFF from several processes, so exactly one rank owns the file. It is created under
a temporary name in the output directory and renamed over the requested path only once complete, so a failed
run never leaves a half-written file under the name the user asked for.
"""

from __future__ import annotations

import os

import numpy as np
from osgeo import gdal

from mpi_s2 import __version__
from mpi_s2.errors import OutputError
from mpi_s2.output.fingerprint import DIGEST_DOMAIN, DIGEST_ITEM
from mpi_s2.output.free_space import full_disk_error
from mpi_s2.output.paths import partial_path, remove_partial
from mpi_s2.output.plan import OutputSpec
from mpi_s2.output.profiles import as_gdal_list
from mpi_s2.windows import Window

gdal.UseExceptions()


class GeoTiffWriter:
    """Writes uint8 RGB(A) windows into a tiled GeoTIFF with the inputs' CRS and geotransform."""

    def __init__(self, spec: OutputSpec):
        self.spec = spec
        self._tmp = partial_path(spec.path)
        driver = gdal.GetDriverByName("GTiff")
        try:
            self._ds = driver.Create(
                self._tmp,
                spec.grid.width,
                spec.grid.height,
                spec.band_count,
                gdal.GDT_Byte,
                options=as_gdal_list(spec.creation_options),
            )
        except RuntimeError as exc:
            raise OutputError(f"{spec.path}: cannot create GeoTIFF: {exc}") from None
        self._ds.SetGeoTransform(spec.grid.geotransform)
        if spec.grid.crs_wkt:
            self._ds.SetProjection(spec.grid.crs_wkt)
        self._ds.SetMetadata({"TIFFTAG_SOFTWARE": f"mpi_s2 {__version__}", **dict(spec.metadata)})
        if spec.fingerprint_digest:
            self._ds.SetMetadataItem(DIGEST_ITEM, spec.fingerprint_digest, DIGEST_DOMAIN)
        interpretations = (gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand, gdal.GCI_AlphaBand)
        for i in range(spec.band_count):
            band = self._ds.GetRasterBand(i + 1)
            band.SetColorInterpretation(interpretations[i])
            if spec.band_count == 3:
                band.SetNoDataValue(0)  # no alpha: 0 means nodata, valid pixels are >= 1

    def write(self, window: Window, block: np.ndarray) -> None:
        """Write ``block`` (``(band_count, rows, cols)`` uint8) at ``window``."""
        try:
            self._ds.WriteRaster(
                *window.gdal_args(),
                block.data,
                buf_type=gdal.GDT_Byte,
                band_list=list(range(1, self.spec.band_count + 1)),
            )
            return
        except RuntimeError as exc:
            # GDAL's exception keeps the dataset alive through its traceback: take the message, drop the rest
            message = str(exc)
        raise OutputError(f"{self.spec.path}: writing the GeoTIFF failed: {message}")

    def commit(self) -> None:
        """Flush, close and move the file to its final name (replacing an existing one atomically)."""
        error = None
        try:
            self._ds.FlushCache()
        except RuntimeError as exc:  # GDAL's exception keeps the dataset alive through its traceback: text only
            error = str(exc)
        error = self._close() or error
        try:
            if error:
                raise RuntimeError(error)
            os.replace(self._tmp, self.spec.path)
        except (RuntimeError, OSError) as exc:
            full = full_disk_error(exc, self.spec.path, [self._tmp])  # before the partial file frees the space
            self.discard()
            raise full or OutputError(f"{self.spec.path}: writing the GeoTIFF failed: {exc}") from None

    def _close(self) -> str | None:
        """Close the dataset; return GDAL's error message if closing failed (it writes the last tiles and the
        index, and a failure there would otherwise only be printed by Python as an ignored exception)."""
        if self._ds is None:
            return None
        used = gdal.GetUseExceptions()
        gdal.DontUseExceptions()
        gdal.PushErrorHandler("CPLQuietErrorHandler")
        gdal.ErrorReset()
        try:
            self._ds = None
            failed = gdal.GetLastErrorType() >= gdal.CE_Failure
            return gdal.GetLastErrorMsg() or "closing the file failed" if failed else None
        finally:
            gdal.PopErrorHandler()
            if used:
                gdal.UseExceptions()

    def discard(self) -> None:
        """Drop the unfinished file."""
        self._close()
        remove_partial(self.spec.path)
