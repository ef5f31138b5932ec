"""Likely mistakes are warned about, one line each, once, by rank 0; the run goes on (exit 0).

A band file whose name says another band than its option's, ``--max-reflectance`` above 1.5, an output name that
is not a GeoTIFF's, more workers than windows. A correct run has no warning at all.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from osgeo import gdal

from mpi_s2.config import BandFiles, ComposeConfig
from mpi_s2.planning.mistakes import band_named, likely_mistakes

from conftest import compose_args, run_mpi_s2, write_band

#: A warning line as the README shows it: ``mpi_s2: <ISO-8601 UTC time> warning: ...``.
WARNING = re.compile(r"^mpi_s2: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ warning: (.*)$")


def warnings_in(stderr: str) -> list[str]:
    """Every warning line's text; a line that mentions a warning in another shape fails the test."""
    found = []
    for line in stderr.splitlines():
        match = WARNING.match(line)
        if match:
            found.append(match[1])
        else:
            assert "warning" not in line.lower(), line
    return found


@pytest.fixture
def small(tmp_path):
    """A 400 x 300 scene named as Sentinel-2 names its bands (one window)."""
    rng = np.random.default_rng(4)
    return {name: write_band(tmp_path / f"{band}.tif", rng.integers(1, 9000, (300, 400), dtype=np.uint16))
            for name, band in (("red", "B04"), ("green", "B03"), ("blue", "B02"))}


@pytest.mark.parametrize("name, band", [
    ("B02.tif", "B02"), ("b04.TIF", "B04"), ("T32TMS_20240101T103021_B03_10m.jp2", "B03"), ("B02_10m.tif", "B02"),
    ("clip-b04-2024.tif", "B04"), ("red.tif", None), ("B020.tif", None), ("SB02.tif", None), ("B8A.tif", None),
    ("B02_B03.tif", None), ("B01.tif", None), ("S2B_MSIL2A.tif", None),
])
def test_band_id_in_a_file_name(name, band):
    assert band_named(f"/data/B04/{name}") == band  # the file's name only, not its folders'


def test_thresholds_and_extensions():
    """The limits as documented: 1.5 is still a reflectance; .tif/.tiff/.gtiff in any case are GeoTIFF names."""
    files = BandFiles("B04.tif", "B03.tif", "B02.tif")
    for output in ("o.tif", "o.TIFF", "o.gtiff", "dir.png/o.Tif"):
        assert likely_mistakes(ComposeConfig(output, band_sets=(files,), max_reflectance=1.5), 4, 4) == []
    assert len(likely_mistakes(ComposeConfig("o.tif", band_sets=(files,), max_reflectance=1.51), 4, 4)) == 1
    assert len(likely_mistakes(ComposeConfig("o", band_sets=(files,)), 4, 5)) == 2  # no extension; idle rank


def test_swapped_band_files_one_warning_each(small, tmp_path):
    swapped = {"red": small["blue"], "green": small["green"], "blue": small["red"]}
    out = tmp_path / "out.tif"
    result = run_mpi_s2(compose_args(swapped, out), timeout=90)
    assert result.returncode == 0, result.stderr
    lines = warnings_in(result.stderr)
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith(f"--red {small['blue']}: the file name says B02 (blue), but --red takes B04"), lines
    assert lines[1].startswith(f"--blue {small['red']}: the file name says B04 (red), but --blue takes B02"), lines
    assert out.exists()


def test_max_reflectance_as_a_dn_one_warning(small, tmp_path):
    out = tmp_path / "out.tif"
    result = run_mpi_s2(compose_args(small, out, "--max-reflectance", "3000"), timeout=90)
    assert result.returncode == 0, result.stderr
    lines = warnings_in(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("--max-reflectance 3000: a reflectance, not a DN?"), lines
    assert "--max-reflectance 0.3" in lines[0]
    # what it warns about: DNs up to 9000 over 3000 * 10000 are all but black
    assert gdal.Open(str(out)).ReadAsArray()[:3].max() <= 12


def test_output_not_named_as_a_geotiff_one_warning(small, tmp_path):
    out = tmp_path / "out.png"
    result = run_mpi_s2(compose_args(small, out), timeout=90)
    assert result.returncode == 0, result.stderr
    lines = warnings_in(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"-o {out}: has the extension .png, but a GeoTIFF is written"), \
        lines
    assert gdal.Open(str(out)).GetDriver().ShortName == "GTiff"  # what the warning says


def test_more_workers_than_windows_one_warning_from_rank_0(small, tmp_path):
    """mpirun -n 3: two workers, one window (400 x 300): one line, not one per rank."""
    result = run_mpi_s2(compose_args(small, tmp_path / "out.tif"), ranks=3, timeout=90)
    assert result.returncode == 0, result.stderr
    lines = warnings_in(result.stderr)
    assert lines == ["1 window for 2 workers: ranks beyond 1 will be idle (1 rank with no window to compose); "
                     "use at most 2 ranks, or a smaller --window"], result.stderr


def test_a_correct_run_has_no_warning(scene, tmp_path):
    """Sentinel-2 band names on the right options, 4 windows for 2 workers, a .tif: no warning line at all."""
    assert [os.path.basename(scene[b]) for b in ("red", "green", "blue")] == ["B04.tif", "B03.tif", "B02.tif"]
    result = run_mpi_s2(compose_args(scene, tmp_path / "out.tif", "--max-reflectance", "0.3"), ranks=3,
                        timeout=120)
    assert result.returncode == 0, result.stderr
    assert warnings_in(result.stderr) == [], result.stderr
    assert "warning" not in result.stderr.lower()
