"""Scheduling: which worker does which work item, and when (pure logic: rank 0's bookkeeping, no MPI).

Work comes in two phases: staging units (decode misaligned sources once, see
:mod:`mpi_s2.planning.stage_plan`), then output windows. A window that reads a staged copy may only start once
every staging unit is done; a window that reads no staged copy may start at any time.

* ``static``: each worker gets a contiguous share of each phase (in row-major order), fixed in advance.
* ``dynamic`` (default): rank 0 scatters a first batch to each worker; a worker that has finished its batch
  asks for more and gets the next contiguous run of items (guided self-scheduling: batches shrink as the work
  runs out, from :data:`MAX_BATCH` down to one item), so neighbouring work stays on one worker and no worker
  waits while another still holds a long queue. Workers waiting for the staging phase to end are given the
  windows that read no staged copy.

Items travel as rows of an int64 table (:data:`ITEM_COLUMNS`): the definitions themselves, not references.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from mpi_s2.errors import InputError
from mpi_s2.planning.stage_plan import StageUnit
from mpi_s2.windows import Window

SCHEDULES = ("dynamic", "static")
KIND_STAGE, KIND_WINDOW = 0, 1
#: Columns of a work-item row: what, which (index in its phase), source and staged files (stage units),
#: and the rectangle (file pixels for stage units, output pixels for windows).
ITEM_COLUMNS = ("kind", "index", "source", "first_file", "file_count", "col_off", "row_off", "width", "height")
MAX_BATCH = 8


class Done(NamedTuple):
    """What a worker has finished so far, as it tells rank 0 with each request or progress message."""

    staged: int  # staging units, their copies closed
    windows: int  # windows filled (composed, or read back from an HDF5 file)


@dataclass(frozen=True, slots=True)
class WorkItem:
    kind: int
    index: int


def items_to_table(items: Sequence[WorkItem], units: Sequence[StageUnit], windows: Sequence[Window]) -> np.ndarray:
    """Rows of :data:`ITEM_COLUMNS` for ``items`` (contiguous int64, ready for an MPI buffer)."""
    table = np.empty((len(items), len(ITEM_COLUMNS)), dtype=np.int64)
    for row, item in enumerate(items):
        if item.kind == KIND_STAGE:
            u = units[item.index]
            table[row] = (KIND_STAGE, item.index, u.source, u.files[0], len(u.files), u.window.col_off,
                          u.window.row_off, u.window.width, u.window.height)
        else:
            w = windows[item.index]
            table[row] = (KIND_WINDOW, item.index, -1, -1, 0, w.col_off, w.row_off, w.width, w.height)
    return table


def table_to_items(table: np.ndarray) -> list[tuple[WorkItem, StageUnit | Window]]:
    """Inverse of :func:`items_to_table`: each item with its stage unit or window."""
    out: list[tuple[WorkItem, StageUnit | Window]] = []
    for kind, index, source, first, count, col, row, width, height in table.tolist():
        window = Window(col, row, width, height)
        if kind == KIND_STAGE:
            out.append((WorkItem(kind, index), StageUnit(source, tuple(range(first, first + count)), window)))
        else:
            out.append((WorkItem(kind, index), window))
    return out


@dataclass(frozen=True)
class WorkPlan:
    """A run's work, as rank 0 hands it out: staging units first, then the windows (``independent``: per window,
    whether it reads no staged copy and may start before staging ends), under a ``schedule`` policy."""

    windows: tuple[Window, ...]
    stage_units: tuple[StageUnit, ...] = ()
    independent: tuple[bool, ...] = ()
    schedule: str = "dynamic"

    def scheduler(self, workers: Sequence[int], todo: list[int]) -> Scheduler:
        """The scheduler of the windows ``todo``; staging is skipped when none of them reads a staged copy."""
        independent = self.independent or (True,) * len(self.windows)
        return Scheduler(self.stage_count(todo), independent, workers, self.schedule, windows=todo)

    def stage_count(self, todo: list[int]) -> int:
        """The staging units the scheduler of the windows ``todo`` hands out: all, or none when no window of
        ``todo`` reads a staged copy."""
        independent = self.independent or (True,) * len(self.windows)
        return len(self.stage_units) if not all(independent[i] for i in todo) else 0

    def table(self, items: Sequence[WorkItem]) -> np.ndarray:
        """``items`` as rows of the int64 work table."""
        return items_to_table(items, self.stage_units, self.windows)


def contiguous_shares(n: int, parts: int) -> list[range]:
    """``n`` items cut into ``parts`` contiguous ranges whose sizes differ by at most one."""
    base, extra = divmod(n, parts)
    bounds = [0]
    for p in range(parts):
        bounds.append(bounds[-1] + base + (1 if p < extra else 0))
    return [range(bounds[p], bounds[p + 1]) for p in range(parts)]


def guided_batch(remaining: int, workers: int) -> int:
    """Items to hand out next: half a fair share of what remains, between 1 and :data:`MAX_BATCH`."""
    return max(1, min(MAX_BATCH, math.ceil(remaining / (2 * workers))))


class Scheduler:
    """Rank 0's bookkeeping of who has what; answers workers' requests for more work.

    ``independent[i]`` says whether window ``i`` can start before staging ends. A request carries the number
    of staging units the worker has finished (and the windows, see :class:`Done`); staging has ended when every
    unit is handed out and reported done. An empty batch tells a worker to stop. The counts summed over the
    workers (:attr:`staged_done_total`, :attr:`windows_done_total`) are what rank 0 shows as progress.
    """

    def __init__(self, n_stage: int, independent: Sequence[bool], workers: Sequence[int], policy: str = "dynamic",
                 windows: Sequence[int] | None = None):
        """``windows``: the indices of the windows to hand out (default all; a resumed run omits those done)."""
        if policy not in SCHEDULES:
            raise InputError(f"unknown schedule {policy!r}; known: {', '.join(SCHEDULES)}")
        self.policy = policy
        self.workers = tuple(workers)
        self.n_stage = n_stage
        self.independent = list(independent)
        self._stage = deque(range(n_stage))
        todo = list(range(len(self.independent))) if windows is None else sorted(windows)
        self.n_windows = len(todo)
        self._windows = list(todo)  # not yet handed out, in row-major order
        self._staged_done = {w: 0 for w in self.workers}
        self._windows_done = {w: 0 for w in self.workers}
        self._pending: list[int] = []
        self._stopped: set[int] = set()
        if policy == "static":
            self._static_stage = dict(zip(self.workers, contiguous_shares(n_stage, len(self.workers)), strict=True))
            shares = contiguous_shares(len(todo), len(self.workers))
            self._static_windows = {w: [todo[i] for i in share] for w, share in zip(self.workers, shares, strict=True)}

    # -- state -------------------------------------------------------------------------------------------
    @property
    def staging_done(self) -> bool:
        return not self._stage and sum(self._staged_done.values()) >= self.n_stage

    @property
    def finished(self) -> bool:
        """Every worker has been told to stop."""
        return len(self._stopped) == len(self.workers)

    @property
    def staged_done_total(self) -> int:
        """Staging units the workers have reported done."""
        return sum(self._staged_done.values())

    @property
    def windows_done_total(self) -> int:
        """Windows the workers have reported done (0 unless their messages carry window counts)."""
        return sum(self._windows_done.values())

    @property
    def windows_reported(self) -> bool:
        """Every window handed out has been reported done: no count is still on its way to rank 0."""
        return self.windows_done_total >= self.n_windows

    # -- handing out ---------------------------------------------------------------------------------------
    def _take_stage(self, worker: int) -> list[WorkItem]:
        if self.policy == "static":
            share = self._static_stage.pop(worker, range(0))
            for i in share:
                self._stage.remove(i)
            return [WorkItem(KIND_STAGE, i) for i in share]
        n = guided_batch(len(self._stage), len(self.workers))
        return [WorkItem(KIND_STAGE, self._stage.popleft()) for _ in range(min(n, len(self._stage)))]

    def _take_windows(self, worker: int, only_independent: bool) -> list[WorkItem]:
        if self.policy == "static":
            if only_independent:
                return []
            share = self._static_windows.pop(worker, [])
            taken = set(share)
            self._windows = [i for i in self._windows if i not in taken]
            return [WorkItem(KIND_WINDOW, i) for i in share]
        eligible = [i for i in self._windows if self.independent[i]] if only_independent else self._windows
        n = min(guided_batch(len(self._windows), len(self.workers)), len(eligible))
        chosen = eligible[:n]
        taken = set(chosen)
        self._windows = [i for i in self._windows if i not in taken]
        return [WorkItem(KIND_WINDOW, i) for i in chosen]

    def _next_for(self, worker: int) -> list[WorkItem] | None:
        """A batch for ``worker``, ``[]`` to stop it, or None when it must wait for staging to end."""
        if self.policy == "static" and worker in self._static_stage and self._static_stage[worker]:
            return self._take_stage(worker)
        if self.policy == "dynamic" and self._stage:
            return self._take_stage(worker)
        if self.staging_done:
            return self._take_windows(worker, only_independent=False)
        batch = self._take_windows(worker, only_independent=True)
        return batch or None

    def first_batches(self) -> dict[int, list[WorkItem]]:
        """What the initial scatter gives each worker (nothing is withheld for a static schedule's phase)."""
        batches = {}
        for w in self.workers:
            batch = self._next_for(w)
            batches[w] = batch if batch else []
        return batches

    def request(self, worker: int, staged_done: int, windows_done: int | None = None) -> None:
        """``worker`` asks for its next batch, having finished ``staged_done`` staging units in all (and
        ``windows_done`` windows, when given).

        A worker asks ahead, as it starts the last item of its batch; it reports that item with :meth:`progress`
        before it waits for the answer.
        """
        self.progress(worker, staged_done, windows_done)
        self._pending.append(worker)

    def progress(self, worker: int, staged_done: int, windows_done: int | None = None) -> None:
        """``worker`` has now finished ``staged_done`` staging units (and ``windows_done`` windows) in all."""
        self._staged_done[worker] = staged_done
        if windows_done is not None:
            self._windows_done[worker] = windows_done

    def replies(self) -> list[tuple[int, list[WorkItem]]]:
        """Answer every pending request that can be answered now (an empty batch stops the worker)."""
        answered, still = [], []
        for worker in self._pending:
            batch = self._next_for(worker)
            if batch is None:
                still.append(worker)
                continue
            if not batch:
                self._stopped.add(worker)
            answered.append((worker, batch))
        self._pending = still
        return answered
