"""Scheduling: which worker processes which window, and scattering that assignment.

The assignment is static and deterministic (round-robin in row-major order), so the writer can tell, from the
sender alone, which window a message holds: MPI keeps messages between one pair of ranks in order.
Round-robin keeps neighbouring windows in flight together, which keeps the writer's tile cache small.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .windows import TABLE_COLUMNS, Window, windows_to_table


def assign_round_robin(n_windows: int, worker_ranks: Sequence[int]) -> dict[int, list[int]]:
    """Window indices per worker rank: window ``i`` goes to ``worker_ranks[i % len(worker_ranks)]``."""
    queues: dict[int, list[int]] = {rank: [] for rank in worker_ranks}
    for i in range(n_windows):
        queues[worker_ranks[i % len(worker_ranks)]].append(i)
    return queues


def scatter_table(
    queues: dict[int, list[int]], windows: Sequence[Window], size: int
) -> tuple[np.ndarray, list[int], list[int]]:
    """The window table ordered by destination rank, with Scatterv counts and displacements (in int64s)."""
    width = len(TABLE_COLUMNS)
    rows, counts = [], []
    for rank in range(size):
        indices = queues.get(rank, [])
        rows.extend(indices)
        counts.append(len(indices) * width)
    table = windows_to_table([windows[i] for i in rows], rows)
    displs = [sum(counts[:r]) for r in range(size)]
    return np.ascontiguousarray(table), counts, displs


def scatter_windows(comm, root: int, queues: dict[int, list[int]] | None, windows: Sequence[Window] | None):
    """Scatter each rank's rows of the window table (``Scatterv`` on an int64 buffer); return this rank's rows.

    ``queues`` and ``windows`` are only needed on ``root``.
    """
    from mpi4py import MPI

    width = len(TABLE_COLUMNS)
    if comm.rank == root:
        assert queues is not None and windows is not None
        table, counts, displs = scatter_table(queues, windows, comm.size)
        sendbuf = [table, counts, displs, MPI.INT64_T]
    else:
        counts, sendbuf = None, None
    my_count = comm.scatter(counts, root=root)
    mine = np.empty((my_count // width, width), dtype=np.int64)
    comm.Scatterv(sendbuf, [mine, MPI.INT64_T], root=root)
    return mine
