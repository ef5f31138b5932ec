"""The campaign's Slurm wrappers and its reconciliation: the parsers on real Slurm 22.05 output (captured on the
local test cluster, tests/cluster/local-cluster.sh, accounting disabled, jobcomp/filetxt), the reconcile rules, and
one array submitted, watched and accounted on a real one-node cluster.

The cluster test needs root and Debian's slurm-wlm, munge and iproute2 (``make test`` installs them); without them
it fails (conftest.require) unless MPI_S2_ALLOW_SKIPS=1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from mpi_s2.campaign import reconcile as rec
from mpi_s2.campaign.reconcile import Change, reconcile
from mpi_s2.campaign.slurm import (
    Accounting,
    QueueEntry,
    Slurm,
    SlurmError,
    array_spec,
    expand_tasks,
    parse_duration,
    parse_jobcomp,
    parse_sacct,
    parse_squeue,
    slurm_missing,
)
from mpi_s2.errors import InputError

from conftest import clean_env, require

REPO = Path(__file__).resolve().parents[1]
LOCAL_CLUSTER = REPO / "tests" / "cluster" / "local-cluster.sh"
NOW = "2026-12-02T18:00:00"

# ------------------------------------------------------------------------- real output (Slurm 22.05.8)

# sbatch --array=0-3%2 --wrap 'sleep 20'; then squeue -h -r -o '%i|%A|%F|%K|%T|%N|%S|%j': pending tasks keep the
# array's job id in %A, running ones have their own.
SQUEUE_R = """\
7_2|7|7|2|PENDING||N/A|wrap
7_3|7|7|3|PENDING||N/A|wrap
7_0|8|7|0|RUNNING|node1|2026-12-02T17:49:25|wrap
7_1|9|7|1|RUNNING|node1|2026-12-02T17:49:25|wrap
"""
# the same without -r: the pending tasks grouped with the throttle
SQUEUE_GROUPED = """\
7_[2-3%2]|7|7|2-3%2|PENDING||N/A|wrap
7_0|8|7|0|RUNNING|node1|2026-12-02T17:49:25|wrap
7_1|9|7|1|RUNNING|node1|2026-12-02T17:49:25|wrap
"""
# a job that is no array, and an array task being cancelled (COMPLETING for KillWait=5 s after scancel 11_1)
SQUEUE_OTHERS = """\
3|3|3|N/A|RUNNING|node1|2026-12-02T17:48:51|wrap
11_1|11|11|1|COMPLETING|node1|2026-12-02T17:49:51|trap.sbatch
"""
# sacct -c -n -P -j 1,2,3,4 -o JobID,State,ExitCode,NodeList,Start,End,Elapsed (1 completed, 2 exit 1, 3 scancel,
# 4: an array 0-2 whose task 2 ran under the array's id; its tasks 0 and 1 ran as jobs 5 and 6, not shown)
SACCT_C = """\
2|FAILED|1:0|node1|2026-12-02T17:48:51|2026-12-02T17:48:51|00:00:00
1|COMPLETED|0:0|node1|2026-12-02T17:48:51|2026-12-02T17:48:52|00:00:01
3|CANCELLED|0:0|node1|2026-12-02T17:48:51|2026-12-02T17:48:52|00:00:01
4|COMPLETED|0:0|node1|2026-12-02T17:48:52|2026-12-02T17:48:53|00:00:01
"""
# sacct with accounting (slurmdbd), as documented: array tasks as JOB_TASK, the pending rest grouped, "by UID"
SACCT_DBD = """\
20_0|COMPLETED|0:0|node1|2026-12-02T10:00:00|2026-12-02T10:01:30|00:01:30|02:58.250
20_1|FAILED|3:0|node2|2026-12-02T10:00:00|2026-12-02T10:00:05|00:00:05|00:04.100
20_2|CANCELLED by 0|0:15|node1|2026-12-02T10:01:30|2026-12-02T10:02:00|00:00:30|00:29.000
20_3|NODE_FAIL|1:0|node2|2026-12-02T10:01:30|2026-12-02T10:07:00|00:05:30|
20_[4-5]|CANCELLED by 0|0:0|None assigned|None|2026-12-02T10:02:00|00:00:00|00:00:00
20_0.batch|COMPLETED|0:0|node1|2026-12-02T10:00:00|2026-12-02T10:01:30|00:01:30|02:58.250
21|TIMEOUT|0:0|node1|2026-12-01T10:00:00|2026-12-02T11:00:00|1-01:00:00|1-00:59:58
"""
# $STATE/jobcomp.txt: job 2 exits 1; array 4 = tasks 0 (job 5), 1 (job 6, exit 3), 2 (job 4); scancel 11_1 of a
# running task; array 16 = 0-3%1 cancelled whole with task 0 running (job 17): tasks 1-3 share the array's record.
JOBCOMP = """\
JobId=2 UserId=root(0) GroupId=root(0) Name=wrap JobState=FAILED Partition=debug TimeLimit=UNLIMITED StartTime=2026-12-02T17:48:51 EndTime=2026-12-02T17:48:51 NodeList=node1 NodeCnt=1 ProcCnt=1 WorkDir=/tmp/hr ReservationName= Tres=cpu=1,mem=12052M,node=1,billing=1 Account= QOS= WcKey= Cluster=unknown SubmitTime=2026-12-02T17:48:50 EligibleTime=2026-12-02T17:48:50 DerivedExitCode=0:0 ExitCode=1:0
JobId=5 UserId=root(0) GroupId=root(0) Name=wrap JobState=COMPLETED Partition=debug TimeLimit=UNLIMITED StartTime=2026-12-02T17:48:51 EndTime=2026-12-02T17:48:52 NodeList=node1 NodeCnt=1 ProcCnt=1 WorkDir=/tmp/hr ReservationName= Tres=cpu=1,mem=12052M,node=1,billing=1 Account= QOS= WcKey= Cluster=unknown SubmitTime=2026-12-02T17:48:50 EligibleTime=2026-12-02T17:48:51 ArrayJobId=4 ArrayTaskId=0 DerivedExitCode=0:0 ExitCode=0:0
JobId=6 UserId=root(0) GroupId=root(0) Name=wrap JobState=FAILED Partition=debug TimeLimit=UNLIMITED StartTime=2026-12-02T17:48:51 EndTime=2026-12-02T17:48:52 NodeList=node2 NodeCnt=1 ProcCnt=1 WorkDir=/tmp/hr ReservationName= Tres=cpu=1,mem=12052M,node=1,billing=1 Account= QOS= WcKey= Cluster=unknown SubmitTime=2026-12-02T17:48:50 EligibleTime=2026-12-02T17:48:51 ArrayJobId=4 ArrayTaskId=1 DerivedExitCode=0:0 ExitCode=3:0
JobId=4 UserId=root(0) GroupId=root(0) Name=wrap JobState=COMPLETED Partition=debug TimeLimit=UNLIMITED StartTime=2026-12-02T17:48:52 EndTime=2026-12-02T17:48:53 NodeList=node1 NodeCnt=1 ProcCnt=1 WorkDir=/tmp/hr ReservationName= Tres=cpu=1,mem=12052M,node=1,billing=1 Account= QOS= WcKey= Cluster=unknown SubmitTime=2026-12-02T17:48:50 EligibleTime=2026-12-02T17:48:52 ArrayJobId=4 ArrayTaskId=2 DerivedExitCode=0:0 ExitCode=0:0
JobId=11 UserId=root(0) GroupId=root(0) Name=trap.sbatch JobState=CANCELLED Partition=debug TimeLimit=UNLIMITED StartTime=2026-12-02T17:49:51 EndTime=2026-12-02T17:49:53 NodeList=node1 NodeCnt=1 ProcCnt=1 WorkDir=/tmp/hr ReservationName= Tres=cpu=1,mem=12052M,node=1,billing=1 Account= QOS= WcKey= Cluster=unknown SubmitTime=2026-12-02T17:49:51 EligibleTime=2026-12-02T17:49:51 ArrayJobId=11 ArrayTaskId=1 DerivedExitCode=0:0 ExitCode=0:0
JobId=16 UserId=root(0) GroupId=root(0) Name=wrap JobState=CANCELLED Partition=debug TimeLimit=UNLIMITED StartTime=2026-12-02T17:50:55 EndTime=2026-12-02T17:50:55 NodeList=(null) NodeCnt=0 ProcCnt=1 WorkDir=/tmp/hr ReservationName= Tres=cpu=1,mem=12052M,node=1,billing=1 Account= QOS= WcKey= Cluster=unknown SubmitTime=2026-12-02T17:50:53 EligibleTime=unknown DerivedExitCode=0:0 ExitCode=0:0
JobId=17 UserId=root(0) GroupId=root(0) Name=wrap JobState=CANCELLED Partition=debug TimeLimit=UNLIMITED StartTime=2026-12-02T17:50:53 EndTime=2026-12-02T17:50:55 NodeList=node1 NodeCnt=1 ProcCnt=1 WorkDir=/tmp/hr ReservationName= Tres=cpu=1,mem=12052M,node=1,billing=1 Account= QOS= WcKey= Cluster=unknown SubmitTime=2026-12-02T17:50:53 EligibleTime=2026-12-02T17:50:53 ArrayJobId=16 ArrayTaskId=0 DerivedExitCode=0:0 ExitCode=0:0
"""  # noqa: E501


# ------------------------------------------------------------------------- array_spec


@pytest.mark.parametrize("tasks, throttle, spec", [
    ([0, 1, 2, 5, 7, 8], 2, "0-2,5,7-8%2"),
    ([3], None, "3"),
    ([8, 7, 0, 2, 1, 5, 5], None, "0-2,5,7-8"),
    (list(range(100)), 10, "0-99%10"),
    ([0, 2, 4], 1, "0,2,4%1"),
])
def test_array_spec(tasks, throttle, spec):
    assert array_spec(tasks, throttle) == spec
    assert expand_tasks(spec) == sorted(set(tasks))


@pytest.mark.parametrize("tasks, throttle", [([], None), ([-1, 0], None), ([0], 0)])
def test_array_spec_rejects(tasks, throttle):
    with pytest.raises(ValueError):
        array_spec(tasks, throttle)


def test_expand_tasks_and_durations():
    assert expand_tasks("[1,3-4]") == [1, 3, 4] and expand_tasks("0-10:5") == [0, 5, 10]
    assert parse_duration("00:00:01") == 1 and parse_duration("1-01:00:00") == 90000
    assert parse_duration("02:58.250") == pytest.approx(178.25) and parse_duration("") is None
    assert parse_duration("INVALID") is None and parse_duration("45") == 45


# ------------------------------------------------------------------------- parsers


def test_parse_squeue_expanded():
    assert parse_squeue(SQUEUE_R) == [
        QueueEntry("7", 2, "PENDING", "", None, "wrap"), QueueEntry("7", 3, "PENDING", "", None, "wrap"),
        QueueEntry("7", 0, "RUNNING", "node1", "2026-12-02T17:49:25", "wrap"),
        QueueEntry("7", 1, "RUNNING", "node1", "2026-12-02T17:49:25", "wrap")]


def test_parse_squeue_grouped_pending_array_expands():
    assert sorted(parse_squeue(SQUEUE_GROUPED), key=lambda e: e.array_task or 0) == sorted(
        parse_squeue(SQUEUE_R), key=lambda e: e.array_task or 0)


def test_parse_squeue_plain_job_and_name_with_separator():
    entries = parse_squeue(SQUEUE_OTHERS + "30_4|31|30|4|RUNNING|node[1-2]|2026-12-02T17:00:00|a|b\n\n")
    assert entries == [QueueEntry("3", None, "RUNNING", "node1", "2026-12-02T17:48:51", "wrap"),
                       QueueEntry("11", 1, "COMPLETING", "node1", "2026-12-02T17:49:51", "trap.sbatch"),
                       QueueEntry("30", 4, "RUNNING", "node[1-2]", "2026-12-02T17:00:00", "a|b")]
    with pytest.raises(ValueError):
        parse_squeue("7_2|PENDING\n")


def test_parse_sacct_completion_log():
    records = parse_sacct(SACCT_C)
    assert [(r.job_id, r.array_task, r.state, r.exit_code) for r in records] == [
        ("2", None, "FAILED", 1), ("1", None, "COMPLETED", 0), ("3", None, "CANCELLED", 0), ("4", None, "COMPLETED", 0)]
    assert records[2] == Accounting("3", None, "CANCELLED", 0, 0, "node1", "2026-12-02T17:48:51",
                                    "2026-12-02T17:48:52", 1.0, None)


def test_parse_sacct_accounting():
    records = parse_sacct(SACCT_DBD)
    assert [(r.job_id, r.array_task, r.state) for r in records] == [
        ("20", 0, "COMPLETED"), ("20", 1, "FAILED"), ("20", 2, "CANCELLED"), ("20", 3, "NODE_FAIL"),
        ("20", 4, "CANCELLED"), ("20", 5, "CANCELLED"), ("21", None, "TIMEOUT")]  # no step (20_0.batch)
    assert records[0].elapsed_s == 90 and records[0].cpu_s == pytest.approx(178.25)
    assert (records[1].exit_code, records[2].signal) == (3, 15)
    assert records[4].nodes == "" and records[4].start is None and records[3].cpu_s is None
    assert records[6].elapsed_s == 90000


def test_parse_jobcomp_names_array_tasks():
    records = parse_jobcomp(JOBCOMP)
    assert [(r.job_id, r.array_task, r.state, r.exit_code, r.nodes) for r in records] == [
        ("2", None, "FAILED", 1, "node1"), ("4", 0, "COMPLETED", 0, "node1"), ("4", 1, "FAILED", 3, "node2"),
        ("4", 2, "COMPLETED", 0, "node1"), ("11", 1, "CANCELLED", 0, "node1"), ("16", None, "CANCELLED", 0, ""),
        ("16", 0, "CANCELLED", 0, "node1")]
    assert records[1].start == "2026-12-02T17:48:51" and records[1].elapsed_s == 1.0
    assert parse_jobcomp("garbage\n\n") == []


# ------------------------------------------------------------------------- reconcile


@dataclass
class Row:
    tile: str
    state: str = "submitted"
    attempts: int = 1
    job_id: str | None = "4"
    array_task: int | None = 0


def marker(tile="t0", state="done", attempt=1, job_id="4", array_task=0, **fields):
    base = {"tile": tile, "attempt": attempt, "job_id": job_id, "array_task": array_task, "state": state,
            "error": None, "nodes": "node1", "started": "2026-12-02T17:48:51", "ended": "2026-12-02T17:48:52",
            "wall_s": 1.0, "cpu_s": 0.5, "output": "tiles/t0/rgb.tif", "size": 1234, "checksum": "sha256:ab"}
    return {**base, **fields}


def one(rows, queue=(), accounting=None, markers=None) -> dict | None:
    changes = reconcile(rows, list(queue), accounting, markers or {}, NOW)
    assert len(changes) <= 1
    return changes[0].fields if changes else None


def test_rule1_marker_decides_even_when_still_in_queue():
    running = [QueueEntry("4", 0, "COMPLETING", "node1", "2026-12-02T17:48:51", "wrap")]
    fields = one([Row("t0", "running")], running, markers={"t0": marker()})
    assert fields == {"state": "done", "error": None, "nodes": "node1", "started": "2026-12-02T17:48:51",
                      "ended": "2026-12-02T17:48:52", "wall_s": 1.0, "cpu_s": 0.5, "output": "tiles/t0/rgb.tif",
                      "size": 1234, "checksum": "sha256:ab"}


@pytest.mark.parametrize("state, error", [("failed", "mpi_s2: error: B04.jp2: not found"),
                                          ("cancelled", "cancelled (SIGTERM)")])
def test_rule1_failed_and_cancelled_markers(state, error):
    fields = one([Row("t0")], markers={"t0": marker(state=state, error=error, checksum=None, size=None)})
    assert fields is not None and (fields["state"], fields["error"]) == (state, error)


@pytest.mark.parametrize("missing", ["checksum", "size"])
def test_rule1_done_without_checksum_or_size_is_not_verified(missing):
    fields = one([Row("t0")], markers={"t0": marker(**{missing: None})})
    assert fields is not None and fields["state"] == "failed"
    assert fields["error"].startswith("output not verified")


def test_rule1_marker_without_end_time_ends_now():
    fields = one([Row("t0")], markers={"t0": marker(ended=None)})
    assert fields is not None and fields["ended"] == NOW


@pytest.mark.parametrize("stale", [{"attempt": 0}, {"job_id": "3"}, {"array_task": 1}, {"attempt": None}])
def test_rule1_a_stale_marker_is_ignored(stale):
    queue = [QueueEntry("4", 0, "PENDING", "", None, "wrap")]
    assert one([Row("t0", "running", attempts=1)], queue, markers={"t0": marker(**stale)}) == {"state": "submitted"}
    assert one([Row("t0", "running")], [], [], markers={"t0": marker(**stale)})["error"] == rec.ERROR_NO_RECORD


def test_rule2_queue():
    pending = [QueueEntry("4", 0, "PENDING", "", None, "wrap")]
    running = [QueueEntry("4", 0, "RUNNING", "node2", "2026-12-02T17:49:25", "wrap")]
    assert one([Row("t0", "submitted")], pending) is None
    assert one([Row("t0", "submitted")], [QueueEntry("4", 0, "CONFIGURING", "node2", None, "wrap")]) is None
    assert one([Row("t0", "submitted")], running) == {"state": "running", "nodes": "node2",
                                                        "started": "2026-12-02T17:49:25"}
    assert one([Row("t0", "running")], running) is None
    assert one([Row("t0", "running")], [QueueEntry("4", 0, "COMPLETING", "node2", None, "wrap")]) is None
    assert one([Row("t0", "running")], pending) == {"state": "submitted"}  # requeued after a node failure


def test_rule2_matches_job_and_task():
    queue = parse_squeue(SQUEUE_R)  # array 7: tasks 2, 3 pending, 0, 1 running
    rows = [Row(f"t{k}", "submitted", job_id="7", array_task=k) for k in range(4)] + [Row("other", job_id="8")]
    changes = reconcile(rows, queue, [], {}, NOW)
    assert [c.tile for c in changes] == ["t0", "t1", "other"]
    assert changes[0].fields["state"] == changes[1].fields["state"] == "running"
    assert changes[2].fields["state"] == "failed"  # job 8 (task 0 of 7's own id) is no array 8


def test_rule2_a_finished_state_in_the_queue_counts_as_gone():
    queue = [QueueEntry("4", 0, "COMPLETED", "node1", None, "wrap")]  # squeue -t all shows it for MinJobAge
    assert one([Row("t0", "running")], queue, [])["error"] == rec.ERROR_NO_RECORD


@pytest.mark.parametrize("state, exit_code, new, error", [
    ("CANCELLED", 0, "cancelled", "cancelled (scancel or Slurm)"),
    ("NODE_FAIL", 1, "failed", "node failure: Slurm state NODE_FAIL"),
    ("BOOT_FAIL", 0, "failed", "node failure: Slurm state BOOT_FAIL"),
    ("TIMEOUT", 0, "failed", "time limit"),
    ("OUT_OF_MEMORY", 0, "failed", "out of memory"),
    ("FAILED", 3, "failed", "job failed, exit code 3, no marker"),
    ("COMPLETED", 0, "failed", "job ended without writing its marker"),
    ("PREEMPTED", 0, "failed", "the job left the queue without a marker (Slurm state PREEMPTED)"),
    ("RUNNING", 0, "failed", "the job left the queue without a marker (Slurm state RUNNING)"),
])
def test_rule3_accounting(state, exit_code, new, error):
    record = Accounting("4", 0, state, exit_code, 0, "node2", "2026-12-02T17:48:51", "2026-12-02T17:48:55", 4.0,
                        None)
    other = Accounting("4", 1, "COMPLETED", 0, 0, "node1", None, None, None, None)
    fields = one([Row("t0", "running")], [], [other, record])
    assert fields == {"state": new, "error": error, "nodes": "node2", "started": "2026-12-02T17:48:51",
                      "ended": "2026-12-02T17:48:55", "wall_s": 4.0, "cpu_s": None}


def test_rule3_signal_and_latest_record():
    first = Accounting("4", 0, "NODE_FAIL", 1, 0, "node2", None, "2026-12-02T17:50:00", None, None)
    last = Accounting("4", 0, "FAILED", 0, 9, "node1", None, None, None, None)
    fields = one([Row("t0")], [], [first, last])
    assert fields is not None and fields["error"] == "job failed, exit code 0, signal 9, no marker"
    assert fields["ended"] == NOW


@pytest.mark.parametrize("accounting", [None, [], [Accounting("4", 1, "COMPLETED", 0, 0, "n", None, None, 1, 1)]])
def test_rule3_no_record(accounting):
    fields = one([Row("t0", "running")], [], accounting)
    assert fields == {"state": "failed", "error": rec.ERROR_NO_RECORD, "ended": NOW}
    assert "Slurm keeps no record of it: node failure or cancel" in rec.ERROR_NO_RECORD


def test_only_active_rows_with_a_job_are_considered():
    rows = [Row("a", "done"), Row("b", "failed"), Row("c", "pending", job_id=None), Row("d", "submitted", job_id=None),
            Row("e", "cancelled")]
    assert reconcile(rows, [], None, {"a": marker("a")}, NOW) == []


def test_reconcile_on_the_real_completion_log():
    """Array 4 (0 done with its marker, 1 exit 3, 2 completed without marker), 11_1 scancel while running, array 16
    cancelled whole: task 0 while running, tasks 1-3 before they started (one record for them, no nodes)."""
    rows = ([Row(f"a{k}", "running", job_id="4", array_task=k) for k in range(3)]
            + [Row("c1", "running", job_id="11", array_task=1)]
            + [Row(f"p{k}", "submitted", job_id="16", array_task=k) for k in range(4)]
            + [Row("j2", "running", job_id="2", array_task=None), Row("lost", "running", job_id="99")])
    changes = reconcile(rows, [], parse_jobcomp(JOBCOMP), {"a0": marker("a0")}, NOW)
    got = {c.tile: (c.fields["state"], c.fields["error"]) for c in changes}
    assert got == {
        "a0": ("done", None), "a1": ("failed", "job failed, exit code 3, no marker"),
        "a2": ("failed", rec.ERROR_NO_MARKER), "c1": ("cancelled", rec.ERROR_CANCELLED),
        **{f"p{k}": ("cancelled", rec.ERROR_CANCELLED) for k in range(4)},
        "j2": ("failed", "job failed, exit code 1, no marker"), "lost": ("failed", rec.ERROR_NO_RECORD)}
    assert all(isinstance(c, Change) for c in changes)
    p1 = next(c for c in changes if c.tile == "p1")
    assert p1.fields["nodes"] is None and p1.fields["started"] == "2026-12-02T17:50:55"


def test_a_record_without_task_that_ran_is_not_the_rest_of_an_array():
    """sacct -c shows an array's last task under the array's id, with its node: not taken for the other tasks."""
    rows = [Row("t0", "running", job_id="4", array_task=0)]
    assert one(rows, [], parse_sacct(SACCT_C))["error"] == rec.ERROR_NO_RECORD


# ------------------------------------------------------------------------- commands without a cluster


def fake_slurm(tmp_path: Path, script: str) -> Slurm:
    """A Slurm whose runner is a shell script that sees the command as "$@"."""
    runner = tmp_path / "runner.sh"
    runner.write_text("#!/bin/sh\n" + script)
    runner.chmod(0o755)
    return Slurm(runner=[str(runner)])


def test_submit_array_command_line_and_errors(tmp_path):
    slurm = fake_slurm(tmp_path, 'printf "%s\\n" "$@" > "$(dirname "$0")/args"; echo "42;cluster"\n')
    job = slurm.submit_array("job.sbatch", ["--x", "1"], [0, 1, 2, 5], 2, "camp-1", ["-N", "1"], "logs/%A_%a.out")
    assert job == "42"
    assert (tmp_path / "args").read_text().split("\n")[:-1] == [
        "sbatch", "--parsable", "--array=0-2,5%2", "--job-name=camp-1", "--output=logs/%A_%a.out", "-N", "1",
        "job.sbatch", "--x", "1"]
    failing = fake_slurm(tmp_path, 'echo "sbatch: error: Batch job submission failed: Invalid job array '
                                   'specification" >&2; exit 1\n')
    with pytest.raises(SlurmError, match="^sbatch failed: Batch job submission failed: Invalid job array") as info:
        failing.submit_array("job.sbatch", [], [0], None, "camp-1", [], "log")
    assert isinstance(info.value, InputError) and "\n" not in str(info.value)
    with pytest.raises(SlurmError, match="no job id"):
        fake_slurm(tmp_path, "echo hello\n").submit_array("job.sbatch", [], [0], None, "camp", [], "log")


def test_queue_accounting_and_names_through_a_runner(tmp_path):
    (tmp_path / "jobcomp.txt").write_text(JOBCOMP)
    slurm = fake_slurm(tmp_path, f"""
