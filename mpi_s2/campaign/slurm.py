"""Thin wrappers around the Slurm commands a campaign needs: sbatch an array, read squeue and sacct, scancel.

Every command runs through :class:`Slurm`, which holds an optional ``runner`` prefix put before each command (the
tests pass ``[tests/cluster/local-cluster.sh, "run"]`` to reach their throw-away cluster). The parsing lives in pure
functions (:func:`array_spec`, :func:`parse_squeue`, :func:`parse_sacct`, :func:`parse_jobcomp`) that are tested on
real Slurm 22.05 output without Slurm.

Without accounting (``AccountingStorageType=accounting_storage/none``) plain ``sacct`` fails ("Slurm accounting
storage is disabled"); :meth:`Slurm.accounting` then reads the job completion log (``JobCompType=jobcomp/filetxt``)
itself, since ``sacct -c`` of Slurm 22.05 shows each array task under its own job id only (it does not know the
log's ArrayJobId/ArrayTaskId fields), and answers None when Slurm keeps no record that can be read, so that the
caller knows why a task that left the queue is not found.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from mpi_s2.errors import InputError

#: squeue's output: one line per job or array task (-r); the name last, since it may hold the separator.
SQUEUE_FORMAT = "%i|%A|%F|%K|%T|%N|%S|%j"
#: sacct's fields, in the order :func:`parse_sacct` reads them (sacct -c gives no TotalCPU: it comes back empty).
SACCT_FIELDS = ("JobID", "State", "ExitCode", "NodeList", "Start", "End", "Elapsed", "TotalCPU")
#: sacct -c (the job completion log) knows fewer fields (no TotalCPU).
SACCT_COMPLETION_FIELDS = SACCT_FIELDS[:-1]
#: How long a Slurm client command may take before it counts as not answering.
COMMAND_TIMEOUT_S = 60.0
#: How long :func:`slurm_missing` waits for squeue.
PROBE_TIMEOUT_S = 20.0
LOCAL_HINT = "use --local to run the tiles one after another under mpirun"
# Values Slurm prints for "no value".
_NONE_VALUES = {"", "N/A", "n/a", "None", "none", "Unknown", "(null)", "None assigned"}


class SlurmError(InputError):
    """A Slurm command failed: one line naming the command and Slurm's message."""


@dataclass(frozen=True)
class QueueEntry:
    """One job, or one task of an array, in squeue."""

    job_id: str  # the array's job id (the job's own for a job that is no array)
    array_task: int | None
    state: str  # PENDING, RUNNING, COMPLETING...
    nodes: str  # "" when none allocated yet
    start: str | None  # actual start when running, expected start when pending (None when unknown)
    name: str


@dataclass(frozen=True)
class Accounting:
    """Slurm's record of one job or array task (sacct, or sacct -c from the job completion log)."""

    job_id: str  # the array's job id
    array_task: int | None
    state: str  # first word: "CANCELLED by 0" -> "CANCELLED"
    exit_code: int
    signal: int
    nodes: str
    start: str | None
    end: str | None
    elapsed_s: float | None
    cpu_s: float | None


# ------------------------------------------------------------------------------------------ pure functions


def array_spec(tasks: Sequence[int], throttle: int | None) -> str:
    """sbatch's --array value for these task ids: ranges joined, e.g. [0,1,2,5,7,8], 2 -> "0-2,5,7-8%2"."""
    ids = sorted(set(tasks))
    if not ids:
        raise ValueError("an array needs at least one task")
    if ids[0] < 0:
        raise ValueError(f"array task ids cannot be negative: {ids[0]}")
    if throttle is not None and throttle < 1:
        raise ValueError(f"the array throttle must be at least 1: {throttle}")
    parts: list[str] = []
    first = last = ids[0]
    for task in ids[1:] + [-2]:
        if task == last + 1:
            last = task
            continue
        parts.append(str(first) if first == last else f"{first}-{last}")
        first = last = task
    return ",".join(parts) + (f"%{throttle}" if throttle is not None else "")


def expand_tasks(text: str) -> list[int]:
    """Task ids of an array expression as Slurm prints it: "2-5%2", "[1,3-4]", "0-10:2" -> a sorted list."""
    text = text.strip().strip("[]").split("%")[0]
    tasks: set[int] = set()
    for part in filter(None, text.split(",")):
        step = 1
        if ":" in part:
            part, step_text = part.split(":", 1)
            step = int(step_text)
        first, _, last = part.partition("-")
        tasks.update(range(int(first), int(last or first) + 1, step))
    return sorted(tasks)


