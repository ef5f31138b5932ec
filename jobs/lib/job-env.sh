# Sourced by the job scripts in jobs/ (not run by itself): the project's interpreter and the environment every
# mpi_s2 step needs, whichever cluster it runs on. Expects MPI_S2_HOME (the checkout) to be set.
#
# - The project's own interpreter (.venv/bin/python, or MPI_S2_PYTHON): jobs inherit the submitting shell's PATH,
#   whose first python may not see the MPI stack.
# - srun since Slurm 22.05 no longer inherits --cpus-per-task from the allocation: SRUN_CPUS_PER_TASK.
# - GDAL decoder threads per rank = the task's CPUs (--cpus-per-task), when the job asked for several.
# - Debian's h5py loads its MPI build only under mpirun, unless H5PY_ALWAYS_USE_MPI=1 (the HDF5 backend).
# - srun's MPI plugin: pmix, which Debian's Open MPI speaks (pmi2 and none start every task as a singleton);
#   MPI_S2_SRUN_MPI overrides it for an MPI built otherwise (mpi_s2 stops with a clear error if srun's tasks do
#   not form one MPI world: it compares comm.size with SLURM_STEP_NUM_TASKS).

MPI_S2_PYTHON=${MPI_S2_PYTHON:-$MPI_S2_HOME/.venv/bin/python}
if [ ! -x "$MPI_S2_PYTHON" ]; then
  echo "mpi_s2 job: error: $MPI_S2_PYTHON not found: run 'make venv' in $MPI_S2_HOME (or set MPI_S2_PYTHON)" >&2
  exit 2
fi
export SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-1}
if [ "${SLURM_CPUS_PER_TASK:-1}" -gt 1 ] && [ -z "${GDAL_NUM_THREADS:-}" ]; then
  export GDAL_NUM_THREADS=$SLURM_CPUS_PER_TASK
fi
export H5PY_ALWAYS_USE_MPI=1
MPI_S2_SRUN_MPI=${MPI_S2_SRUN_MPI:-pmix}
export PYTHONUNBUFFERED=1

# mpirun's root guard (a container or a test cluster running jobs as root)
MPIRUN_ROOT=()
[ "$(id -u)" != 0 ] || MPIRUN_ROOT=(--allow-run-as-root)

job_banner() {  # one line in the job log: what ran where
  echo "mpi_s2 job ${SLURM_JOB_ID:-?}: ${SLURM_NTASKS:-?} task(s) on ${SLURM_JOB_NUM_NODES:-?} node(s)" \
    "(${SLURM_JOB_NODELIST:-?}), ${SLURM_CPUS_PER_TASK:-1} CPU(s) per task, $MPI_S2_PYTHON"
}

# --- stop, requeue and resume -------------------------------------------------------------------------------
# The compose scripts ask Slurm for a warning before their time limit (#SBATCH --signal=B:TERM@120: SIGTERM to
# the batch shell alone, 120 s before the limit) and to be requeueable (#SBATCH --requeue). run_step runs the
# launcher (srun or mpirun) in the background, passes TERM, INT and HUP on to it and waits for it: mpi_s2's
# writer then syncs and journals every window it has placed and keeps the partial run. If the job itself was
# not cancelled (a warning before the time limit, not scancel), the job then requeues itself; the next attempt
# runs the same command, and --resume=auto (added unless the arguments choose --resume themselves) finishes the
# partial run. MPI_S2_REQUEUE=0 turns the requeue off (the job then ends, with the partial run kept).

MPI_S2_STEP_SIGNAL=
_mpi_s2_forward() {  # the batch shell got signal $1: pass it on to the ranks
  MPI_S2_STEP_SIGNAL=$1
  echo "mpi_s2 job ${SLURM_JOB_ID:-?}: SIG$1 received: passed on to the ranks" >&2
  # srun answers SIGTERM by killing its step (SIGKILL, no time to keep anything): Slurm signals the step's
  # tasks instead (scancel --signal without --batch: every step, not the batch shell). mpirun passes it on itself.
  if [ "$MPI_S2_STEP_LAUNCHER" = srun ] && scancel --signal="$1" "$SLURM_JOB_ID" 2>/dev/null; then
    return 0
  fi
  kill -s "$1" "$MPI_S2_STEP_PID" 2>/dev/null || true
}

resume_auto() {  # prints --resume=auto unless the arguments already have a --resume
  local arg
  for arg in "$@"; do
    case "$arg" in --resume|--resume=*) return 0 ;; esac
  done
  echo "--resume=auto"
}

_mpi_s2_may_requeue() {  # the job is still running (not cancelled) and requeueable
  [ "${MPI_S2_REQUEUE:-1}" != 0 ] && [ -n "${SLURM_JOB_ID:-}" ] || return 1
  local info
  info=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null) || return 1
  [[ "$info" =~ JobState=RUNNING ]] && [[ "$info" =~ Requeue=1 ]]
}

run_step() {  # run_step LAUNCHER ARGS...: the launcher in the background, signals passed on; exits with its code
  MPI_S2_STEP_LAUNCHER=$(basename "$1")
  "$@" &
  MPI_S2_STEP_PID=$!
  trap '_mpi_s2_forward TERM' TERM
  trap '_mpi_s2_forward INT' INT
  trap '_mpi_s2_forward HUP' HUP
  local rc=0
  wait "$MPI_S2_STEP_PID" || rc=$?
  while [ -n "$MPI_S2_STEP_SIGNAL" ] && kill -0 "$MPI_S2_STEP_PID" 2>/dev/null; do
    rc=0
    wait "$MPI_S2_STEP_PID" || rc=$?  # a trapped signal ends a wait early: wait again for the launcher's end
  done
  trap - TERM INT HUP
  if [ "$MPI_S2_STEP_SIGNAL" = TERM ] && _mpi_s2_may_requeue; then
    echo "mpi_s2 job $SLURM_JOB_ID: stopped before its time limit (attempt ${SLURM_RESTART_COUNT:-0}):" \
      "requeued; the next attempt resumes the partial run (--resume=auto)" >&2
    scontrol requeue "$SLURM_JOB_ID" || true
  fi
  exit "$rc"
}
