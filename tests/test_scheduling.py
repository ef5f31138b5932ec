"""The scheduler's bookkeeping (pure): every item handed out exactly once, in the right phase and shape."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpi_s2.parallel.roles import Roles
from mpi_s2.planning.scheduling import (
    KIND_STAGE,
    KIND_WINDOW,
    MAX_BATCH,
    Scheduler,
    WorkItem,
    WorkPlan,
    contiguous_shares,
    guided_batch,
    items_to_table,
    table_to_items,
)
from mpi_s2.planning.stage_plan import StageUnit
from mpi_s2.windows import Window, plan_windows


def test_roles():
    assert Roles(0, 1).worker_ranks == (0,) and Roles(0, 1).is_writer and Roles(0, 1).serial
    roles = [Roles(r, 3) for r in range(3)]
    assert roles[0].is_planner and roles[0].is_writer and not roles[0].is_worker
    assert roles[1].is_worker and roles[2].is_worker and not roles[1].is_writer
    assert roles[0].worker_ranks == (1, 2)


def test_contiguous_shares_and_guided_batches():
    assert contiguous_shares(7, 3) == [range(0, 3), range(3, 5), range(5, 7)]
    assert contiguous_shares(1, 3) == [range(0, 1), range(1, 1), range(1, 1)]
    assert guided_batch(1000, 2) == MAX_BATCH and guided_batch(6, 2) == 2 and guided_batch(1, 4) == 1


def drive(scheduler: Scheduler, order=None):
    """Play the workers: each finishes its batch and asks again, in ``order`` (round-robin by default).

    Returns the items each worker got, in order, and checks the phase rule on the way.
    """
    got = {w: list(b) for w, b in scheduler.first_batches().items()}
    staged = {w: sum(1 for i in got[w] if i.kind == KIND_STAGE) for w in scheduler.workers}
    waiting = set()
    rounds = 0
    while not scheduler.finished:
        rounds += 1
        assert rounds < 10000
        for w in order or scheduler.workers:
            if w in waiting or w in scheduler._stopped:
                continue
            scheduler.request(w, staged[w])
            waiting.add(w)
            for worker, batch in scheduler.replies():
                waiting.discard(worker)
                if batch and batch[0].kind == KIND_WINDOW:
                    done = sum(staged.values())
                    for item in batch:  # a window that reads a staged copy only once staging is over
                        assert scheduler.independent[item.index] or done == scheduler.n_stage
                got[worker] += batch
                staged[worker] += sum(1 for i in batch if i.kind == KIND_STAGE)
    return got


@settings(max_examples=60, deadline=None)
@given(n_stage=st.integers(0, 30), n_windows=st.integers(0, 40), workers=st.integers(1, 5),
       policy=st.sampled_from(["dynamic", "static"]), seed=st.integers(0, 1000))
def test_every_item_is_handed_out_exactly_once(n_stage, n_windows, workers, policy, seed):
    rng = np.random.default_rng(seed)
    independent = list(rng.random(n_windows) < 0.4)
    ranks = tuple(range(1, workers + 1))
    got = drive(Scheduler(n_stage, independent, ranks, policy), order=list(rng.permutation(ranks)))
    items = [i for batch in got.values() for i in batch]
    assert sorted(i.index for i in items if i.kind == KIND_STAGE) == list(range(n_stage))
    assert sorted(i.index for i in items if i.kind == KIND_WINDOW) == list(range(n_windows))


def test_static_gives_contiguous_shares_in_two_phases():
    got = drive(Scheduler(5, [False] * 6, (1, 2), "static"))
    assert [i.index for i in got[1] if i.kind == KIND_STAGE] == [0, 1, 2]
    assert [i.index for i in got[2] if i.kind == KIND_STAGE] == [3, 4]
    assert [i.index for i in got[1] if i.kind == KIND_WINDOW] == [0, 1, 2]
    assert [i.index for i in got[2] if i.kind == KIND_WINDOW] == [3, 4, 5]


def test_dynamic_batches_are_small_contiguous_runs():
    s = Scheduler(0, [True] * 100, (1, 2), "dynamic")
    first = s.first_batches()
    assert [i.index for i in first[1]] == list(range(MAX_BATCH))
    assert [i.index for i in first[2]] == list(range(MAX_BATCH, 2 * MAX_BATCH))
    s.request(2, 0)
    (worker, batch), = s.replies()
    assert worker == 2 and [i.index for i in batch] == list(range(2 * MAX_BATCH, 3 * MAX_BATCH))


def test_dynamic_fills_the_staging_wait_with_independent_windows():
    s = Scheduler(2, [False, True, False, True], (1, 2), "dynamic")
    first = s.first_batches()
    assert [i.kind for i in first[1] + first[2]] == [KIND_STAGE, KIND_STAGE]
    s.request(1, 1)  # worker 1 is done, worker 2 still stages: only windows 1 and 3 may start
    assert s.replies() == [(1, [WorkItem(KIND_WINDOW, 1)])]
    s.request(1, 1)
    assert s.replies() == [(1, [WorkItem(KIND_WINDOW, 3)])]
    s.request(1, 1)
    assert s.replies() == []  # nothing independent left: worker 1 waits
    s.request(2, 1)  # staging is over: both get work
    assert dict(s.replies()) == {1: [WorkItem(KIND_WINDOW, 0)], 2: [WorkItem(KIND_WINDOW, 2)]}


def test_requests_wait_for_staging_and_stop_at_the_end():
    s = Scheduler(1, [False], (1, 2), "dynamic")
    s.first_batches()  # worker 1 stages the unit; worker 2 gets nothing
    s.request(2, 0)
    assert s.replies() == []  # window 0 reads the staged copy: worker 2 waits
    s.request(1, 1)
    answers = dict(s.replies())
    assert [i.index for i in answers[1] + answers[2]] == [0]
    s.request(1, 1)
    s.request(2, 0)
    assert dict(s.replies()) == {1: [], 2: []} and s.finished


def test_counts_the_workers_report_are_summed_for_progress():
    s = Scheduler(1, [False, True, True], (1, 2), "dynamic", windows=[0, 2])
    s.first_batches()
    assert (s.staged_done_total, s.windows_done_total, s.n_windows, s.windows_reported) == (0, 0, 2, False)
    s.request(1, 1)  # staging units only: the window count stays as it was
    s.progress(2, 0, 1)
    assert (s.staged_done_total, s.windows_done_total, s.windows_reported) == (1, 1, False)
    s.request(1, 1, 1)
    assert (s.staged_done_total, s.windows_done_total, s.windows_reported) == (1, 2, True)


def test_staging_is_counted_only_when_a_window_to_do_reads_a_staged_copy():
    units = (StageUnit(0, (0,), Window(0, 0, 10, 10)),) * 3
    work = WorkPlan(tuple(plan_windows((30, 10), (10, 10))), units, (False, True, True))
    assert work.stage_count([0, 1, 2]) == 3 and work.scheduler((1,), [0, 2]).n_stage == 3
    assert work.stage_count([1, 2]) == 0 and work.scheduler((1,), [1, 2]).n_stage == 0  # a resumed run


def test_item_table_round_trip():
    units = [StageUnit(1, (3, 4, 5), Window(1024, 0, 1024, 512))]
    windows = plan_windows((300, 200), (100, 100))
    items = [WorkItem(KIND_STAGE, 0), WorkItem(KIND_WINDOW, 4)]
    table = items_to_table(items, units, windows)
    assert table.dtype == np.int64 and table.flags.c_contiguous
    assert table_to_items(table) == [(items[0], units[0]), (items[1], windows[4])]


def test_unknown_schedule_is_an_error():
    with pytest.raises(ValueError, match="unknown schedule"):
        Scheduler(0, [], (1,), "fastest")