def _split_job_id(text: str) -> tuple[str, list[int | None]] | None:
    """("123", [None]) for "123", ("123", [4]) for "123_4", ("123", [2..5]) for "123_[2-5%2]"; None for a step
    ("123.batch", "123_4.0") or anything else."""
    match = re.fullmatch(r"(\d+)(?:_(\d+|\[[0-9,\-:%]+\]))?(\+\d+)?", text.strip())
    if not match:
        return None
    job, task = match.group(1), match.group(2)
    if task is None:
        return job, [None]
    if task.isdigit():
        return job, [int(task)]
    return job, list(expand_tasks(task))


def _value(text: str) -> str | None:
    text = text.strip()
    return None if text in _NONE_VALUES else text


def parse_duration(text: str) -> float | None:
    """Seconds of a Slurm duration: "[D-]HH:MM:SS", "MM:SS.mmm", "SS" (None for none)."""
    text = (_value(text) or "").strip()
    if not text or text in {"INVALID", "UNLIMITED"}:
        return None
    days = 0
    if "-" in text:
        day_text, text = text.split("-", 1)
        days = int(day_text)
    seconds = 0.0
    for part in text.split(":"):
        seconds = seconds * 60 + float(part)
    return days * 86400 + seconds


def parse_squeue(text: str) -> list[QueueEntry]:
    """Entries of ``squeue -h -r -o SQUEUE_FORMAT`` output; a pending array still grouped ("123_[2-5%2]") gives one
    PENDING entry per task."""
    entries: list[QueueEntry] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("|", 7)
        if len(fields) < 8:
            raise ValueError(f"squeue line has {len(fields)} fields, expected 8: {line!r}")
        shown, _own_id, array_id, task_text, state, nodes, start, name = fields
        split = _split_job_id(shown)
        if split is None:
            raise ValueError(f"squeue line with an unexpected job id {shown!r}: {line!r}")
        job_id, tasks = split
        if _value(array_id) and array_id.strip().isdigit():
            job_id = array_id.strip()
        if tasks == [None] and _value(task_text) and re.fullmatch(r"[\d\[\],\-:%]+", task_text.strip()):
            tasks = list(expand_tasks(task_text))
        for task in tasks:
            entries.append(QueueEntry(job_id, task, state.strip().split()[0] if state.strip() else "",
                                      _value(nodes) or "", _value(start), name))
    return entries


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def parse_sacct(text: str) -> list[Accounting]:
    """Records of ``sacct -n -P -o SACCT_FIELDS`` (or ``sacct -c`` with SACCT_COMPLETION_FIELDS) output; steps
    ("123.batch") are left out, and a pending rest of an array ("123_[5-7]") gives one record per task."""
    records: list[Accounting] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("|") + [""] * len(SACCT_FIELDS)
        job_text, state, exit_text, nodes, start, end, elapsed, cpu = fields[:len(SACCT_FIELDS)]
        split = _split_job_id(job_text)
        if split is None:
            continue
        job_id, tasks = split
        code, _, sig = exit_text.strip().partition(":")
        for task in tasks:
            records.append(Accounting(
                job_id=job_id, array_task=task, state=(state.split() or [""])[0], exit_code=_int(code),
                signal=_int(sig), nodes=_value(nodes) or "", start=_value(start), end=_value(end),
                elapsed_s=parse_duration(elapsed), cpu_s=parse_duration(cpu)))
    return records


_JOBCOMP_FIELD = re.compile(r"(\w+)=(.*?)(?= \w+=|\s*$)")


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except ValueError:
        return None


