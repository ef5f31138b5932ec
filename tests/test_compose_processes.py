"""End-to-end runs of ``mpi-s2 compose`` as a user launches it: ``mpirun -n N python -m mpi_s2 compose``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from osgeo import gdal

from conftest import (
    assert_exit,
    compose_args,
    error_lines,
    gdal_translate_reference,
    read_array,
    read_bands,
    run_mpi_s2,
    run_mpi_s2_to_death,
    write_band,
)


def assert_same_georeferencing(path_a, path_b):
    a, b = gdal.Open(str(path_a)), gdal.Open(str(path_b))
    assert a.GetGeoTransform() == b.GetGeoTransform()
    assert a.GetSpatialRef().IsSame(b.GetSpatialRef())
    assert (a.RasterXSize, a.RasterYSize) == (b.RasterXSize, b.RasterYSize)


@pytest.fixture(scope="module")
def baseline(scene, tmp_path_factory):
    """Output of a one-rank run, default window: what every other layout must reproduce exactly."""
    out = tmp_path_factory.mktemp("baseline") / "rgb.tif"
    result = run_mpi_s2(compose_args(scene, out), ranks=1)
    assert result.returncode == 0, result.stderr
    return out


def test_matches_gdal_translate_on_valid_pixels(scene, reference, valid, tmp_path):
    out = tmp_path / "rgb.tif"
    result = run_mpi_s2(compose_args(scene, out, "--report", str(tmp_path / "run.json")), ranks=3)
    assert result.returncode == 0, result.stderr
    rgba = read_array(out)
    assert rgba.shape == (4, 1100, 1300)
    assert (rgba[:3][:, valid] == reference[:, valid]).all()
    assert (rgba[:3][:, ~valid] == 0).all()
    assert (rgba[3] == np.where(valid, 255, 0)).all()
    assert_same_georeferencing(out, scene["red"])
    ds = gdal.Open(str(out))
    assert ds.GetRasterBand(4).GetColorInterpretation() == gdal.GCI_AlphaBand
    assert ds.GetRasterBand(1).GetBlockSize() == [512, 512]


def test_scene_has_the_cases_it_claims(scene, valid):
    red, green, blue = read_bands(scene)
    assert (~valid).any() and valid.mean() > 0.8
    assert ((blue == 0) & (red != 0) & (green != 0)).any()  # nodata in one band only
    assert (red == 65535).any() and (red > 10000).any()  # saturated pixels and clouds past the clip


@pytest.mark.parametrize("ranks,window", [(2, None), (3, None), (4, None), (1, 256), (3, 256), (2, 512),
                                          (4, 300)])
def test_identical_output_for_any_rank_count_and_window(scene, baseline, tmp_path, ranks, window):
    out = tmp_path / "rgb.tif"
    extra = ["--window", str(window)] if window else []
    result = run_mpi_s2(compose_args(scene, out, *extra), ranks=ranks)
    assert result.returncode == 0, result.stderr
    assert np.array_equal(read_array(out), read_array(baseline))
    assert_same_georeferencing(out, baseline)


def test_no_alpha_reserves_zero_for_nodata(scene, reference, valid, tmp_path):
    out = tmp_path / "rgb3.tif"
    result = run_mpi_s2(compose_args(scene, out, "--no-alpha"), ranks=2)
    assert result.returncode == 0, result.stderr
    rgb = read_array(out)
    assert rgb.shape == (3, 1100, 1300)
    assert (rgb[:, valid] == np.maximum(reference[:, valid], 1)).all()
    assert (rgb[:, ~valid] == 0).all()
    assert gdal.Open(str(out)).GetRasterBand(1).GetNoDataValue() == 0


def test_offset_and_stretch_options_match_gdal_translate(scene, valid, tmp_path):
    stretch = dict(offset=-1000.0, scale=10000.0, max_reflectance=0.3, gamma=1.7)
    reference = gdal_translate_reference(scene, tmp_path / "ref.tif", **stretch)
    out = tmp_path / "rgb.tif"
    result = run_mpi_s2(compose_args(scene, out, "--offset", "-1000", "--max-reflectance", "0.3",
                                     "--gamma", "1.7"), ranks=3)
    assert result.returncode == 0, result.stderr
    rgba = read_array(out)
    assert (rgba[:3][:, valid] == reference[:, valid]).all()
    assert (rgba[3] == np.where(valid, 255, 0)).all()  # dark valid pixels (DN <= 1000 -> 0) stay opaque


def test_report_accounts_for_every_window(scene, tmp_path):
    report_path = tmp_path / "run.json"
    result = run_mpi_s2(compose_args(scene, tmp_path / "rgb.tif", "--report", str(report_path)), ranks=3)
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert report["mpi_ranks"] == 3 and report["windows"] == 4 and report["size"] == [1300, 1100]
    ranks = {r["rank"]: r for r in report["ranks"]}
    assert ranks[0]["role"] == "planner+writer" and ranks[0]["windows"] == 0
    assert ranks[1]["windows"] + ranks[2]["windows"] == 4
    assert ranks[1]["pixels"] + ranks[2]["pixels"] == 1300 * 1100
    assert ranks[0]["seconds"]["write"] > 0 and ranks[1]["seconds"]["read"] > 0
    assert set(ranks[1]["seconds"]) == {"read", "compute", "encode", "wait", "write"}
    assert report["tiles_encoded_by"] == "workers" and report["output_stage"]["n_star"] > 0
    assert all(r["peak_rss_mb"] > 0 for r in ranks.values())
    assert report["pixels_per_s"] > 0 and report["wall_s"] > 0


def test_creation_options_are_applied(scene, tmp_path):
    out = tmp_path / "rgb.tif"
    result = run_mpi_s2(compose_args(scene, out, "--co", "COMPRESS=DEFLATE", "--co", "BLOCKXSIZE=256",
                                     "--co", "BLOCKYSIZE=256"), ranks=2)
    assert result.returncode == 0, result.stderr
    ds = gdal.Open(str(out))
    assert ds.GetMetadataItem("COMPRESSION", "IMAGE_STRUCTURE") == "DEFLATE"
    assert ds.GetRasterBand(1).GetBlockSize() == [256, 256]


def corrupt_tile(path: str, xblock: int, yblock: int) -> None:
    """Overwrite the compressed bytes of one tile so that decoding it fails."""
    ds = gdal.Open(path)
    band = ds.GetRasterBand(1)
    offset = int(band.GetMetadataItem(f"BLOCK_OFFSET_{xblock}_{yblock}", "TIFF"))
    size = int(band.GetMetadataItem(f"BLOCK_SIZE_{xblock}_{yblock}", "TIFF"))
    ds = None
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff\x00" * (size // 2))


def test_failing_rank_ends_the_job_quickly_and_keeps_the_old_output(tmp_path):
    rng = np.random.default_rng(7)
    bands = {name: write_band(tmp_path / f"{name}.tif", rng.integers(1, 9000, (512, 1024), dtype=np.uint16))
             for name in ("red", "green", "blue")}
    # 8 windows of 256 in row-major order, static schedule: window 3 (column 768) goes to worker rank 1
    corrupt_tile(bands["green"], 3, 0)
    out = tmp_path / "rgb.tif"
    out.write_bytes(b"previous result")
    result = run_mpi_s2_to_death(compose_args(bands, out, "--window", "256", "--overwrite", "--schedule", "static"),
                                 3, timeout=120)
    assert_exit(result, 2)  # the worker's InputError: MPI_Abort(2), which mpirun returns
    # docs/failures-and-resume.md: the job ends within 15 s of the fault (the failing rank's end)
    assert result.fault_to_end_s is not None and result.fault_to_end_s < 15, result.fault_to_end_s
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert "(rank 1)" in lines[0] and bands["green"] in lines[0] and "column 768, row 0" in lines[0]
    assert out.read_bytes() == b"previous result"  # replaced only by a complete file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blue.tif", "green.tif", "red.tif", "rgb.tif"]
