import numpy as np

from mpi_s2.roles import Roles
from mpi_s2.scheduling import assign_round_robin, scatter_table
from mpi_s2.windows import plan_windows


def test_roles():
    assert Roles(0, 1).worker_ranks == (0,) and Roles(0, 1).is_writer and Roles(0, 1).serial
    roles = [Roles(r, 3) for r in range(3)]
    assert roles[0].is_planner and roles[0].is_writer and not roles[0].is_worker
    assert roles[1].is_worker and roles[2].is_worker and not roles[1].is_writer
    assert roles[0].worker_ranks == (1, 2)


def test_round_robin_assigns_every_window_once():
    queues = assign_round_robin(7, (1, 2, 3))
    assert queues == {1: [0, 3, 6], 2: [1, 4], 3: [2, 5]}


def test_scatter_table_orders_rows_by_rank():
    windows = plan_windows((300, 200), (100, 100))
    queues = assign_round_robin(len(windows), (1, 2))
    table, counts, displs = scatter_table(queues, windows, 3)
    assert counts == [0, 3 * 5, 3 * 5] and displs == [0, 0, 15]
    assert list(table[:, 0]) == [0, 2, 4, 1, 3, 5]
    assert table.dtype == np.int64 and table.flags.c_contiguous
