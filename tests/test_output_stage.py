"""The output stage: workers encode whole output tiles, the writer only places bytes; GDAL reads the same file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from osgeo import gdal

from mpi_s2.output.tiff_assembly import CLASSIC_TIFF_LIMIT, needs_bigtiff
from mpi_s2.output.tile_encoding import workers_can_compress
from mpi_s2.output.tile_messages import RAW_PIECE, pack_tiles, unpack_tiles
from mpi_s2.windows import TileLayout

from conftest import compose_args, read_array, run_mpi_s2


@pytest.fixture(scope="module")
def uncompressed(scene, tmp_path_factory):
    """The reference: the same scene written by GDAL's own writer in one process, uncompressed."""
    out = tmp_path_factory.mktemp("plain") / "plain.tif"
    result = run_mpi_s2(compose_args(scene, out, "--co", "COMPRESS=NONE"), ranks=1)
    assert result.returncode == 0, result.stderr
    return out


CASES = [  # codec, predictor, alpha, ranks
    ("ZSTD", "2", True, 2), ("ZSTD", "1", False, 3), ("DEFLATE", "2", True, 4), ("DEFLATE", "1", True, 2),
    ("LZW", "2", False, 2), ("LZW", "1", True, 3), ("NONE", None, True, 4), ("NONE", None, False, 3),
]


@pytest.mark.parametrize("codec,predictor,alpha,ranks", CASES)
def test_worker_encoded_tiles_read_back_as_gdal_writes_them(scene, uncompressed, tmp_path, codec, predictor, alpha,
                                                             ranks):
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

    plain = read_array(uncompressed)
    got = read_array(out)
    if alpha:
        assert np.array_equal(got, plain)
    else:
        assert np.array_equal(got, np.where(plain[3] > 0, np.maximum(plain[:3], 1), 0))  # 0 kept for nodata
    ds, ref = gdal.Open(str(out)), gdal.Open(str(uncompressed))
    assert ds.GetMetadataItem("COMPRESSION", "IMAGE_STRUCTURE") == (None if codec == "NONE" else codec)
    assert ds.GetMetadataItem("PREDICTOR", "IMAGE_STRUCTURE") == (predictor if predictor != "1" else None)
    assert ds.GetGeoTransform() == ref.GetGeoTransform() and ds.GetSpatialRef().IsSame(ref.GetSpatialRef())
    bands = 4 if alpha else 3
    assert [ds.GetRasterBand(i + 1).GetColorInterpretation() for i in range(bands)] == \
        [gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand, gdal.GCI_AlphaBand][:bands]
    assert ds.GetRasterBand(1).GetNoDataValue() == (None if alpha else 0)
    assert ds.GetRasterBand(1).GetBlockSize() == [512, 512]
    ours = {k: v for k, v in ds.GetMetadata().items() if k.startswith("MPI_S2")}
    assert ours == {k: v for k, v in ref.GetMetadata().items() if k.startswith("MPI_S2")} and ours
    assert ds.GetMetadataItem("TIFFTAG_SOFTWARE").startswith("mpi_s2")


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
