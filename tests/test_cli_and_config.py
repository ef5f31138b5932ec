"""Option parsing, configuration building, output profiles, the launch check, and the test suite's own nets: one
rule for skips and the in-process MPI session's world size (pytest run in a subprocess)."""

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from mpi_s2.cli import build_parser, compose_config, main
from mpi_s2.config import BandFiles
from mpi_s2.errors import InputError, LaunchError, UsageError
from mpi_s2.inputs.cloudmask import parse_mask_classes
from mpi_s2.output.profiles import creation_options, parse_creation_option
from mpi_s2.parallel.runtime import check_launch

from conftest import MPIRUN, PYTHON, clean_env, error_lines

BANDS = ["--red", "r.tif", "--green", "g.tif", "--blue", "b.tif", "-o", "out.tif"]


def parse(*extra):
    return compose_config(build_parser().parse_args(["compose", *BANDS, *extra]))


def test_defaults():
    config = parse()
    assert config.band_sets == (BandFiles("r.tif", "g.tif", "b.tif"),) and config.products == ()
    assert config.offset is None and config.scale is None  # from product metadata; 0 / 10000 for band files
    assert (config.max_reflectance, config.gamma, config.resolution) == (1.0, 2.2, 10)
    assert not config.cloud_mask and config.mask_classes == (3, 8, 9, 10) and config.resampling == "near"
    assert config.alpha and config.band_count == 4
    assert config.window is None and not config.overwrite and config.report is None


def test_all_options():
    config = parse("--max-reflectance", "0.3", "--gamma", "1.8", "--offset", "-1000", "--scale", "10000",
                   "--no-alpha", "--window", "512", "--co", "compress=deflate", "--co", "ZLEVEL=6",
                   "--overwrite", "--report", "run.json", "-q")
    assert (config.offset, config.scale, config.max_reflectance, config.gamma) == (-1000.0, 10000.0, 0.3, 1.8)
    assert not config.alpha and config.band_count == 3
    assert config.window == 512 and config.overwrite and config.report == "run.json"
    assert dict(config.creation_options) == {"COMPRESS": "deflate", "ZLEVEL": "6"}
    assert not config.progress


@pytest.mark.parametrize("extra", [["--window", "0"], ["--window", "x"], ["--gamma", "abc"]])
def test_bad_values_exit_2(extra, capsys):
    with pytest.raises(UsageError) as exc:
        build_parser().parse_args(["compose", *BANDS, *extra])
    assert exc.value.exit_code == 2
    assert str(exc.value).startswith(f"compose: argument {extra[0]}: ") and not capsys.readouterr().err


def test_products_mosaic_and_mask_options():
    args = build_parser().parse_args(["compose", "a.SAFE", "b.zip", "-o", "o.tif", "--cloud-mask",
                                      "--mask-classes", "9,8", "--resolution", "20", "--crs", "EPSG:32632",
                                      "--red", "r.tif", "--green", "g.tif", "--blue", "b.tif", "--scl", "s.tif",
                                      "--red", "r2.tif", "--green", "g2.tif", "--blue", "b2.tif", "--scl", "s2.tif"])
    config = compose_config(args)
    assert config.products == ("a.SAFE", "b.zip") and config.resolution == 20 and config.crs == "EPSG:32632"
    assert config.band_sets[1] == BandFiles("r2.tif", "g2.tif", "b2.tif", "s2.tif")
    assert config.cloud_mask and config.mask_classes == (8, 9)


def test_scl_implies_cloud_mask():
    assert parse("--scl", "s.tif").cloud_mask


@pytest.mark.parametrize("argv,message", [
    (["--red", "r.tif", "--green", "g.tif", "--blue", "b.tif", "--red", "x.tif"], "same number of times"),
    (BANDS + ["--scl", "a.tif", "--scl", "b.tif"], "once per band set"),
    (["-o", "out.tif"], "no input"),
    (BANDS + ["--mask-classes", "3,12"], "SCL classes are 0..11"),
    (BANDS + ["--mask-classes", "clouds"], "comma-separated"),
])
def test_inconsistent_inputs_are_input_errors(argv, message):
    argv = argv if "-o" in argv else argv + ["-o", "out.tif"]
    with pytest.raises(InputError, match=message):
        compose_config(build_parser().parse_args(["compose", *argv]))


def test_mask_classes_sorted_unique():
    assert parse_mask_classes("10, 3,3,9") == (3, 9, 10)


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