def parse_jobcomp(text: str) -> list[Accounting]:
    """Records of a jobcomp/filetxt log ("JobId=5 ... JobState=COMPLETED ... ArrayJobId=4 ArrayTaskId=0 ...").

    An array task that ran has ArrayJobId and ArrayTaskId (the last task runs under the array's own job id). The
    tasks of an array cancelled before they started share one record without them, under the array's job id: it
    gives array_task None here (:func:`mpi_s2.campaign.reconcile.reconcile` applies it to the tasks without their
    own record)."""
    records: list[Accounting] = []
    for line in text.splitlines():
        fields = dict(_JOBCOMP_FIELD.findall(line.strip()))
        job_id = fields.get("ArrayJobId") or fields.get("JobId", "")
        if not job_id.isdigit():
            continue
        task_text = fields.get("ArrayTaskId", "")
        tasks: list[int | None] = [None]
        if task_text.isdigit():
            tasks = [int(task_text)] if int(task_text) < 4294967294 else [None]  # NO_VAL: no task
        elif task_text and re.fullmatch(r"[\d\[\],\-:%]+", task_text):
            tasks = list(expand_tasks(task_text))
        code, _, sig = fields.get("ExitCode", "").partition(":")
        start, end = _value(fields.get("StartTime", "")), _value(fields.get("EndTime", ""))
        for task in tasks:
            records.append(Accounting(
                job_id=job_id, array_task=task, state=(fields.get("JobState", "").split() or [""])[0],
                exit_code=_int(code), signal=_int(sig), nodes=_value(fields.get("NodeList", "")) or "",
                start=start, end=end, elapsed_s=_seconds_between(start, end), cpu_s=None))
    return records


def _message(proc: subprocess.CompletedProcess) -> str:
    """Slurm's message in one line: its error lines (else its last line) less their "sbatch: error: " prefixes,
    joined ("This does not look like a batch script. The first line must start with #! ...")."""
    lines = [line.strip() for line in (proc.stderr or proc.stdout or "").splitlines() if line.strip()]
    if not lines:
        return f"exit status {proc.returncode}, no message"
    prefix = re.compile(r"^[\w.-]+: (error|fatal): ")
    errors = [prefix.sub("", line) for line in lines if prefix.match(line)] or lines[-1:]
    text = " ".join(" ".join(errors).split())
    return text if len(text) <= 400 else text[:397] + "..."


# ------------------------------------------------------------------------------------------ the commands


