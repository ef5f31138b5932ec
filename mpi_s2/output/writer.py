"""The GeoTIFF writer: the one process that writes the output file.

GDAL cannot write one GeoTIFF from several processes, so exactly one rank owns the file. It is created under
a temporary name in the output directory and renamed over the requested path only once complete, so a failed
run never leaves a half-written file under the name the user asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import numpy as np
from osgeo import gdal

from mpi_s2 import __version__
from mpi_s2.output.free_space import full_disk_error
from mpi_s2.errors import OutputError
from mpi_s2.output.profiles import as_gdal_list
from mpi_s2.inputs.bands import Grid
from mpi_s2.planning.windows import Window

gdal.UseExceptions()


def partial_path(output: str) -> str:
    """Where the output is written until it is complete (same directory, so the rename is atomic)."""
    head, tail = os.path.split(output)
    return os.path.join(head, f".{tail}.partial")


def check_output_path(output: str, *, overwrite: bool, inputs: tuple[str, ...] = ()) -> None:
    """Raise :class:`OutputError` when ``output`` cannot or must not be written."""
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory):
        raise OutputError(f"{output}: output directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise OutputError(f"{output}: output directory {directory} is not writable")
    if os.path.isdir(output):
        raise OutputError(f"{output}: is a directory")
    real_out = os.path.realpath(output)
    for path in inputs:
        if os.path.realpath(path) == real_out:
            raise OutputError(f"{output}: output would overwrite the input {path}")
    if os.path.exists(output) and not overwrite:
        raise OutputError(f"{output}: already exists (use --overwrite to replace it)")


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


#: Scratch files beside the temporary output: a COG's tiles and coarse levels, the journal of a resumable run
#: (see mpi_s2.output.tiff_assembly).
SPOOL_KINDS = ("tiles", "levels", "journal", "kept")  # kept: the note that a failed run was kept was printed


def spool_path(output: str, kind: str) -> str:
    """A scratch file of the run writing ``output``, beside its temporary file: ``.NAME.partial.KIND``."""
    assert kind in SPOOL_KINDS
    return f"{partial_path(output)}.{kind}"


def partial_run_exists(output: str) -> bool:
    """Whether a journal of a partial run of ``output`` is there (``--resume`` can continue it)."""
    return os.path.exists(spool_path(output, "journal"))


def remove_partial(output: str, keep: tuple[str, ...] = ()) -> None:
    """Best-effort removal of the temporary file of ``output`` and its scratch files (used when a run fails),
    but for the spool kinds in ``keep``."""
    for path in (partial_path(output), *(spool_path(output, kind) for kind in SPOOL_KINDS if kind not in keep)):
        try:
            os.unlink(path)
        except OSError:
            pass


@dataclass(frozen=True)
class OutputSpec:
    """Everything the writer needs to create the output file."""

    path: str
    grid: Grid
    band_count: int  # 3 (RGB) or 4 (RGBA)
    creation_options: Mapping[str, str]
    metadata: Mapping[str, str]


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
