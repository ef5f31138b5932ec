"""Determinism: the same pixels and georeferencing for 1, 2, 3, 4 and 8 ranks (8 oversubscribed on 2 cores), both
schedules, both backends, windows of 256 and 512, with and without --cog.

Each rank count runs four combinations that together cover every schedule x backend pair and every window and COG
choice (a covering design: the full product would be 80 runs); each result is compared with one reference run.
"""

from __future__ import annotations

import pytest
from osgeo import gdal

from conftest import compose_args, read_array, run_mpi_s2

TILES = ["--co", "BLOCKXSIZE=256", "--co", "BLOCKYSIZE=256"]  # windows of 256 and 512 are whole tiles: COG works
COMBINATIONS = [("dynamic", "writer", 256, False), ("static", "writer", 512, True),
                ("dynamic", "hdf5", 512, True), ("static", "hdf5", 256, False)]


@pytest.fixture(scope="module")
def reference(scene, tmp_path_factory):
    """One rank, the writer backend, windows of 512, a COG: full resolution and every overview level."""
    out = tmp_path_factory.mktemp("determinism") / "ref.tif"
    result = run_mpi_s2(compose_args(scene, out, *TILES, "--window", "512", "--cog"), ranks=None)
    assert result.returncode == 0, result.stderr
    ds = gdal.Open(str(out))
    overviews = [ds.GetRasterBand(1).GetOverview(k) for k in range(ds.GetRasterBand(1).GetOverviewCount())]
    assert len(overviews) >= 2
    levels = [[ds.GetRasterBand(b).GetOverview(k).ReadAsArray() for b in range(1, 5)] for k in range(len(overviews))]
    return {"pixels": read_array(out), "geotransform": ds.GetGeoTransform(), "srs": ds.GetSpatialRef(),
            "levels": levels}


@pytest.mark.parametrize("ranks", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("schedule, backend, window, cog", COMBINATIONS,
                         ids=[f"{s}-{b}-{w}{'-cog' if c else ''}" for s, b, w, c in COMBINATIONS])
def test_same_result_for_any_rank_count_schedule_backend_window_and_cog(scene, reference, tmp_path, ranks,
                                                                          schedule, backend, window, cog):
    out = tmp_path / "rgb.tif"
    args = compose_args(scene, out, *TILES, "--window", str(window), "--schedule", schedule, "--backend", backend,
                        *(["--cog"] if cog else []))
    result = run_mpi_s2(args, ranks=None if ranks == 1 else ranks, timeout=240)
    assert result.returncode == 0, result.stderr
    assert (read_array(out) == reference["pixels"]).all()
    ds = gdal.Open(str(out))
    assert ds.GetGeoTransform() == reference["geotransform"] and ds.GetSpatialRef().IsSame(reference["srs"])
    band = ds.GetRasterBand(1)
    if cog:
        assert band.GetOverviewCount() == len(reference["levels"])
        for k, level in enumerate(reference["levels"]):
            for b in range(4):
                assert (ds.GetRasterBand(b + 1).GetOverview(k).ReadAsArray() == level[b]).all(), (k, b)
    else:
        assert band.GetOverviewCount() == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rgb.tif"]
