"""In-process MPI tests: run by ``mpirun -n 2|3 python -m pytest --with-mpi -m mpi`` (see ``make test``).

Assertions that concern one rank come after the collectives, so a failure cannot leave other ranks waiting.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from conftest import read_array

pytestmark = pytest.mark.mpi(min_size=2)


@pytest.fixture
def comm():
    from mpi4py import MPI

    return MPI.COMM_WORLD


def config_for(scene, output, **kwargs):
    from mpi_s2.config import BandFiles, ComposeConfig

    bands = kwargs.pop("bands", BandFiles(scene["red"], scene["green"], scene["blue"]))
    return ComposeConfig(output=str(output), band_sets=(bands,), progress=False, **kwargs)


def test_scatter_gives_each_worker_exactly_its_first_batch(comm):
    from mpi_s2.parallel.roles import Roles
    from mpi_s2.parallel.transport import scatter_batches
    from mpi_s2.planning.scheduling import Scheduler, items_to_table, table_to_items
    from mpi_s2.windows import plan_windows

    roles = Roles(comm.rank, comm.size)
    windows = plan_windows((1300, 1100), (256, 256))
    first = Scheduler(0, [True] * len(windows), roles.worker_ranks, "static").first_batches()
    tables = {r: items_to_table(b, [], windows) for r, b in first.items()} if comm.rank == 0 else None
    received = table_to_items(scatter_batches(comm, 0, tables))
    everything = comm.allgather([item.index for item, _ in received])
    assert all(windows[item.index] == w for item, w in received)  # definitions travel, not references
    indices = sorted(i for rank_rows in everything for i in rank_rows)
    assert indices == list(range(len(windows)))  # every window to exactly one rank
    assert len(received) == 0 if roles.is_writer else len(received) > 0


def test_every_rank_gets_identical_lookup_tables(comm, scene, mpi_tmp_path):
    from mpi_s2.parallel.compose import broadcast_luts, broadcast_plan
    from mpi_s2.parallel.roles import Roles
    from mpi_s2.pixels.radiometry import Stretch, build_lut

    roles = Roles(comm.rank, comm.size)
    plan = broadcast_plan(comm, roles, config_for(scene, mpi_tmp_path / "x.tif", offset=-1000.0, gamma=2.0))
    luts = broadcast_luts(comm, roles, plan)
    digests = comm.allgather(zlib.crc32(luts.tobytes()))
    assert len(set(digests)) == 1 and luts.shape == (1, 3, 65536)
    assert all(np.array_equal(lut, build_lut(Stretch(offset=-1000.0, gamma=2.0))) for lut in luts[0])
    assert plan.windows == () or roles.is_planner  # workers learn windows only from rank 0's messages


def test_compose_in_process_matches_reference(comm, scene, reference, valid, mpi_tmp_path):
    from mpi_s2.parallel.compose import compose

    out = mpi_tmp_path / "rgb.tif"
    report = compose(config_for(scene, out, window=256), comm)
    comm.Barrier()
    if comm.rank != 0:
        assert report is None
        return
    rgba = read_array(out)
    assert (rgba[:3][:, valid] == reference[:, valid]).all()
    assert (rgba[3] == np.where(valid, 255, 0)).all()
    assert report["windows"] == 30 and report["mpi_ranks"] == comm.size
    assert sum(r["windows"] for r in report["ranks"]) == 30


def test_planning_error_is_raised_on_every_rank_without_abort(comm, scene, mpi_tmp_path):
    from mpi_s2.config import BandFiles
    from mpi_s2.errors import CollectiveFailure
    from mpi_s2.parallel.compose import compose

    bad = config_for(scene, mpi_tmp_path / "o.tif",
                     bands=BandFiles(scene["red"], str(mpi_tmp_path / "nope.tif"), scene["blue"]))
    with pytest.raises(CollectiveFailure, match="nope.tif: no such file") as info:
        compose(bad, comm)
    codes = comm.allgather(info.value.error.exit_code)
    assert codes == [2] * comm.size
    assert not (mpi_tmp_path / "o.tif").exists()


def test_run_job_reports_once_and_returns_exit_code(comm, scene, mpi_tmp_path, capfd):
    from mpi_s2.config import BandFiles
    from mpi_s2.parallel.compose import compose
    from mpi_s2.parallel.runtime import run_job

    bad = config_for(scene, mpi_tmp_path / "o.tif",
                     bands=BandFiles(str(mpi_tmp_path / "missing.tif"), scene["green"], scene["blue"]))
    code = run_job(lambda c: compose(bad, c), comm)
    err = capfd.readouterr().err
    lines = comm.gather([line for line in err.splitlines() if line.startswith("mpi_s2: error")], root=0)
    assert code == 2
    if comm.rank == 0:
        assert sum(len(rank_lines) for rank_lines in lines) == 1
        assert "missing.tif: no such file" in lines[0][0]


@pytest.mark.parametrize("failing", ["all", "rank 1", "none"])
def test_ranks_agree_on_a_command_line_error_before_any_exits(comm, capsys, failing):
    from mpi_s2.errors import InputError, UsageError
    from mpi_s2.parallel.runtime import start_together

    if failing == "all":
        failure = UsageError("compose: argument --window: must be > 0, got 0 (see mpi-s2 compose --help)")
    else:
        failure = InputError("/data/b04.jp2: no such file") if failing == "rank 1" and comm.rank == 1 else None
    code = start_together(failure, comm)
    err = capsys.readouterr().err
    assert code == {"all": 2, "rank 1": 2, "none": 0}[failing]
    expected = {"all": "mpi_s2: error: compose: argument --window: must be > 0, got 0 (see mpi-s2 compose --help)\n",
                "rank 1": "mpi_s2: error (rank 1): /data/b04.jp2: no such file\n", "none": ""}[failing]
    assert err == (expected if comm.rank == 0 else "")
