"""Option parsing, configuration building, output profiles and the launch check (no MPI needed)."""

import pytest

from mpi_s2.cli import build_parser, compose_config
from mpi_s2.errors import InputError, LaunchError
from mpi_s2.mpi_runtime import check_launch
from mpi_s2.profiles import creation_options, parse_creation_option
from mpi_s2.radiometry import Stretch

BANDS = ["--red", "r.tif", "--green", "g.tif", "--blue", "b.tif", "-o", "out.tif"]


def parse(*extra):
    return compose_config(build_parser().parse_args(["compose", *BANDS, *extra]))


def test_defaults():
    config = parse()
    assert config.inputs == ("r.tif", "g.tif", "b.tif")
    assert config.stretch == Stretch(offset=0.0, scale=10000.0, max_reflectance=1.0, gamma=2.2)
    assert config.alpha and config.band_count == 4
    assert config.window is None and not config.overwrite and config.report is None


def test_all_options():
    config = parse("--max-reflectance", "0.3", "--gamma", "1.8", "--offset", "-1000", "--scale", "10000",
                   "--no-alpha", "--window", "512", "--co", "compress=deflate", "--co", "ZLEVEL=6",
                   "--overwrite", "--report", "run.json", "-q")
    assert config.stretch == Stretch(offset=-1000.0, scale=10000.0, max_reflectance=0.3, gamma=1.8)
    assert not config.alpha and config.band_count == 3
    assert config.window == 512 and config.overwrite and config.report == "run.json"
    assert dict(config.creation_options) == {"COMPRESS": "deflate", "ZLEVEL": "6"}
    assert not config.progress


@pytest.mark.parametrize("extra", [["--window", "0"], ["--window", "x"], ["--gamma", "abc"]])
def test_bad_values_exit_2(extra, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["compose", *BANDS, *extra])
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_missing_band_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["compose", "--red", "r.tif", "-o", "o.tif"])
    assert exc.value.code == 2
    assert "--green" in capsys.readouterr().err


def test_invalid_gamma_is_input_error():
    with pytest.raises(InputError, match="--gamma"):
        parse("--gamma", "0")


def test_help_shows_worked_example(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["compose", "--help"])
    text = capsys.readouterr().out
    assert "mpirun -n 4" in text and "example" in text


@pytest.mark.parametrize("text", ["COMPRESS", "=x", ""])
def test_creation_option_needs_key_value(text):
    with pytest.raises(InputError, match="KEY=VALUE"):
        parse_creation_option(text)


def test_profile_defaults_and_overrides():
    options = creation_options()
    assert options["TILED"] == "YES" and options["COMPRESS"] == "ZSTD" and options["PREDICTOR"] == "2"
    assert options["BIGTIFF"] == "IF_SAFER" and options["ALPHA"] == "YES" and options["PHOTOMETRIC"] == "RGB"
    raw = creation_options(overrides={"compress": "NONE"}, alpha=False)
    assert raw["COMPRESS"] == "NONE" and "PREDICTOR" not in raw and "ALPHA" not in raw
    with pytest.raises(InputError, match="known profiles"):
        creation_options("jpeg2000")


def test_launch_check_detects_srun_singletons():
    with pytest.raises(LaunchError, match="srun --mpi=pmix"):
        check_launch(1, {"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "4"})
    check_launch(4, {"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "4"})  # PMIx launch: fine
    check_launch(2, {"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1", "OMPI_COMM_WORLD_SIZE": "2"})  # mpirun
    check_launch(1, {})  # plain process