class Slurm:
    """The Slurm client commands, each run behind ``runner`` (a prefix such as ``[local-cluster.sh, "run"]``) with
    ``env`` added to this process's environment."""

    def __init__(self, runner: Sequence[str] | None = None, env: Mapping[str, str] | None = None,
                 timeout: float = COMMAND_TIMEOUT_S):
        self.runner = list(runner or [])
        self.env = dict(env or {})
        self.timeout = timeout

    def run(self, *args: str, env: Mapping[str, str] | None = None,
            timeout: float | None = None) -> subprocess.CompletedProcess:
        """Run one Slurm command; SlurmError when it cannot start or takes too long (its exit status is returned)."""
        command = [*self.runner, *args]
        extra = {**self.env, **(env or {})}
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=timeout or self.timeout,
                                  env={**os.environ, **extra} if extra else None, stdin=subprocess.DEVNULL)
        except FileNotFoundError as exc:
            raise SlurmError(f"{args[0]}: not found ({exc.filename})") from exc
        except subprocess.TimeoutExpired as exc:
            raise SlurmError(f"{args[0]}: no answer within {exc.timeout:g} s") from exc

    def check(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
        proc = self.run(*args, env=env)
        if proc.returncode != 0:
            raise SlurmError(f"{args[0]} failed: {_message(proc)}")
        return proc

    def missing(self) -> str | None:
        """None when Slurm answers here; else one line saying what is missing."""
        if not self.runner:
            for command in ("sbatch", "squeue"):
                if not shutil.which(command):
                    return f"no Slurm on this machine: {command} not found ({LOCAL_HINT})"
        try:
            proc = self.run("squeue", "-h", "-o", "%i", timeout=PROBE_TIMEOUT_S)
        except SlurmError as exc:
            return f"no Slurm on this machine: {exc} ({LOCAL_HINT})"
        if proc.returncode != 0:
            return f"Slurm does not answer: squeue: {_message(proc)} ({LOCAL_HINT})"
        return None

    def submit_array(self, script: str, script_args: Sequence[str], tasks: Sequence[int], throttle: int | None,
                     job_name: str, sbatch_options: Sequence[str], log: str,
                     env: Mapping[str, str] | None = None) -> str:
        """sbatch SCRIPT ARGS as an array of these tasks (at most ``throttle`` at a time), its output in LOG (which
        may hold %A, the array's job id, and %a, the task id); return the array's job id."""
        proc = self.check("sbatch", "--parsable", f"--array={array_spec(tasks, throttle)}", f"--job-name={job_name}",
                          f"--output={log}", *sbatch_options, script, *script_args, env=env)
        first = (proc.stdout.strip().splitlines() or [""])[-1]
        job_id = first.split(";")[0].strip()
        if not job_id.isdigit():
            raise SlurmError(f"sbatch printed no job id: {proc.stdout.strip()!r}")
        return job_id

    def queue(self, job_ids: Sequence[str]) -> list[QueueEntry]:
        """The queued, running and completing tasks of these jobs (none once they all left the queue)."""
        if not job_ids:
            return []
        wanted = {str(j).split("_")[0] for j in job_ids}
        proc = self.run("squeue", "-h", "-r", "-j", ",".join(sorted(wanted)), "-o", SQUEUE_FORMAT)
        if proc.returncode != 0:
            if "Invalid job id specified" in (proc.stderr or ""):
                return []  # squeue -j fails so once every job named has left the queue
            raise SlurmError(f"squeue failed: {_message(proc)}")
        return [entry for entry in parse_squeue(proc.stdout) if entry.job_id in wanted]

    def accounting(self, job_ids: Sequence[str]) -> list[Accounting] | None:
        """Slurm's records of these jobs (array job ids), None when it keeps none that can be read here.

        In order: sacct (with accounting); the job completion log read directly when it is a text file
        (jobcomp/filetxt: its records name the array task, which sacct -c of Slurm 22.05 cannot show: it prints
        each task under its own job id); sacct -c (other jobcomp plugins: right for jobs that are no arrays)."""
        if not job_ids:
            return []
        ids = sorted({str(j).split("_")[0] for j in job_ids})
        try:
            proc = self.run("sacct", "-n", "-P", "-X", "-j", ",".join(ids), "-o", ",".join(SACCT_FIELDS))
            if proc.returncode == 0:
                return parse_sacct(proc.stdout)
            records = self.completion_log(ids)
            if records is not None:
                return records
            proc = self.run("sacct", "-c", "-n", "-P", "-j", ",".join(ids), "-o", ",".join(SACCT_COMPLETION_FIELDS))
        except SlurmError:
            return None
        return parse_sacct(proc.stdout) if proc.returncode == 0 else None

    def config(self) -> dict[str, str]:
        """scontrol show config as a dict (empty when scontrol fails)."""
        proc = self.run("scontrol", "show", "config")
        values: dict[str, str] = {}
        if proc.returncode == 0:
            for line in proc.stdout.splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    values[key.strip()] = value.strip()
        return values

    def completion_log(self, job_ids: Sequence[str]) -> list[Accounting] | None:
        """The records of these jobs in the jobcomp/filetxt log, read behind the runner (where sacct -c would read
        it); None when Slurm keeps no such log or it cannot be read."""
        config = self.config()
        path = config.get("JobCompLoc", "")
        if config.get("JobCompType") != "jobcomp/filetxt" or not path.startswith("/"):
            return None
        proc = self.run("cat", "--", path)
        if proc.returncode != 0:
            return None
        wanted = set(job_ids)
        return [record for record in parse_jobcomp(proc.stdout) if record.job_id in wanted]

    def jobs_named(self, name: str) -> list[str]:
        """The job ids of queued or running jobs called exactly ``name``, in squeue's order."""
        proc = self.check("squeue", "-h", "-n", name, "-o", "%F|%j")
        found: list[str] = []
        for line in proc.stdout.splitlines():
            job_id, _, job_name = line.partition("|")
            if job_name == name and job_id.strip() not in found:
                found.append(job_id.strip())
        return found

    def cancel(self, job_id: str) -> None:
        """scancel a job, an array or one task ("123_4"); a job that already ended is no error."""
        proc = self.run("scancel", str(job_id))
        if proc.returncode != 0 and not re.search(r"already completing or completed|Invalid job id",
                                                  proc.stderr or ""):
            raise SlurmError(f"scancel failed: {_message(proc)}")


def slurm_missing(runner: Sequence[str] | None = None) -> str | None:
    """None when sbatch and squeue are on PATH and ``squeue -h -o %i`` answers within 20 s; else one line saying
    what is missing."""
    return Slurm(runner).missing()


def submit_array(script: str, script_args: list[str], tasks: list[int], throttle: int | None, job_name: str,
                 sbatch_options: list[str], log: str, env: dict | None = None, runner: list[str] | None = None) -> str:
    """:meth:`Slurm.submit_array` behind ``runner``."""
    return Slurm(runner).submit_array(script, script_args, tasks, throttle, job_name, sbatch_options, log, env=env)