case "$1" in
squeue) case "$*" in *" -n "*) printf '7|wrap\\n7|wrap\\n12|wrapped\\n' ;;
                     *" 404 "*) echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1 ;;
                     *) printf '%s' '{SQUEUE_R}' ;; esac ;;
sacct) echo "Slurm accounting storage is disabled" >&2; exit 1 ;;
scontrol) printf 'JobCompLoc              = {tmp_path}/jobcomp.txt\\nJobCompType             = jobcomp/filetxt\\n' ;;
*) exec "$@" ;;
esac
""")
    assert len(slurm.queue(["7"])) == 4 and slurm.queue(["5"]) == [] and slurm.queue([]) == []
    assert slurm.queue(["404"]) == []
    assert slurm.jobs_named("wrap") == ["7"] and slurm.jobs_named("none") == []
    records = slurm.accounting(["4", "16"])
    assert records is not None and {(r.job_id, r.array_task) for r in records} == {
        ("4", 0), ("4", 1), ("4", 2), ("16", None), ("16", 0)}
    assert slurm.missing() is None


def test_accounting_none_and_missing_slurm(tmp_path):
    nothing = fake_slurm(tmp_path, 'echo "$1: error: Unable to contact slurm controller" >&2; exit 1\n')
    assert nothing.accounting(["4"]) is None
    assert nothing.missing() == ("Slurm does not answer: squeue: Unable to contact slurm controller (use --local to "
                                 "run the tiles one after another under mpirun)")
    with pytest.raises(SlurmError, match="^scancel failed: Unable to contact"):
        nothing.cancel("4")
    gone = fake_slurm(tmp_path, 'echo "scancel: error: Kill job error on job id 4: Job/step already completing or '
                                'completed" >&2; exit 1\n')
    gone.cancel("4")
    assert Slurm(runner=[str(tmp_path / "absent")]).missing().startswith("no Slurm on this machine:")


def test_slurm_missing_without_sbatch(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert slurm_missing() == ("no Slurm on this machine: sbatch not found (use --local to run the tiles one after "
                               "another under mpirun)")


# ------------------------------------------------------------------------- a real cluster


def missing_requirement() -> tuple[str, str] | None:
    if os.geteuid() != 0:
        return "root for a local Slurm cluster (slurmd, network namespaces)", "run the tests as root (make test)"
    commands = ("slurmctld", "slurmd", "sbatch", "munged", "ip", "nsenter", "unshare")
    missing = [c for c in commands if not shutil.which(c, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")]
    if missing:
        return ", ".join(missing), "apt-get install slurm-wlm munge iproute2 (make test does)"
    return None


@pytest.fixture(scope="module")
def cluster_slurm(tmp_path_factory):
    missing = missing_requirement()
    if missing:
        require(False, *missing)
    state = tmp_path_factory.mktemp("campaign-slurm") / "cluster"
    env = {**clean_env(), "MPI_S2_CLUSTER_DIR": str(state)}
    up = subprocess.run([str(LOCAL_CLUSTER), "up", "--nodes", "1"], capture_output=True, text=True, timeout=120,
                        env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield Slurm(runner=[str(LOCAL_CLUSTER), "run"], env={"MPI_S2_CLUSTER_DIR": str(state)})
    finally:
        down = subprocess.run([str(LOCAL_CLUSTER), "down"], capture_output=True, text=True, timeout=120, env=env)
        assert down.returncode == 0, down.stdout + down.stderr


def wait_gone(slurm: Slurm, job: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while slurm.queue([job]):
        assert time.monotonic() < deadline, f"job {job} still queued after {timeout} s"
        time.sleep(0.5)


def test_array_on_a_real_cluster(cluster_slurm, tmp_path):
    slurm = cluster_slurm
    assert slurm.missing() is None
    script = tmp_path / "task.sh"
    script.write_text('#!/bin/sh\nsleep 2\n[ "$SLURM_ARRAY_TASK_ID" = 1 ] && exit 3\nexit 0\n')
    name = f"mpi_s2-test-{os.getpid()}"
    job = slurm.submit_array(str(script), [], [0, 1, 2], 1, name, [], str(tmp_path / "%A_%a.out"))
    queued = slurm.queue([job])
    assert sorted(e.array_task for e in queued) == [0, 1, 2] and {e.name for e in queued} == {name}
    assert sum(e.state == "RUNNING" for e in queued) <= 1  # the throttle
    assert slurm.jobs_named(name) == [job]
    rows = [Row(f"t{k}", "submitted", job_id=job, array_task=k) for k in range(3)]
    wait_gone(slurm, job)
    assert slurm.jobs_named(name) == []
    records = slurm.accounting([job])
    assert records is not None
    by_task = {r.array_task: r for r in records}
    assert sorted(by_task) == [0, 1, 2]
    assert [(by_task[k].state, by_task[k].exit_code, by_task[k].nodes) for k in range(3)] == [
        ("COMPLETED", 0, "node1"), ("FAILED", 3, "node1"), ("COMPLETED", 0, "node1")]
    assert all((r.elapsed_s or 0) >= 1 for r in records)
    assert sorted((tmp_path / f"{job}_{k}.out").exists() for k in range(3)) == [True] * 3
    changes = reconcile(rows, [], records, {"t0": marker("t0", job_id=job, array_task=0)}, NOW)
    assert [(c.tile, c.fields["state"], c.fields["error"]) for c in changes] == [
        ("t0", "done", None), ("t1", "failed", "job failed, exit code 3, no marker"),
        ("t2", "failed", rec.ERROR_NO_MARKER)]


def test_cancel_an_array_on_a_real_cluster(cluster_slurm, tmp_path):
    slurm = cluster_slurm
    with pytest.raises(SlurmError, match=r"^sbatch failed: This does not look like a batch script\. The first line"):
        slurm.submit_array("/bin/sleep", ["30"], [0], None, "mpi_s2-test-cancel", [], str(tmp_path / "x.out"))
    script = tmp_path / "sleep.sh"
    script.write_text("#!/bin/sh\nexec sleep \"$1\"\n")
    job = slurm.submit_array(str(script), ["30"], [0, 1], 1, "mpi_s2-test-cancel", [], str(tmp_path / "%A_%a.out"))
    deadline = time.monotonic() + 30
    while not any(e.state == "RUNNING" for e in slurm.queue([job])):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    slurm.cancel(job)
    wait_gone(slurm, job)
    slurm.cancel(job)  # already gone: no error
    rows = [Row(f"t{k}", "running" if k == 0 else "submitted", job_id=job, array_task=k) for k in range(2)]
    changes = reconcile(rows, slurm.queue([job]), slurm.accounting([job]), {}, NOW)
    assert [(c.tile, c.fields["state"], c.fields["nodes"]) for c in changes] == [
        ("t0", "cancelled", "node1"), ("t1", "cancelled", None)]
