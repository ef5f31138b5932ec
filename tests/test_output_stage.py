"""The output stage: workers encode whole output tiles, the writer only places bytes; GDAL reads the same file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from osgeo import gdal

from mpi_s2 import __version__
from mpi_s2.output.tiff_assembly import CLASSIC_TIFF_LIMIT, needs_bigtiff
from mpi_s2.output.tile_encoding import workers_can_compress
from mpi_s2.output.tile_messages import RAW_PIECE, pack_tiles, unpack_tiles
from mpi_s2.windows import TileLayout

from conftest import compose_args, read_array, run_mpi_s2

RESOLUTION_TAGS = {"TIFFTAG_XRESOLUTION": "1", "TIFFTAG_YRESOLUTION": "1", "TIFFTAG_RESOLUTIONUNIT": "1 (unitless)"}


@pytest.fixture(scope="module")
def expected_rgba(scene, reference, valid) -> np.ndarray:
    """The README's pixels, built without mpi_s2: gdal_translate's stretch where every input DN is non-zero, 0
    elsewhere; alpha 255 where valid."""
    assert valid.any() and not valid.all()
    return np.concatenate([np.where(valid, reference, 0), np.where(valid, 255, 0)[None]]).astype(np.uint8)


def gdal_written(path, pixels: np.ndarray, like: str, options: list[str], metadata: dict[str, str]) -> gdal.Dataset:
    """``pixels`` written by GDAL's GTiff driver with ``options``, the georeferencing of the input ``like``,
    ``metadata``, and nodata 0 on each band when there is no alpha band (README: 0 means nodata)."""
    src = gdal.Open(like)
    bands = pixels.shape[0]
    ds = gdal.GetDriverByName("GTiff").Create(str(path), pixels.shape[2], pixels.shape[1], bands, gdal.GDT_Byte,
                                              options=options)
    ds.SetGeoTransform(src.GetGeoTransform())
    ds.SetSpatialRef(src.GetSpatialRef())
    ds.SetMetadata(metadata)
    for b in range(bands):
        if bands == 3:
            ds.GetRasterBand(b + 1).SetNoDataValue(0)
        ds.GetRasterBand(b + 1).WriteArray(pixels[b])
    ds = None
    return gdal.Open(str(path))


@pytest.fixture(scope="module")
def uncompressed(scene, expected_rgba, tmp_path_factory):
    """The reference of the README's claim: the expected pixels written by GDAL's own writer, uncompressed."""
    out = tmp_path_factory.mktemp("plain") / "plain.tif"
    gdal_written(out, expected_rgba, scene["red"], ["TILED=YES", "BLOCKXSIZE=512", "BLOCKYSIZE=512",
                                                    "COMPRESS=NONE", "PHOTOMETRIC=RGB", "ALPHA=YES"], {})
    return out


CASES = [  # codec, predictor, alpha, ranks
    ("ZSTD", "2", True, 2), ("ZSTD", "1", False, 3), ("DEFLATE", "2", True, 4), ("DEFLATE", "1", True, 2),
    ("LZW", "2", False, 2), ("LZW", "1", True, 3), ("NONE", None, True, 4), ("NONE", None, False, 3),
]


@pytest.mark.parametrize("codec,predictor,alpha,ranks", CASES)
def test_worker_encoded_tiles_read_back_as_gdal_writes_them(scene, uncompressed, expected_rgba, tmp_path, codec,
                                                             predictor, alpha, ranks):
    out, report_path = tmp_path / "rgb.tif", tmp_path / "run.json"
    extra = ["--co", f"COMPRESS={codec}", "--report", str(report_path)]
    if predictor:
        extra += ["--co", f"PREDICTOR={predictor}"]
    if not alpha:
        extra.append("--no-alpha")
    result = run_mpi_s2(compose_args(scene, out, *extra), ranks=ranks)
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert report["tiles_encoded_by"] == "workers"
    assert report["output_stage"]["n_star"] > 0

    plain = read_array(uncompressed)  # README: pixels equal GDAL's uncompressed output
    got = read_array(out)
    if alpha:
        assert np.array_equal(got, plain)
    else:
        assert np.array_equal(got, np.where(plain[3] > 0, np.maximum(plain[:3], 1), 0))  # 0 kept for nodata
    ds = gdal.Open(str(out))
    metadata = ds.GetMetadata()
    ours = {k: v for k, v in metadata.items() if k.startswith("MPI_S2") or k == "TIFFTAG_SOFTWARE"}
    assert ours == {"TIFFTAG_SOFTWARE": f"mpi_s2 {__version__}", "MPI_S2_MAX_REFLECTANCE": "1.0",
                    "MPI_S2_GAMMA": "2.2",
                    "MPI_S2_RADIOMETRY": f"{scene['red']}: band files: offset 0, scale 10000, from options"}
    # GDAL's GTiff driver writing the same pixels with the same creation options and mpi_s2's metadata items:
    # what GDAL reports of both files must agree
    options = ["TILED=YES", "BLOCKXSIZE=512", "BLOCKYSIZE=512", f"COMPRESS={codec}", "PHOTOMETRIC=RGB"]
    options += ([f"PREDICTOR={predictor}"] if predictor else []) + (["ALPHA=YES"] if alpha else [])
    ref = gdal_written(tmp_path / "gdal.tif", got, scene["red"], options, ours)
    assert np.array_equal(ref.ReadAsArray(), got)
    assert ds.GetMetadata("IMAGE_STRUCTURE") == ref.GetMetadata("IMAGE_STRUCTURE")
    assert ds.GetMetadataItem("COMPRESSION", "IMAGE_STRUCTURE") == (None if codec == "NONE" else codec)
    assert ds.GetMetadataItem("PREDICTOR", "IMAGE_STRUCTURE") == (predictor if predictor != "1" else None)
    assert ds.GetGeoTransform() == ref.GetGeoTransform() and ds.GetSpatialRef().IsSame(ref.GetSpatialRef())
    assert ds.GetSpatialRef().GetAuthorityCode(None) == "32632"
    bands = 4 if alpha else 3
    assert ds.RasterCount == ref.RasterCount == bands
    assert [ds.GetRasterBand(i + 1).GetColorInterpretation() for i in range(bands)] == \
        [ref.GetRasterBand(i + 1).GetColorInterpretation() for i in range(bands)] == \
        [gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand, gdal.GCI_AlphaBand][:bands]
    assert [ds.GetRasterBand(i + 1).GetNoDataValue() for i in range(bands)] == \
        [ref.GetRasterBand(i + 1).GetNoDataValue() for i in range(bands)] == [None if alpha else 0] * bands
    assert ds.GetRasterBand(1).GetBlockSize() == ref.GetRasterBand(1).GetBlockSize() == [512, 512]
    # the TIFF writer adds a unitless resolution of 1 (baseline TIFF tags GDAL leaves out); nothing else differs
    assert {k: v for k, v in metadata.items() if k not in RESOLUTION_TAGS} == ref.GetMetadata()
    assert {k: metadata[k] for k in RESOLUTION_TAGS if k in metadata}.items() <= RESOLUTION_TAGS.items()


def test_windows_that_are_not_whole_tiles_are_encoded_by_the_writer(scene, uncompressed, tmp_path):
    out, report_path = tmp_path / "rgb.tif", tmp_path / "run.json"
    result = run_mpi_s2(compose_args(scene, out, "--window", "300", "--report", str(report_path)), ranks=3)
    assert result.returncode == 0, result.stderr
    assert json.loads(report_path.read_text())["tiles_encoded_by"].startswith("writer: windows of 300 x 300")
    assert np.array_equal(read_array(out), read_array(uncompressed))


def test_which_layouts_workers_can_encode():
    tiled = {"TILED": "YES", "BLOCKXSIZE": "512", "BLOCKYSIZE": "512"}
    assert workers_can_compress({**tiled, "COMPRESS": "ZSTD"}, (1024, 1024)) is None
    assert "not whole 512 x 512 tiles" in workers_can_compress(tiled, (768, 1024))
    assert workers_can_compress(tiled, (768, 1024), (768, 5000)) is None  # one window spans the width
    assert "JPEG" in workers_can_compress({**tiled, "COMPRESS": "JPEG"}, (1024, 1024))
    assert "not tiled" in workers_can_compress({"TILED": "NO"}, (1024, 1024))
    assert "INTERLEAVE" in workers_can_compress({**tiled, "INTERLEAVE": "BAND"}, (1024, 1024))


def test_bigtiff_whenever_the_file_may_pass_4_gib_compressed_or_not():
    options = {"TILED": "YES", "BLOCKXSIZE": "512", "BLOCKYSIZE": "512", "COMPRESS": "ZSTD", "BIGTIFF": "IF_SAFER"}
    # a 2 x 2 mosaic of Sentinel-2 tiles, RGBA: 20980^2 x 4 bytes = 1.76 GB raw: classic TIFF is safe
    assert not needs_bigtiff(20980, 20980, 4, options)
    # just under 4 GiB of pixels (tiles of 256, stored whole): incompressible tiles could pass it: BigTIFF
    small_tiles = {**options, "BLOCKXSIZE": "256", "BLOCKYSIZE": "256"}
    assert 32768 * 32512 * 4 < CLASSIC_TIFF_LIMIT and needs_bigtiff(32768, 32500, 4, small_tiles)
    assert needs_bigtiff(40000, 40000, 4, options)  # past 4 GiB raw, whatever the codec
    assert needs_bigtiff(100, 100, 4, {**options, "BIGTIFF": "YES"})
    assert not needs_bigtiff(40000, 40000, 4, {**options, "BIGTIFF": "NO"})
    # overviews add about a third: 30000^2 RGBA is 3.6 GB raw, classic alone, BigTIFF with its overviews
    assert not needs_bigtiff(30000, 30000, 4, options) and needs_bigtiff(30000, 30000, 4, options, levels=6)


def test_tile_messages_round_trip():
    tiles = [(0, 5, b"abc"), (0, 6, b""), (2, 17, bytes(range(200))), (3, RAW_PIECE, np.arange(12, dtype=np.uint8))]
    message = pack_tiles(tiles)
    assert [(level, number, data.tobytes()) for level, number, data in unpack_tiles(message)] == \
        [(level, number, bytes(data)) for level, number, data in tiles]
    layout = TileLayout(1300, 1100, (512, 512))
    assert (layout.across, layout.down, layout.count, layout.index(2, 1)) == (3, 3, 9, 5)
