"""The writer's side of worker-encoded tiles: place them in a tiled GeoTIFF, in whatever order they arrive.

tifffile writes pre-encoded tiles verbatim from an iterator, and the TIFF structure around them; it takes them
in arrival order, so the tile index (TileOffsets, TileByteCounts) is put in row-major order afterwards, in place.
Everything GDAL would have written around the pixels (georeferencing, GDAL metadata and nodata, colour
interpretation, codec and predictor tags) is taken from a small template file GDAL makes with the same
creation options, so GDAL reads the result as it reads its own. Tiles no window covers are left sparse
(byte count 0), which GDAL reads as 0. The file is written under the temporary name and renamed when complete.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import numpy as np
import tifffile
from osgeo import gdal

from mpi_s2 import __version__
from mpi_s2.errors import OutputError
from mpi_s2.output.profiles import as_gdal_list
from mpi_s2.output.tiles import TileEntry, TileLayout, needs_bigtiff, tile_size
from mpi_s2.output.writer import OutputSpec, partial_path, remove_partial

gdal.UseExceptions()

#: Tags copied from GDAL's template: GeoTIFF keys and parameters, GDAL's metadata and nodata.
GEO_TAGS = (33550, 33922, 34264, 34735, 34736, 34737, 42112, 42113)
_INTERPRETATIONS = (gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand, gdal.GCI_AlphaBand)


def geotiff_template(spec: OutputSpec) -> dict:
    """What GDAL writes around the pixels for ``spec``: read back from a one-tile file it makes."""
    path = f"/vsimem/mpi_s2_template_{os.getpid()}.tif"
    tx, ty = tile_size(spec.creation_options)
    options = {k: v for k, v in spec.creation_options.items() if k != "BIGTIFF"}
    ds = gdal.GetDriverByName("GTiff").Create(path, tx, ty, spec.band_count, gdal.GDT_Byte,
                                              options=as_gdal_list(options))
    ds.SetGeoTransform(spec.grid.geotransform)
    if spec.grid.crs_wkt:
        ds.SetProjection(spec.grid.crs_wkt)
    ds.SetMetadata(dict(spec.metadata))
    for i in range(spec.band_count):
        band = ds.GetRasterBand(i + 1)
        band.SetColorInterpretation(_INTERPRETATIONS[i])
        if spec.band_count == 3:
            band.SetNoDataValue(0)
    ds = None
    fh = gdal.VSIFOpenL(path, "rb")
    try:
        gdal.VSIFSeekL(fh, 0, 2)
        size = gdal.VSIFTellL(fh)
        gdal.VSIFSeekL(fh, 0, 0)
        data = bytes(gdal.VSIFReadL(1, size, fh))
    finally:
        gdal.VSIFCloseL(fh)
        gdal.Unlink(path)
    import io

    with tifffile.TiffFile(io.BytesIO(data)) as tf:
        tags = tf.pages[0].tags
        return {
            "extratags": [(t.code, t.dtype, t.count, t.value, True) for t in tags.values() if t.code in GEO_TAGS],
            "compression": int(tags.valueof(259, 1)),
            "predictor": int(tags.valueof(317, 1)),
        }


class TiledTiffAssembler:
    """Writes ``spec``'s GeoTIFF from encoded tiles (``(tile number, bytes)``) arriving in any order."""

    def __init__(self, spec: OutputSpec):
        self.spec = spec
        self.layout = TileLayout(spec.grid.width, spec.grid.height, tile_size(spec.creation_options))
        self.bigtiff = needs_bigtiff(spec.grid.width, spec.grid.height, spec.band_count, spec.creation_options)
        self._tmp = partial_path(spec.path)
        self._template = geotiff_template(spec)

    def write(self, windows: Iterable[list[TileEntry]]) -> None:
        """Consume ``windows`` (each a list of encoded tiles) and write the whole file under the temporary name."""
        order: list[int] = []
        seen = np.zeros(self.layout.count, dtype=bool)

        def tiles() -> Iterator[bytes]:
            for window in windows:
                for _level, number, data in window:
                    if seen[number]:
                        raise OutputError(f"{self.spec.path}: tile {number} arrived twice")
                    seen[number] = True
                    order.append(number)
                    yield data.tobytes() if isinstance(data, np.ndarray) else data
            for number in np.flatnonzero(~seen).tolist():  # tiles no window covers: sparse
                order.append(number)
                yield b""

        t = self._template
        ty, tx = self.layout.tile[1], self.layout.tile[0]
        try:
            with tifffile.TiffWriter(self._tmp, bigtiff=self.bigtiff) as tw:
                tw.write(data=tiles(), shape=(self.spec.grid.height, self.spec.grid.width, self.spec.band_count),
                         dtype=np.uint8, tile=(ty, tx), photometric="rgb", planarconfig="contig",
                         extrasamples=["unassalpha"] if self.spec.band_count == 4 else None,
                         compression="ADOBE_DEFLATE" if t["compression"] != 1 else None,
                         predictor=t["predictor"] == 2, extratags=t["extratags"], metadata=None,
                         software=f"mpi_s2 {__version__}")
            self._reorder(order)
        except OSError as exc:
            raise OutputError(f"{self.spec.path}: writing the GeoTIFF failed: {exc.strerror or exc}") from None

    def _reorder(self, order: list[int]) -> None:
        """Put the tile index in row-major order and set the real codec, in place."""
        with tifffile.TiffFile(self._tmp, mode="r+b") as tf:
            page = tf.pages[0]
            offsets, counts = page.tags["TileOffsets"], page.tags["TileByteCounts"]
            by_arrival_o, by_arrival_c = list(offsets.value), list(counts.value)
            new_o, new_c = [0] * len(order), [0] * len(order)
            for position, number in enumerate(order):
                new_o[number], new_c[number] = by_arrival_o[position], by_arrival_c[position]
                if not new_c[number]:
                    new_o[number] = 0
            offsets.overwrite(new_o)
            counts.overwrite(new_c)
            if self._template["compression"] != 1:
                page.tags["Compression"].overwrite(self._template["compression"])

    def commit(self) -> None:
        try:
            os.replace(self._tmp, self.spec.path)
        except OSError as exc:
            self.discard()
            raise OutputError(f"{self.spec.path}: writing the GeoTIFF failed: {exc.strerror}") from None

    def discard(self) -> None:
        remove_partial(self.spec.path)
