#!/usr/bin/env bash
# make test-fresh: the README's set-up commands on a fresh Debian 12, as a new user would run them.
#
# Builds once (then reuses) a minimal Debian 12 root with debootstrap (minbase, plus make and git), and for each
# run lays a throw-away copy of it (overlayfs) in which it:
#   1. as a non-root user with no packages: `make demo` must stop with one line naming the apt-get command;
#      root runs exactly that command, and the user's `make demo` then passes;
#   2. as root, in another fresh copy, on a clean clone of HEAD with ../shared beside it: `make demo`, then
#      `make test`, told where the real data lies (MPI_S2_REAL_DATA). Nothing may skip there: a skip fails the
#      run (tests/conftest.py), MPI_S2_ALLOW_SKIPS is never set, and every pytest session must say "0 skipped".
# Each step prints its exit code and duration; a failure shows the tail of its log and fails the target.
# Mounts are always removed, on success, failure or interruption; those of an earlier run killed before its own
# cleanup are removed before the first step. The Debian mirror is the one this machine's
# own apt sources name. Only downloads are cached between runs (.deb archives, pip's cache): every package is
# installed afresh in every run.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$(cd "$REPO/.." && pwd)/shared}
FRESH_DIR=${FRESH_DIR:-/var/tmp/mpi_s2-fresh}
SUITE=bookworm
BASE=$FRESH_DIR/base-$SUITE
RUN_DIR=$FRESH_DIR/run
LOGS=$FRESH_DIR/logs
TAIL_LINES=${TAIL_LINES:-40}
# The fresh root proves set-up: `make test` there runs lint and the in-process MPI tests in full, and of the unit
# and process tests a representative part that needs every piece a fresh machine must install (GDAL with JPEG
# 2000, Open MPI and mpi4py, parallel h5py, tifffile, tqdm, matplotlib, hypothesis, Slurm and munge, the real
# data). Of the Slurm tests it runs the jobs that prove slurmd, munge, srun and mpirun inside a job (compose, a
# failing compose, the scaling jobs, srun's exit codes), not the stop/requeue/time-limit ones (about 6 minutes,
# the real time limit alone 4.5), which need nothing more installed; and the campaign's status database on SQLite
# and on a PostgreSQL server it starts (Debian's postgresql and python3-psycopg). The host's `make test` (CI's
# first step) runs the whole suite; FRESH_TESTS=tests runs it all here too.
FRESH_TESTS=${FRESH_TESTS:-"tests/test_layout.py tests/test_windows.py tests/test_cli_and_config.py \
tests/test_compose_processes.py tests/test_output_stage.py tests/test_products.py tests/test_metadata.py \
tests/test_hdf5_backend.py tests/test_progress.py tests/test_scaling.py tests/test_slurm_jobs.py::test_compose_job \
tests/test_slurm_jobs.py::test_failing_compose_job_ends_failed_with_the_error_in_its_log \
tests/test_slurm_jobs.py::test_scaling_jobs tests/test_slurm_jobs.py::test_srun_exit_codes \
tests/test_campaign_store.py"}

