"""Every path a run writes is checked before any input is opened: one line, exit 2, nothing written, no debris.

The report, the progress file, the quicklook, the HDF5 backend's file (``--keep-h5``), the staging directory
(``--staging-dir`` and the default one beside the output), two options naming one file, a side file naming an
input; for ``compose`` (without a launcher and under ``mpirun -n 3``) and ``mpi-s2 convert``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from conftest import compose_args, error_lines, run_mpi_s2, write_band

SHAPE = (300, 400)


@pytest.fixture
def bands(tmp_path):
    rng = np.random.default_rng(2)
    return {name: write_band(tmp_path / f"{name}.tif", rng.integers(1, 9000, SHAPE, dtype=np.uint16))
            for name in ("red", "green", "blue")}


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every entry under ``root``, hidden ones included: relative path -> (size, mtime in ns); -1 for folders."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(root))] = (-1 if path.is_dir() else st.st_size, st.st_mtime_ns)
    return out


def make_case(case: str, bands: dict[str, str], tmp_path: Path) -> tuple[list[str], str, str]:
    """Set up one bad path: (extra compose options, text the error line must contain, path it must name)."""
    out = str(tmp_path / "out.tif")
    missing = tmp_path / "missing-dir"
    if case == "report in a missing directory":
        return ["--report", str(missing / "r.json")], "--report: directory", str(missing / "r.json")
    if case == "report is a directory":
        (tmp_path / "r.json").mkdir()
        return ["--report", str(tmp_path / "r.json")], "--report: is a directory", str(tmp_path / "r.json")
    if case == "report is an input":
        return ["--report", bands["green"]], "--report would overwrite the input", bands["green"]
    if case == "report is the output":
        return ["--report", out], "given as both -o and --report", out
    if case == "progress file in a missing directory":
        path = str(missing / "p.jsonl")
        return ["--progress-file", path], "--progress-file: directory", path
    if case == "progress file is the report":
        path = str(tmp_path / "r.json")
        return ["--report", path, "--progress-file", path], "given as both --report and --progress-file", path
    if case == "quicklook in a missing directory":
        path = str(missing / "q.png")
        return ["--quicklook", path], "does not exist", path
    if case == "quicklook exists":
        (tmp_path / "q.png").write_bytes(b"an older preview")
        return ["--quicklook", str(tmp_path / "q.png")], "already exists", str(tmp_path / "q.png")
    if case == "kept HDF5 file exists":
        (tmp_path / "out.h5").write_bytes(b"an earlier run's array")
        return ["--backend", "hdf5", "--keep-h5"], "already exists, and --keep-h5", str(tmp_path / "out.h5")
    if case == "HDF5 file is a directory":
        (tmp_path / "out.h5").mkdir()
        return ["--backend", "hdf5"], "is a directory", str(tmp_path / "out.h5")
    if case == "output is the HDF5 file":
        return ["--backend", "hdf5", "-o", str(tmp_path / "out.h5")], "given as both -o and the HDF5 file", \
            str(tmp_path / "out.h5")
    if case == "staging dir missing":
        return ["--staging-dir", str(missing)], "--staging-dir is not a writable directory", str(missing)
    if case == "staging dir is a file":
        (tmp_path / "scratch").write_text("a file")
        return ["--staging-dir", str(tmp_path / "scratch")], "--staging-dir is not a writable directory", \
            str(tmp_path / "scratch")
    if case == "default staging dir is a file":
        (tmp_path / ".out.tif.staging").write_text("a file")
        return [], "the staging directory of", str(tmp_path / ".out.tif.staging")
    raise AssertionError(case)


CASES = ["report in a missing directory", "report is a directory", "report is an input", "report is the output",
         "progress file in a missing directory", "progress file is the report", "quicklook in a missing directory",
         "quicklook exists", "kept HDF5 file exists", "HDF5 file is a directory", "output is the HDF5 file",
         "staging dir missing", "staging dir is a file", "default staging dir is a file"]


def assert_one_line_nothing_written(result, message: str, named: str, before: dict, root: Path) -> None:
    assert result.returncode == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert message in lines[0] and named in lines[0], lines[0]
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    assert listing(root) == before  # nothing written, nothing removed, no debris (hidden files included)


@pytest.mark.parametrize("ranks", [None, 3], ids=["no-launcher", "mpirun-3"])
@pytest.mark.parametrize("case", CASES)
def test_bad_output_path_one_line_exit_2_nothing_written(case, ranks, bands, tmp_path):
    extra, message, named = make_case(case, bands, tmp_path)
    before = listing(tmp_path)
    result = run_mpi_s2(compose_args(bands, tmp_path / "out.tif", *extra), ranks=ranks, timeout=90)
    assert_one_line_nothing_written(result, message, named, before, tmp_path)


def test_paths_are_checked_before_any_input_is_opened(bands, tmp_path):
    """A missing input and a report into a missing directory: the report is named (checked first)."""
    bands["red"] = str(tmp_path / "nope.tif")
    report = str(tmp_path / "missing-dir" / "r.json")
    before = listing(tmp_path)
    result = run_mpi_s2(compose_args(bands, tmp_path / "out.tif", "--report", report), ranks=3, timeout=90)
    assert_one_line_nothing_written(result, "--report: directory", report, before, tmp_path)


def test_kept_hdf5_file_of_an_earlier_run_needs_overwrite(bands, tmp_path):
    """An earlier run's --keep-h5 file (its GeoTIFF moved away): refused without --overwrite, replaced with it."""
    out, h5 = tmp_path / "out.tif", tmp_path / "out.h5"
    args = compose_args(bands, out, "--backend", "hdf5", "--keep-h5")
    assert run_mpi_s2(args, ranks=3, timeout=90).returncode == 0
    out.unlink()
    before = listing(tmp_path)
    result = run_mpi_s2(args, ranks=3, timeout=90)
    assert_one_line_nothing_written(result, "already exists, and --keep-h5", str(h5), before, tmp_path)
    result = run_mpi_s2([*args, "--overwrite"], ranks=3, timeout=90)
    assert result.returncode == 0, result.stderr
    assert out.exists() and h5.stat().st_mtime_ns != before["out.h5"][1]  # written again


