"""The campaign commands' reconciliation against a stand-in for Slurm (no cluster): what the queue, the markers
and Slurm's records say becomes the tile's state."""

from __future__ import annotations

from mpi_s2.campaign.commands import Campaign, refresh
from mpi_s2.campaign.layout import CampaignDir, write_json
from mpi_s2.campaign.slurm import Accounting, QueueEntry
from mpi_s2.campaign.store import open_store


class StandInSlurm:
    """Answers as Slurm would: a fixed queue and fixed records; counts the accounting queries."""

    def __init__(self, queue: list[QueueEntry] = (), records: list[Accounting] = ()):
        self._queue, self._records, self.asked = list(queue), list(records), []

    def queue(self, job_ids):
        return [e for e in self._queue if e.job_id in job_ids]

    def accounting(self, job_ids):
        self.asked.append(list(job_ids))
        return [r for r in self._records if r.job_id in job_ids]

    def jobs_named(self, name):
        return []


def record(job_id: str, task: int, state: str) -> Accounting:
    return Accounting(job_id=job_id, array_task=task, state=state, exit_code=0, signal=0, nodes="node2",
                      start="2026-12-02T10:00:00", end="2026-12-02T10:01:00", elapsed_s=60.0, cpu_s=None)


def campaign_with(tmp_path, slurm: StandInSlurm) -> Campaign:
    store = open_store(str(tmp_path))
    store.create({"id": "c1"}, [("T1", 3), ("T2", 3)])
    return Campaign(CampaignDir(str(tmp_path)), {"id": "c1"}, store, slurm)  # type: ignore[arg-type]


def test_a_retried_task_gone_without_its_marker_is_judged_by_slurms_record_not_by_the_old_marker(tmp_path):
    """Attempt 2 of T1 vanished (its node lost) while attempt 1's marker is still there: Slurm's NODE_FAIL decides."""
    slurm = StandInSlurm(records=[record("20", 0, "NODE_FAIL")])
    campaign = campaign_with(tmp_path, slurm)
    campaign.store.update("T1", state="submitted", job_id="20", array_task=0, attempts=2, submit_token="t2")
    write_json(campaign.directory.marker("T1"), {"tile": "T1", "attempt": 1, "token": "t1", "job_id": "10",
                                                 "array_task": 0, "state": "failed", "error": "attempt 1's error"})
    refresh(campaign)
    row = campaign.store.tiles(names=["T1"])[0]
    assert row.state == "failed" and "NODE_FAIL" in (row.error or ""), row
    assert slurm.asked == [["20"]]


def test_a_task_in_the_queue_is_running_and_its_marker_when_it_ends_makes_it_done(tmp_path):
    output = tmp_path / "outputs" / "T2.tif"
    output.parent.mkdir()
    output.write_bytes(b"x" * 10)
    running = QueueEntry(job_id="30", array_task=1, state="RUNNING", nodes="node1", start="2026-12-02T10:00:00",
                         name="mpi_s2-c1-t3")
    campaign = campaign_with(tmp_path, StandInSlurm(queue=[running]))
    campaign.store.update("T2", state="submitted", job_id="30", array_task=1, attempts=1, submit_token="t3")
    refresh(campaign)
    row = campaign.store.tiles(names=["T2"])[0]
    assert (row.state, row.nodes) == ("running", "node1")
    campaign.slurm = StandInSlurm()  # the task has left the queue, its marker written
    write_json(campaign.directory.marker("T2"), {
        "tile": "T2", "attempt": 1, "token": "t3", "job_id": "30", "array_task": 1, "state": "done", "error": None,
        "output": str(output), "size": 10, "checksum": "sha256:" + "0" * 64, "wall_s": 5.0})
    refresh(campaign)
    row = campaign.store.tiles(names=["T2"])[0]
    assert (row.state, row.size, row.wall_s) == ("done", 10, 5.0)