say() { printf 'test-fresh: %s\n' "$*"; }
die() { printf 'test-fresh: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot and mounts); run: sudo make test-fresh"
[ -d "$SHARED" ] || die "$SHARED: no such directory (the project's shared/ data must lie beside the checkout)"
git -C "$REPO" rev-parse --verify -q HEAD >/dev/null || die "$REPO: not a git checkout with a commit"

# --- the mirrors this machine's apt sources name ------------------------------------------------------------
mirror_for() {  # first repository URI of release $1 in the machine's own apt sources
  apt-get indextargets --no-release-info --format '$(RELEASE) $(REPO_URI)' 2>/dev/null \
    | awk -v rel="$1" '$1 == rel { print $2; exit }'
}
MIRROR=$(mirror_for "$SUITE")
SECURITY=$(mirror_for "$SUITE-security")
[ -n "$MIRROR" ] || die "no '$SUITE' repository in this machine's apt sources (apt-get indextargets)"

# --- mounts: tracked, and always undone ---------------------------------------------------------------------
MOUNTS=()
mnt() {  # mnt TARGET MOUNT-ARGS...
  local target=$1; shift
  mkdir -p "$target"
  mount "$@" "$target"
  MOUNTS+=("$target")
}
unmount_all() {
  local i
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    umount -R "${MOUNTS[i]}" 2>/dev/null || umount -lR "${MOUNTS[i]}" 2>/dev/null || true
  done
  MOUNTS=()
}
# Everything under RUN_DIR goes: processes left in the root (an MPI daemon, a munged) that would keep its
# mounts busy, then every mount below it (deepest first), including those of an earlier run that was killed
# before its own cleanup could run, then the files.
clear_run_dir() {
  local p m
  if [ -d "$RUN_DIR/root" ]; then
    for p in /proc/[0-9]*; do
      case "$(readlink "$p/root" 2>/dev/null)" in
        "$RUN_DIR"/*) kill -KILL "${p#/proc/}" 2>/dev/null || true ;;
      esac
    done
  fi
  unmount_all
  awk -v dir="$RUN_DIR/" 'index($5, dir) == 1 { print $5 }' /proc/self/mountinfo | sort -r \
    | while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  if awk -v dir="$RUN_DIR/" 'index($5, dir) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
    die "$RUN_DIR: mounts remain that could not be removed (see findmnt -R $RUN_DIR/root)"
  fi
  rm -rf "$RUN_DIR"
}
cleanup() {
  local rc=$?
  clear_run_dir
  exit $rc
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM HUP

# --- the base root, built once ------------------------------------------------------------------------------
build_base() {
  if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap"
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
  fi
  say "building the base root $BASE from $MIRROR (once)"
  rm -rf "$BASE.tmp"
  mkdir -p "$FRESH_DIR"
  local t0=$SECONDS
  # ca-certificates only so that this machine's extra CA (its egress proxy) can be added for pip below
  debootstrap --variant=minbase --include=make,git,ca-certificates "$SUITE" "$BASE.tmp" "$MIRROR" \
    >"$FRESH_DIR/debootstrap.log" 2>&1 || { tail -n "$TAIL_LINES" "$FRESH_DIR/debootstrap.log"; die "debootstrap failed"; }
  {
    echo "deb $MIRROR $SUITE main"
    echo "deb $MIRROR $SUITE-updates main"
    [ -n "$SECURITY" ] && echo "deb $SECURITY $SUITE-security main"
  } >"$BASE.tmp/etc/apt/sources.list"
  rm -rf "$BASE.tmp/var/cache/apt/archives"/*.deb
  mv "$BASE.tmp" "$BASE"
  say "base built in $((SECONDS - t0)) s"
}
[ -f "$BASE/etc/debian_version" ] || build_base

# --- one throw-away root: overlay of the base, host network trust, caches -----------------------------------
ROOT=$RUN_DIR/root
new_root() {
  clear_run_dir
  mkdir -p "$RUN_DIR/upper" "$RUN_DIR/work" "$FRESH_DIR/cache/apt" "$FRESH_DIR/cache/pip" "$LOGS"
  mnt "$ROOT" -t overlay overlay -o "lowerdir=$BASE,upperdir=$RUN_DIR/upper,workdir=$RUN_DIR/work"
  mnt "$ROOT/proc" -t proc proc
  mnt "$ROOT/sys" --rbind /sys
  mount --make-rslave "$ROOT/sys"
  mnt "$ROOT/dev" --rbind /dev
  mount --make-rslave "$ROOT/dev"
  mnt "$ROOT/dev/shm" -t tmpfs tmpfs          # a private /dev/shm: Open MPI's shared-memory segments
  mnt "$ROOT/run" -t tmpfs tmpfs
  mnt "$ROOT/tmp" -t tmpfs -o mode=1777 tmpfs
  mnt "$ROOT/var/cache/apt/archives" --bind "$FRESH_DIR/cache/apt"   # downloads only, reinstalled every run
  mnt "$ROOT/root/.cache/pip" --bind "$FRESH_DIR/cache/pip"
  cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
  # Packages must not start their services in the root (nginx, postgresql: the tests start their own on
  # 127.0.0.1): the policy Debian's invoke-rc.d asks, as in container images.
  printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d" && chmod +x "$ROOT/usr/sbin/policy-rc.d"
  # This machine reaches the package registries through a proxy with its own CA: trust it as the host does.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
    chroot "$ROOT" update-ca-certificates >/dev/null 2>&1
  fi
  mkdir -p "$ROOT/work"
  git clone -q "$REPO" "$ROOT/work/main"
  mkdir -p "$ROOT/work/shared" && cp -a "$SHARED/." "$ROOT/work/shared/"   # its contents: SHARED may be a symlink
}

# in_root USER COMMAND: run COMMAND with bash in /work/main of the root, with a clean login environment
in_root() {
  local user=$1; shift
  local home=/root
  [ "$user" = root ] || home=/home/$user
  chroot "$ROOT" /usr/bin/env -i HOME="$home" USER="$user" LANG=C.UTF-8 TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
    /usr/sbin/runuser -u "$user" -- /bin/bash -c "cd /work/main && $*"
}

FAILED=0
# step NAME EXPECT USER COMMAND: run, time, and check the exit code (EXPECT: 0, or 'fail' for non-zero)
step() {
  local name=$1 expect=$2 user=$3; shift 3
  local log="$LOGS/$name.log" t0=$SECONDS rc=0
  in_root "$user" "$@" >"$log" 2>&1 || rc=$?
  local ok=0
  if [ "$expect" = fail ]; then [ "$rc" != 0 ] || ok=1; else [ "$rc" = "$expect" ] || ok=1; fi
  printf 'test-fresh: %-34s exit %-3s %5d s  %s\n' "$name ($user)" "$rc" "$((SECONDS - t0))" \
    "$([ $ok = 0 ] && echo ok || echo FAILED)"
  if [ $ok != 0 ]; then
    echo "---- last $TAIL_LINES lines of $log ----"
    tail -n "$TAIL_LINES" "$log"
    echo "----"
    FAILED=1
  fi
  return $ok
}

T_ALL=$SECONDS
say "HEAD $(git -C "$REPO" rev-parse --short HEAD), mirror $MIRROR, logs in $LOGS"

# 1. A non-root user on a machine without the packages: one line with the command, then it works.
new_root
chroot "$ROOT" useradd -m -s /bin/bash user
chroot "$ROOT" chown -R user: /work/main
if step "make-demo-without-packages" fail user make demo; then
  hint=$(grep -o 'apt-get update && apt-get install [^.]*[a-z0-9]' "$LOGS/make-demo-without-packages.log" | head -n 1 || true)
  lines=$(grep -c . "$LOGS/make-demo-without-packages.log" || true)
  if [ -z "$hint" ] || [ "$lines" != 1 ]; then
    say "FAILED: expected exactly one line naming 'apt-get update && apt-get install ...', got $lines:"
    cat "$LOGS/make-demo-without-packages.log"
    FAILED=1
  else
    step "root-runs-the-named-command" 0 root "export DEBIAN_FRONTEND=noninteractive; $hint" || true
    step "make-demo-after-install" 0 user make demo || true
  fi
fi

# 2. Root on a fresh machine: the README's two commands.
new_root
step "make-demo" 0 root make demo || true
if step "make-test" 0 root MPI_S2_REAL_DATA=/work/shared/data/s2-real make test "TESTS='$FRESH_TESTS'"; then
  # every pytest session of make test (each rank of test-mpi, then test-unit) prints "mpi_s2 tests: 0 skipped";
  # matches, not lines: the ranks' output may share a line
  counts=$(grep -aoE 'mpi_s2 tests: [0-9]+ skipped|[0-9]+ skipped' "$LOGS/make-test.log" || true)
  zero=$(grep -cx 'mpi_s2 tests: 0 skipped' <<<"$counts" || true)
  others=$(grep -vx 'mpi_s2 tests: 0 skipped' <<<"$counts" || true)
  if [ "$zero" = 0 ] || [ -n "$others" ]; then
    say "FAILED: make test must report 0 skipped in every pytest session; found $zero such lines, and:"
    printf '%s\n' "$others"
    FAILED=1
  else
    say "make test: 0 skipped in each of its $zero pytest summaries"
  fi
fi

say "total $((SECONDS - T_ALL)) s"
[ $FAILED = 0 ] || die "a step failed (logs in $LOGS)"
say "passed"