@pytest.fixture(scope="module")
def h5(tmp_path_factory) -> Path:
    """A complete HDF5 file of a small compose (``--backend hdf5 --keep-h5``)."""
    root = tmp_path_factory.mktemp("h5")
    rng = np.random.default_rng(3)
    scene = {name: write_band(root / f"{name}.tif", rng.integers(1, 9000, SHAPE, dtype=np.uint16))
             for name in ("red", "green", "blue")}
    result = run_mpi_s2(compose_args(scene, root / "run.tif", "--backend", "hdf5", "--keep-h5"), ranks=2,
                        timeout=90)
    assert result.returncode == 0, result.stderr
    return root / "run.h5"


CONVERT_CASES = ["output in a missing directory", "report in a missing directory",
                 "progress file in a missing directory", "report is the HDF5 file", "report is the output",
                 "progress file is a directory"]


@pytest.mark.parametrize("case", CONVERT_CASES)
def test_convert_bad_output_path_one_line_exit_2_nothing_written(case, h5, tmp_path):
    out, missing = str(tmp_path / "out.tif"), str(tmp_path / "missing-dir" / "x")
    extra, message, named = {
        "output in a missing directory": (["-o", missing], "does not exist", missing),
        "report in a missing directory": (["--report", missing], "--report: directory", missing),
        "progress file in a missing directory": (["--progress-file", missing], "--progress-file: directory",
                                                 missing),
        "report is the HDF5 file": (["--report", str(h5)], "--report would overwrite the input", str(h5)),
        "report is the output": (["--report", out], "given as both -o and --report", out),
        "progress file is a directory": (["--progress-file", str(tmp_path)], "--progress-file: is a directory",
                                         str(tmp_path)),
    }[case]
    args = ["convert", str(h5), "-o", out, "-q", *extra]
    before, before_h5 = listing(tmp_path), listing(h5.parent)
    result = run_mpi_s2(args, ranks=2, timeout=90)
    assert_one_line_nothing_written(result, message, named, before, tmp_path)
    assert listing(h5.parent) == before_h5
    assert os.path.getsize(h5) > 0
