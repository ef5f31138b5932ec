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