def test_launch_check_detects_mpirun_singletons():
    """mpirun of one MPI starting a Python whose mpi4py uses another: every process is a world of one."""
    with pytest.raises(LaunchError) as caught:
        check_launch(1, {"OMPI_COMM_WORLD_SIZE": "3", "OMPI_COMM_WORLD_RANK": "0"})
    message = str(caught.value)
    assert caught.value.exit_code == 2 and "\n" not in message
    assert message.startswith("mpirun started 3 processes but MPI sees a world of 1 rank(s)")
    assert "the mpirun of the MPI mpi4py was built with" in message
    with pytest.raises(LaunchError, match="mpirun started 2 processes but MPI sees a world of 4 rank"):
        check_launch(4, {"OMPI_COMM_WORLD_SIZE": "2"})
    with pytest.raises(LaunchError, match="mpirun started 4 processes"):  # mpirun inside a Slurm job
        check_launch(1, {"OMPI_COMM_WORLD_SIZE": "4", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"})
    check_launch(3, {"OMPI_COMM_WORLD_SIZE": "3"})
    check_launch(1, {"OMPI_COMM_WORLD_SIZE": "1"})


def test_a_process_that_mpirun_counted_but_mpi_did_not_stops_with_one_line(tmp_path):
    """The real check in ``run_job``: a process told by (fake) mpirun variables that it is one of 2 initialises MPI
    alone (a singleton): exit 2, one line from rank 0, before any input is opened (the inputs do not exist)."""
    out = tmp_path / "out.tif"
    env = {**clean_env(), "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0"}
    result = subprocess.run([PYTHON, "-m", "mpi_s2", "compose", "--red", "r.tif", "--green", "g.tif", "--blue",
                             "b.tif", "-o", str(out), "-q"], capture_output=True, text=True, timeout=120, env=env,
                            cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert error_lines(result.stderr) == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith("mpi_s2: error: mpirun started 2 processes but MPI sees a world of 1 rank(s)")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- the test suite's own nets
TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
NET_VARIABLES = ("MPI_S2_ALLOW_SKIPS", "MPI_S2_TEST_RANKS", "MPI_S2_REAL_DATA", "CI")


def run_pytest(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None,
               launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """``python -m pytest ARGS`` in a subprocess with tests/conftest.py importable, none of the nets' variables
    inherited (``env``: those the test sets)."""
    environ = {k: v for k, v in clean_env().items() if k not in NET_VARIABLES}
    environ["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS)])
    return subprocess.run([*(launcher or []), PYTHON, "-m", "pytest", "-p", "no:cacheprovider", "--color=no", "-ra",
                           *args], cwd=cwd, capture_output=True, text=True, timeout=300, env={**environ, **(env or {})})


def test_missing_real_data_fails_the_test_unless_a_developer_allows_skips(tmp_path):
    """Hole 3 and the skip rule: test_metadata's shared-file check with the data missing fails with one line;
    only MPI_S2_ALLOW_SKIPS=1 (not CI=false, not =true) turns that into a skip saying how to get the data."""
    missing = tmp_path / "no-data"
    test = "tests/test_metadata.py::test_shipped_copies_equal_the_shared_files"
    expected = f"needs the real product metadata {missing}/l2a-metadata/MTD_MSIL2A.xml: put the project's shared/"
    for extra in ({}, {"CI": "false"}, {"MPI_S2_ALLOW_SKIPS": "true"}, {"MPI_S2_ALLOW_SKIPS": "0"}):
        result = run_pytest(test, env={"MPI_S2_REAL_DATA": str(missing), **extra})
        assert result.returncode == 1, (extra, result.stdout)
        assert expected in result.stdout and "1 failed" in result.stdout and "1 skipped" not in result.stdout, (
            extra, result.stdout)
        assert "mpi_s2 tests: 0 skipped" in result.stdout
    allowed = run_pytest(test, env={"MPI_S2_REAL_DATA": str(missing), "MPI_S2_ALLOW_SKIPS": "1"})
    assert allowed.returncode == 0, allowed.stdout
    assert "1 skipped" in allowed.stdout and "set MPI_S2_REAL_DATA=DIR" in allowed.stdout
    assert "mpi_s2 tests: 1 skipped (allowed by MPI_S2_ALLOW_SKIPS=1)" in allowed.stdout
    present = run_pytest(test)  # the default place (shared/ beside the checkout): the test passes
    assert present.returncode == 0 and "1 passed" in present.stdout, present.stdout


def test_any_skip_fails_the_session_and_mpi_tests_outside_with_mpi_are_deselected(tmp_path):
    """A bare pytest.skip, or pytest-mpi skipping an ``mpi(min_size=2)`` test on a world of one, fails the whole
    session with the skips listed; ``mpi`` tests outside ``--with-mpi`` are deselected, which is not a skip."""
    (tmp_path / "test_generated.py").write_text(
        "import pytest\n\n"
        "def test_plain():\n    pass\n\n"
        "def test_bare_skip():\n    pytest.skip('no reason at all')\n\n"
        "@pytest.mark.mpi(min_size=2)\ndef test_needs_two_ranks():\n    pass\n")
    plain = run_pytest("-p", "conftest", "test_generated.py", cwd=tmp_path)
    assert plain.returncode == 1, plain.stdout
    assert "1 passed, 1 skipped, 1 deselected" in plain.stdout, plain.stdout
    assert "mpi_s2 tests: FAILED: 1 skipped; a skip fails this run unless MPI_S2_ALLOW_SKIPS=1" in plain.stdout
    assert "  skipped test_generated.py::test_bare_skip: no reason at all" in plain.stdout
    allowed = run_pytest("-p", "conftest", "test_generated.py", cwd=tmp_path, env={"MPI_S2_ALLOW_SKIPS": "1"})
    assert allowed.returncode == 0 and "mpi_s2 tests: 1 skipped (allowed" in allowed.stdout, allowed.stdout
    only_plain = run_pytest("-p", "conftest", "test_generated.py::test_plain",
                            "test_generated.py::test_needs_two_ranks", cwd=tmp_path)
    assert only_plain.returncode == 0, only_plain.stdout
    assert "1 passed, 1 deselected" in only_plain.stdout and "mpi_s2 tests: 0 skipped" in only_plain.stdout
    world_of_one = run_pytest("-p", "conftest", "--with-mpi", "-m", "mpi", "test_generated.py", cwd=tmp_path)
    assert world_of_one.returncode == 1, world_of_one.stdout
    assert "1 skipped, 2 deselected" in world_of_one.stdout, world_of_one.stdout
    assert ("  skipped test_generated.py::test_needs_two_ranks: Test requires 2 MPI processes, only 1 MPI processes"
            in world_of_one.stdout), world_of_one.stdout


def test_mpi_session_stops_at_once_when_the_world_is_not_the_size_asked_for():
    """``make test-mpi``'s command with a world of 2 where 3 were asked for, and a singleton that mpirun's own
    variables say is one of 2: pytest ends before collecting, exit 4, with one line (on each rank)."""
    command = ("--with-mpi", "-m", "mpi", "-q", "tests")
    wrong = run_pytest(*command, env={"MPI_S2_TEST_RANKS": "3"}, launcher=[*MPIRUN, "-n", "2"])
    assert wrong.returncode == 4, wrong.stdout + wrong.stderr  # pytest's usage error, passed on by mpirun
    line = ("ERROR: mpi_s2 tests: the MPI world has 2 rank(s) but 3 were asked for (MPI_S2_TEST_RANKS=3, "
            "OMPI_COMM_WORLD_SIZE=2): launch with mpirun -n 3, the mpirun of the MPI mpi4py was built with")
    errors = [x for x in (wrong.stdout + wrong.stderr).splitlines() if x.startswith("ERROR")]
    assert errors == [line, line], wrong.stdout + wrong.stderr
    assert " passed" not in wrong.stdout
    singleton = run_pytest(*command, env={"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0"})
    assert singleton.returncode == 4, singleton.stdout + singleton.stderr
    assert singleton.stderr.strip() == ("ERROR: mpi_s2 tests: the MPI world has 1 rank(s) but 2 were asked for "
                                        "(OMPI_COMM_WORLD_SIZE=2): launch with mpirun -n 2, the mpirun of the MPI "
                                        "mpi4py was built with"), singleton.stderr
    right = run_pytest("--co", *command, env={"MPI_S2_TEST_RANKS": "2"}, launcher=[*MPIRUN, "-n", "2"])
    assert right.returncode == 0 and "mpi_s2 tests: 0 skipped" in right.stdout, right.stdout + right.stderr

def test_plural():
    from mpi_s2.text import plural

    assert plural(1, "window") == "1 window" and plural(3, "window") == "3 windows"
    assert plural(0, "rank") == "0 ranks" and plural(1, "rank") == "1 rank"
    assert plural(2, "index", "indices") == "2 indices" and plural(1, "index", "indices") == "1 index"


def usage_error(capsys, argv) -> str:
    """The one stderr line of ``mpi-s2 ARGV``, a usage error (exit code 2)."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpi_s2: error: "), captured.err
    assert lines[0].count("error") == 1 and "mpi-s2:" not in lines[0] and not captured.out
    return lines[0]


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch):
    """Usage errors are printed by launcher rank 0 only: be rank 0 whatever the environment."""
    for key in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)


def test_creation_options_accumulate_into_a_dict():
    parser = build_parser()
    args = parser.parse_args(["compose", *BANDS, "--co", "compress=deflate", "--co", "ZLEVEL=6",
                              "--co", "COMPRESS=ZSTD"])
    assert args.co == {"COMPRESS": "ZSTD", "ZLEVEL": "6"}  # upper-cased keys; a key's last value wins
    assert parser.parse_args(["compose", *BANDS]).co == {}  # the shared default was not changed
    assert parser.parse_args(["convert", "run.h5", "-o", "o.tif", "--co", "blockxsize=256"]).co == {
        "BLOCKXSIZE": "256"}


@pytest.mark.parametrize("command", [["compose", *BANDS], ["convert", "run.h5", "-o", "o.tif"]])
def test_bad_creation_option_is_a_one_line_usage_error(command, capsys):
    line = usage_error(capsys, [*command, "--co", "COMPRESS"])
    name = command[0]
    assert line == (f"mpi_s2: error: {name}: argument --co: 'COMPRESS': expected KEY=VALUE, e.g. "
                    f"--co COMPRESS=DEFLATE (see mpi-s2 {name} --help)")


def test_unrecognized_option_names_the_command_and_the_closest_option(capsys):
    line = usage_error(capsys, ["compose", *BANDS, "--quicklok"])
    assert line == ("mpi_s2: error: compose: unrecognized argument --quicklok (did you mean --quicklook?) "
                    "(see mpi-s2 compose --help)")
    line = usage_error(capsys, ["convert", "run.h5", "-o", "o.tif", "--progres-file=p.jsonl", "--foo"])
    assert line == ("mpi_s2: error: convert: unrecognized arguments --progres-file=p.jsonl (did you mean "
                    "--progress-file?), --foo (see mpi-s2 convert --help)")
    line = usage_error(capsys, ["compose", "a.SAFE", "-o", "o.tif", "b.SAFE"])
    assert "compose: unrecognized argument b.SAFE (give all PRODUCTs together" in line


def test_invalid_choice_suggests_the_closest(capsys):
    line = usage_error(capsys, ["compose", *BANDS, "--resampling", "bilinaer"])
    assert line.startswith("mpi_s2: error: compose: argument --resampling: invalid choice: 'bilinaer'")
    assert "(did you mean bilinear?) (see mpi-s2 compose --help)" in line
    line = usage_error(capsys, ["compos", *BANDS])
    assert line.startswith("mpi_s2: error: argument command: invalid choice: 'compos'")
    assert line.endswith("(did you mean compose?) (see mpi-s2 --help)")
    assert "did you mean" not in usage_error(capsys, ["compose", *BANDS, "--schedule", "xyz"])


@pytest.mark.parametrize("argv", [["synth", "--help"], ["synth", "products", "--help"], ["synth", "-h", "x"]])
def test_synth_help_is_its_own(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: mpi-s2 synth OUTDIR [--product")
    assert "mpi-s2 synth OUTDIR [--product]" in text and "--jp2-block" in text and "examples:" in text
    assert "{compose,convert,synth}" not in text  # not the top-level help


def test_synth_outdir_stays_positional():
    args = build_parser().parse_args(["synth", "demo/scene", "--size", "4096"])  # as make demo runs it
    assert (args.outdir, args.size, args.product) == ("demo/scene", 4096, False)
    args = build_parser().parse_args(["synth", "--product", "--zip", "products"])
    assert args.outdir == "products" and args.product and args.zip


SHARED = {"output": "o.tif", "co": {}, "cog": False, "overwrite": False, "report": None, "schedule": "dynamic",
          "progress_file": None}


def test_shared_output_options_on_compose_and_convert():
    parser = build_parser()
    compose = vars(parser.parse_args(["compose", "-o", "o.tif"]))
    convert = vars(parser.parse_args(["convert", "run.h5", "-o", "o.tif"]))
    assert {k: compose[k] for k in SHARED} == {k: convert[k] for k in SHARED} == SHARED
    given = ["-o", "x.tif", "--co", "A=1", "--cog", "--overwrite", "--report", "r.json", "--schedule", "static",
             "--progress-file", "p.jsonl"]
    compose = vars(parser.parse_args(["compose", *given]))
    convert = vars(parser.parse_args(["convert", "run.h5", *given]))
    assert {k: compose[k] for k in SHARED} == {k: convert[k] for k in SHARED} == {
        "output": "x.tif", "co": {"A": "1"}, "cog": True, "overwrite": True, "report": "r.json",
        "schedule": "static", "progress_file": "p.jsonl"}
    # declared once: both subcommands hold the very same argparse actions
    actions = {name: {a.dest: a for a in parser.commands[name]._actions} for name in ("compose", "convert")}
    assert all(actions["compose"][dest] is actions["convert"][dest] for dest in SHARED)


def test_progress_file_reaches_the_config():
    assert parse().progress_file is None
    assert parse("--progress-file", "run.progress.jsonl").progress_file == "run.progress.jsonl"


def test_staging_dir_help_states_the_real_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["compose", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Default: /dev/shm when all ranks run on one node" in text and ".OUTPUT.staging" in text


def test_a_usage_error_is_printed_even_when_rank_0_starts_last(tmp_path):
    """mpirun ends the job at the first non-zero exit: ranks that parse first must not exit before rank 0 has
    printed (the one line was lost under load, CI of stop 22). Rank 0 is held back 2 s here to make that certain."""
    late_rank_0 = f'[ "$OMPI_COMM_WORLD_RANK" = 0 ] && sleep 2; exec {PYTHON} -m mpi_s2 "$@"'
    result = subprocess.run([*MPIRUN, "-n", "3", "sh", "-c", late_rank_0, "sh", "compose", *BANDS, "--window", "0"],
                            capture_output=True, text=True, timeout=120, env=clean_env(), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("mpi_s2:")]
    assert lines == ["mpi_s2: error: compose: argument --window: must be > 0, got 0 (see mpi-s2 compose --help)"], \
        result.stderr


FAIL_AT_ONCE = """\
import sys
from mpi_s2.errors import InputError
from mpi_s2.parallel.runtime import run_job

def main(comm):
    comm.Barrier()
    if comm.rank:  # every worker fails at the same moment (as two readers of one broken source do)
        raise InputError(f"a broken source, seen by rank {comm.rank}")
    comm.Barrier()

sys.exit(run_job(main))
"""


@pytest.mark.parametrize("attempt", range(3))
def test_ranks_failing_at_once_print_one_error_line(tmp_path, attempt):
    """Workers failing within microseconds of each other: one error line (CI of this stop: two, one per reader of a
    source that failed for good), not one per rank; the job still ends with the error's code."""
    script = tmp_path / "fail_at_once.py"
    script.write_text(FAIL_AT_ONCE)
    result = subprocess.run([*MPIRUN, "-n", "4", PYTHON, str(script)], capture_output=True, text=True, timeout=120,
                            env=clean_env(), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("mpi_s2: error")]
    assert len(lines) == 1 and "a broken source, seen by rank" in lines[0], result.stderr


def test_only_the_first_failing_rank_of_a_job_claims_the_line(tmp_path):
    """The claim is an abstract unix socket named after the job: another process of the same job cannot take it
    while the first lives, nor for ``outlive_s`` after it ended (its abort ends it before mpirun has stopped the
    others: CI on 981b815 printed a second reader's line then), a process of another job can, and nothing is left
    behind once that time is over."""
    claim = ("import sys, time; from mpi_s2.parallel.runtime import first_failure_here; "
             "print(first_failure_here(3, {'PMIX_NAMESPACE': sys.argv[1]}, outlive_s=float(sys.argv[3])), "
             "flush=True); time.sleep(float(sys.argv[2]))")
    job_a, job_b = f"test-a-{uuid.uuid4().hex}", f"test-b-{uuid.uuid4().hex}"  # (names outlive the test a while)
    first = subprocess.Popen([PYTHON, "-c", claim, job_a, "1", "4"], stdout=subprocess.PIPE, text=True)
    assert first.stdout is not None and first.stdout.readline().strip() == "True"
    claimed = time.monotonic()
    same = subprocess.run([PYTHON, "-c", claim, job_a, "0", "0"], capture_output=True, text=True)
    other = subprocess.run([PYTHON, "-c", claim, job_b, "0", "0"], capture_output=True, text=True)
    assert (same.stdout.strip(), other.stdout.strip()) == ("False", "True")
    first.wait()
    after = subprocess.run([PYTHON, "-c", claim, job_a, "0", "0"], capture_output=True, text=True)
    assert after.stdout.strip() == "False" and time.monotonic() - claimed < 4  # the first has ended, its claim not
    time.sleep(max(0.0, claimed + 4.5 - time.monotonic()))
    again = subprocess.run([PYTHON, "-c", claim, job_a, "0", "0"], capture_output=True, text=True)
    assert again.stdout.strip() == "True"
