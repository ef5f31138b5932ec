#!/usr/bin/env bash
# A real, throw-away Slurm cluster on this machine, for tests and for trying the sbatch jobs (needs root).
# Every node is emulated the same way, for any N >= 1 (see docs/cluster.md):
#   - a controller network namespace (mpi_s2-ctl) with a bridge holding the controller address (10.199.77.1),
#     running slurmctld; one namespace per node (mpi_s2-nodeK, 10.199.77.(10+K)) with a veth into that bridge,
#     running a real slurmd. Nothing touches the host's network, hostname, ports or /etc/hosts.
#   - each daemon runs in its own UTS and mount namespace: hostname ctl / nodeK (slurmd takes its node name from
#     it) and a hosts file from the state directory bind-mounted over /etc/hosts (mpirun resolves node names).
#   - one munged in the root namespace, on a private socket and key in the state directory.
# Usage:
#   tests/cluster/local-cluster.sh up [--nodes N] [--cpus C] [--slurmd-timeout S]
#                                                     # N nodes (default 1), C CPUs declared per node
#                                                     # (default max(nproc, 4)); waits until all are idle;
#                                                     # S: a node silent for S s is DOWN and its jobs end
#                                                     # NODE_FAIL (default Slurm's 300; tests of node loss)
#   tests/cluster/local-cluster.sh run COMMAND...              # a client (sbatch --wait ..., srun ..., squeue, sinfo)
#                                                     # in the controller's namespaces, from the current
#                                                     # directory; exit status = the command's
#   tests/cluster/local-cluster.sh down                        # stop everything, delete namespaces and the state dir;
#                                                     # idempotent; also cleans up after a killed `up`
#   tests/cluster/local-cluster.sh status                      # exit 0 and describe it when up, exit 1 when not
# State directory: ${MPI_S2_CLUSTER_DIR:-/var/tmp/mpi_s2-cluster} (absolute; slurm.conf, munge socket/key/log,
# controller state, per-node spool/TmpFS/pid/log files, jobcomp.txt). Only one cluster can be up at a time.
# Outside it: the namespaces mpi_s2-ctl and mpi_s2-node*, and, for a state directory longer than 48 characters,
# the symlink /run/mpi_s2-cluster to it (unix socket paths are limited to 107 bytes); `down` removes them.
# Traps handled:
#   - A minimal root may lack /etc/hosts (nothing to mount over): an empty one is created (it resolves nothing,
#     like a missing one) and stays after `down`.
#   - Debian ships the PMIx plugin without libpmix.so: symlinked to libpmix.so.2 before slurmd starts (created
#     later, step launch hangs). The link is a fix to the system and stays after `down`.
#   - `ip netns exec` remounts /sys (slurmd dies): namespaces are entered with nsenter + unshare instead.
#   - Entering a mount namespace resets the root directory: under chroot, `nsenter -m` alone leaves the chroot
#     (the client then finds no slurm.conf); clients enter with -r, the controller's root.
#   - The nodes share /tmp (PMIx collides): TmpFS, spool, pid and log paths are per node (%n).
#   - More CPUs declared than the machine has: SlurmdParameters=config_overrides.
#   - slurmstepd ignores SIGTERM and `ip netns del` kills nothing: `down` sends TERM, then KILL, to every process
#     in our namespaces before deleting them.
#   - sbatch --wait polls after 2 s, then 8 s, then 32 s unless MinJobAge < 6: MinJobAge=5 keeps it at 2 s.
#   - A job asking more CPUs than the partition has would pend forever: EnforcePartLimits=ALL rejects it at once
#     (declare more with --cpus, or use --overcommit).
#   - munged refuses a socket under a directory that is not world-searchable (pytest tmp dirs are 0700): it runs
#     as root with --force (all clients are root anyway).
set -euo pipefail

readonly PROG=local-cluster
readonly NS_PREFIX=mpi_s2-
readonly CTL_NS=${NS_PREFIX}ctl
readonly SUBNET=10.199.77
readonly CTL_IP=$SUBNET.1
readonly MAX_NODES=64
readonly UP_TIMEOUT_S=30
readonly SYS_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Unix socket paths are limited to 107 bytes and slurmd makes some under its spool directory
# (.../nodes/node64/spool/stepd.slurm.pmix.JOBID.STEPID): a state directory longer than this is reached through
# the short symlink ALIAS in every path of slurm.conf (so only one cluster at a time, as for the namespaces).
readonly MAX_DIRECT_LEN=48
readonly ALIAS=/run/mpi_s2-cluster

DIR=${MPI_S2_CLUSTER_DIR:-/var/tmp/mpi_s2-cluster}
DIR=${DIR%/}
CONF=$DIR/slurm.conf
ENV_FILE=$DIR/cluster.env      # also the marker that DIR is ours (down removes only such a directory)
BASE=$DIR                      # DIR itself, or ALIAS pointing to it (see above); paths in slurm.conf use it
[ ${#DIR} -le $MAX_DIRECT_LEN ] || BASE=$ALIAS
MUNGE_SOCKET=$BASE/munge/sock
CTL_PID_FILE=$DIR/ctl/slurmctld.pid
CTL_LOG=$DIR/ctl/slurmctld.log

say() { echo "$PROG: $*"; }
err() { echo "$PROG: error: $*" >&2; }
die() { local code=$1; shift; err "$*"; exit "$code"; }

usage() {
  sed -n '/^# Usage:/,/^# State directory/p' "$0" | sed -e 's/^# \{0,1\}//' -e '$d'
}

# ---------------------------------------------------------------- checks

check_root() {
  [ "$(id -u)" = 0 ] || die 2 "needs root (network, UTS and mount namespaces, daemons); run it with sudo or as root"
}

check_tools() {
  local t missing=()
  for t in slurmctld slurmd sinfo munged ip nsenter unshare hostname mount; do
    PATH=$PATH:$SYS_PATH command -v "$t" >/dev/null 2>&1 || missing+=("$t")
  done
  [ ${#missing[@]} -eq 0 ] ||
    die 2 "missing ${missing[*]}: run 'apt-get install -y slurm-wlm munge iproute2'"
}

check_dir() {
  case $DIR in
    /*) ;;
    *) die 2 "MPI_S2_CLUSTER_DIR must be an absolute path (got '$DIR')" ;;
  esac
  [[ $DIR =~ ^[A-Za-z0-9._+/-]+$ ]] ||
    die 2 "MPI_S2_CLUSTER_DIR may only hold letters, digits and ._+-/ (slurm.conf paths): '$DIR'"
  [ "$DIR" != / ] || die 2 "MPI_S2_CLUSTER_DIR cannot be /"
}

# ---------------------------------------------------------------- processes

# True if the pid is a live process (zombies count as gone: nobody may reap them here).
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ -n "$stat" ] && [ "${stat%% *}" != Z ]
}

# Pid read from FILE if that process is alive and its command name is NAME.
pid_from_file() {
  local file=$1 name=$2 pid
  [ -r "$file" ] || return 1
  read -r pid <"$file" 2>/dev/null || return 1
  [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 1
  echo "$pid"
}

# TERM, wait up to 2 s, KILL, wait up to 3 s.
stop_pids() {
  local pid sig tries
  [ $# -gt 0 ] || return 0
  for sig in TERM KILL; do
    for pid in "$@"; do alive "$pid" && kill -s "$sig" "$pid" 2>/dev/null || true; done
    tries=$([ $sig = TERM ] && echo 20 || echo 30)
    while [ "$tries" -gt 0 ]; do
      local left=0
      for pid in "$@"; do alive "$pid" && left=1 && break; done
      [ $left = 1 ] || return 0
      sleep 0.1
      tries=$((tries - 1))
    done
  done
  for pid in "$@"; do alive "$pid" && err "process $pid ($(cat "/proc/$pid/comm" 2>/dev/null)) survived SIGKILL"; done
  return 0
}

# ---------------------------------------------------------------- namespaces

our_namespaces() {
  ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${NS_PREFIX}(ctl|node[0-9]+)\$" || true
}

ns_pids() {
  ip netns pids "$1" 2>/dev/null || true
}

# The slurm.conf given (-f) to a process, if it is a slurmctld or slurmd.
conf_of_pid() {
  local pid=$1 args=() i
  case $(cat "/proc/$pid/comm" 2>/dev/null) in slurmctld | slurmd) ;; *) return 1 ;; esac
  mapfile -d '' -t args <"/proc/$pid/cmdline" 2>/dev/null || return 1
  for ((i = 0; i < ${#args[@]} - 1; i++)); do
    [ "${args[i]}" = -f ] && { echo "${args[i + 1]}"; return 0; }
  done
  return 1
}

# State directory of the live slurmctld in our controller namespace (if any).
live_owner_dir() {
  local pid conf
  for pid in $(ns_pids "$CTL_NS"); do
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = slurmctld ] && alive "$pid" || continue
    conf=$(conf_of_pid "$pid") && { dirname "$conf"; return 0; }
  done
  return 1
}

# State directories named by any slurmctld/slurmd left in our namespaces.
dirs_in_namespaces() {
  local ns pid conf
  for ns in $(our_namespaces); do
    for pid in $(ns_pids "$ns"); do
      if conf=$(conf_of_pid "$pid"); then dirname "$conf"; fi
    done
  done | sort -u
}

# munged processes started for state directory $1 (matched by their key file).
munged_pids_of() {
  local d=$1 p pid
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [ "$(cat "$p/comm" 2>/dev/null)" = munged ] || continue
    tr '\0' '\n' <"$p/cmdline" 2>/dev/null | grep -qxF -- "--key-file=$d/munge/munge.key" && echo "$pid"
  done
  return 0
}

# Run a command in a namespace: its own network namespace (existing, by name), a new UTS namespace with
# hostname HOST and a new mount namespace (slave) with the state dir's hosts file over /etc/hosts.
run_in_ns() {
  local ns=$1 host=$2 log=$3
  shift 3
  nsenter --net="/run/netns/$ns" unshare --uts --mount --propagation slave -- \
    /bin/sh -c 'hostname "$1" && mount --bind "$2" /etc/hosts && shift 2 && exec "$@"' \
    sh "$host" "$DIR/hosts" env -i PATH="$SYS_PATH" SLURM_CONF="$CONF" "$@" \
    </dev/null >>"$log" 2>&1
}

# ---------------------------------------------------------------- teardown

# Kill everything in our namespaces, delete them, stop the munged of DIR (and of any state directory named by
# the leftovers), remove DIR if it is ours. Safe to call in any state.
teardown() {
  local pids=() ns pid pid_file d stale_dirs
  stale_dirs=$(dirs_in_namespaces)
  for ns in $(our_namespaces); do
    for pid in $(ns_pids "$ns"); do pids+=("$pid"); done
  done
  pid=$(pid_from_file "$CTL_PID_FILE" slurmctld) && pids+=("$pid")
  for pid_file in "$DIR"/nodes/*/slurmd.pid; do
    pid=$(pid_from_file "$pid_file" slurmd) && pids+=("$pid")
  done
  stop_pids ${pids[@]+"${pids[@]}"}
  for ns in $(our_namespaces); do
    ip netns del "$ns" 2>/dev/null || err "could not delete network namespace $ns"
  done
  pids=()
  for d in "$DIR" $stale_dirs; do
    for pid in $(munged_pids_of "$d"); do pids+=("$pid"); done
  done
  pid=$(pid_from_file "$DIR/munge/munged.pid" munged) && pids+=("$pid")
  stop_pids ${pids[@]+"${pids[@]}"}
  remove_alias $stale_dirs
  remove_dir
}

# Remove ALIAS if it points to DIR, to one of the given directories, or nowhere.
remove_alias() {
  local target d
  [ -L "$ALIAS" ] || return 0
  target=$(readlink "$ALIAS")
  for d in "$DIR" "$@"; do
    [ "$target" = "$d" ] && { rm -f "$ALIAS"; return 0; }
  done
  [ -e "$ALIAS" ] || rm -f "$ALIAS"
}

remove_dir() {
  [ -d "$DIR" ] || return 0
  if [ -f "$ENV_FILE" ]; then
    rm -rf -- "$DIR"
  else
    rmdir -- "$DIR" 2>/dev/null || err "$DIR is not a local-cluster state directory (no cluster.env): left as is"
  fi
}

# ---------------------------------------------------------------- up

write_hosts() {
  local n=$1 k
  {
    echo "127.0.0.1 localhost"
    echo "::1 localhost ip6-localhost ip6-loopback"
    echo "$CTL_IP ctl"
    for ((k = 1; k <= n; k++)); do echo "$SUBNET.$((10 + k)) node$k"; done
  } >"$DIR/hosts"
}

write_conf() {
  local n=$1 cpus=$2 mem_mb=$3 slurmd_timeout=$4 k
  cat >"$CONF" <<EOF
# Written by tests/cluster/local-cluster.sh: a local test cluster of $n emulated node(s). Removed by 'down'.
# State directory $DIR$([ "$BASE" = "$DIR" ] || echo ", reached through $BASE (short unix socket paths)").
ClusterName=mpi_s2
SlurmctldHost=ctl($CTL_IP)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$BASE/ctl/state
SlurmctldPidFile=$BASE/ctl/slurmctld.pid
SlurmctldLogFile=$BASE/ctl/slurmctld.log
SlurmdSpoolDir=$BASE/nodes/%n/spool
SlurmdPidFile=$BASE/nodes/%n/slurmd.pid
SlurmdLogFile=$BASE/nodes/%n/slurmd.log
TmpFS=$BASE/nodes/%n/tmp
SlurmdParameters=config_overrides
SchedulerParameters=batch_sched_delay=0
MinJobAge=5
EnforcePartLimits=ALL
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
ReturnToService=2
KillWait=5
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$BASE/jobcomp.txt
EOF
  [ -z "$slurmd_timeout" ] || echo "SlurmdTimeout=$slurmd_timeout" >>"$CONF"
  for ((k = 1; k <= n; k++)); do
    echo "NodeName=node$k NodeAddr=$SUBNET.$((10 + k)) CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"
  done >>"$CONF"
  echo "PartitionName=debug Nodes=ALL Default=YES State=UP MaxTime=INFINITE" >>"$CONF"
}

# A minimal root (debootstrap minbase, containers) may have no /etc/hosts: there is then nothing to bind-mount
# our hosts file over. An empty one resolves exactly what a missing one does (nothing), so create that.
ensure_etc_hosts() {
  if [ ! -e /etc/hosts ]; then
    : >/etc/hosts
    say "created an empty /etc/hosts (there was none; the namespaces mount their own over it)"
  fi
}

# Debian packaging bug: the PMIx plugin dlopens .../pmix2/lib/libpmix.so, which only libpmix-dev ships.
ensure_libpmix_link() {
  local lib=/usr/lib/$(uname -m)-linux-gnu/pmix2/lib
  if [ -e "$lib/libpmix.so.2" ] && [ ! -e "$lib/libpmix.so" ]; then
    ln -sf libpmix.so.2 "$lib/libpmix.so"
  fi
}

start_munged() {
  mkdir -p "$DIR/munge"
  chmod 0755 "$DIR/munge"   # munged wants a searchable socket directory
  (umask 077 && head -c 1024 /dev/urandom >"$DIR/munge/munge.key")
  UP_FAIL_LOG=$DIR/munge/munged.log
  # --force: as root, and although a parent of DIR (a pytest tmp dir) may not be world-searchable.
  env -i PATH="$SYS_PATH" munged --force --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed" \
    </dev/null >>"$DIR/munge/munged.log" 2>&1 || up_fail "munged did not start"
  [ -S "$MUNGE_SOCKET" ] || up_fail "munged did not create its socket $MUNGE_SOCKET"
}

make_network() {
  local n=$1 k ns
  ip netns add "$CTL_NS"
  ip -n "$CTL_NS" link set lo up
  ip -n "$CTL_NS" link add br0 type bridge
  ip -n "$CTL_NS" addr add "$CTL_IP/24" dev br0
  ip -n "$CTL_NS" link set br0 up
  for ((k = 1; k <= n; k++)); do
    ns=${NS_PREFIX}node$k
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # Both ends are created inside namespaces: no interface ever appears in the root namespace.
    ip -n "$CTL_NS" link add "vnode$k" type veth peer name eth0 netns "$ns"
    ip -n "$CTL_NS" link set "vnode$k" master br0 up
    ip -n "$ns" addr add "$SUBNET.$((10 + k))/24" dev eth0
    ip -n "$ns" link set eth0 up
  done
}

# Wait (up to $3 tenths of a second) until the pid file $2 names a live process called $1.
wait_pid_file() {
  local name=$1 file=$2 tries=$3
  while [ "$tries" -gt 0 ]; do
    pid_from_file "$file" "$name" >/dev/null && return 0
    sleep 0.1
    tries=$((tries - 1))
  done
  return 1
}

start_slurmctld() {
  mkdir -p "$DIR/ctl/state"
  UP_FAIL_LOG=$CTL_LOG
  run_in_ns "$CTL_NS" ctl "$CTL_LOG" slurmctld -f "$CONF" || up_fail "slurmctld did not start"
  wait_pid_file slurmctld "$CTL_PID_FILE" 100 || up_fail "slurmctld did not start (no live pid in $CTL_PID_FILE)"
}

start_slurmds() {
  local n=$1 k log
  for ((k = 1; k <= n; k++)); do
    mkdir -p "$DIR/nodes/node$k/spool" "$DIR/nodes/node$k/tmp"
    chmod 1777 "$DIR/nodes/node$k/tmp"
    log=$DIR/nodes/node$k/slurmd.log
    UP_FAIL_LOG=$log
    run_in_ns "${NS_PREFIX}node$k" "node$k" "$log" slurmd -f "$CONF" || up_fail "slurmd on node$k did not start"
  done
  for ((k = 1; k <= n; k++)); do
    UP_FAIL_LOG=$DIR/nodes/node$k/slurmd.log
    wait_pid_file slurmd "$DIR/nodes/node$k/slurmd.pid" 100 || up_fail "slurmd on node$k did not start"
  done
}

# Wait until sinfo shows every node idle; name the culprit's log if not.
wait_idle() {
  local n=$1 deadline=$((SECONDS + UP_TIMEOUT_S)) states k bad
  while :; do
    states=$(client sinfo -h -N -o '%N %T' 2>/dev/null || true)
    [ "$(grep -c ' idle$' <<<"$states")" -eq "$n" ] && return 0
    pid_from_file "$CTL_PID_FILE" slurmctld >/dev/null || { UP_FAIL_LOG=$CTL_LOG; up_fail "slurmctld died"; }
    for ((k = 1; k <= n; k++)); do
      pid_from_file "$DIR/nodes/node$k/slurmd.pid" slurmd >/dev/null ||
        { UP_FAIL_LOG=$DIR/nodes/node$k/slurmd.log; up_fail "slurmd on node$k died"; }
    done
    if [ $SECONDS -ge $deadline ]; then
      bad=$(awk '$2 != "idle" {print $1; exit}' <<<"$states")
      UP_FAIL_LOG=${bad:+$DIR/nodes/$bad/slurmd.log}
      UP_FAIL_LOG=${UP_FAIL_LOG:-$CTL_LOG}
      up_fail "nodes not idle after ${UP_TIMEOUT_S}s: $(tr '\n' ' ' <<<"${states:-no answer from slurmctld}")"
    fi
    sleep 0.2
  done
}

UP_FAIL_LOG=
UP_DONE=0

# Print the tail of the relevant log, clean up, one-line error, exit 1.
up_fail() {
  trap - EXIT INT TERM
  if [ -n "$UP_FAIL_LOG" ] && [ -s "$UP_FAIL_LOG" ]; then
    echo "---- last lines of $UP_FAIL_LOG ----" >&2
    tail -n 25 "$UP_FAIL_LOG" >&2
    echo "----" >&2
  fi
  teardown
  die 1 "up failed: $*"
}

on_up_exit() {
  local rc=$?
  [ "$UP_DONE" = 1 ] && return 0
  up_fail "interrupted or unexpected failure (status $rc)"
}

node_list() {
  [ "$1" -eq 1 ] && echo node1 || echo "node[1-$1]"
}

cmd_up() {
  local n=1 cpus slurmd_timeout=
  cpus=$(nproc)
  [ "$cpus" -ge 4 ] || cpus=4
  while [ $# -gt 0 ]; do
    case $1 in
      --nodes) [ $# -ge 2 ] || die 2 "--nodes needs a value"; n=$2; shift 2 ;;
      --nodes=*) n=${1#*=}; shift ;;
      --cpus) [ $# -ge 2 ] || die 2 "--cpus needs a value"; cpus=$2; shift 2 ;;
      --cpus=*) cpus=${1#*=}; shift ;;
      --slurmd-timeout) [ $# -ge 2 ] || die 2 "--slurmd-timeout needs a value"; slurmd_timeout=$2; shift 2 ;;
      --slurmd-timeout=*) slurmd_timeout=${1#*=}; shift ;;
      -h | --help) usage; exit 0 ;;
      *) die 2 "up: unknown option '$1' (up [--nodes N] [--cpus C] [--slurmd-timeout S])" ;;
    esac
  done
  [[ $n =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le $MAX_NODES ] || die 2 "--nodes must be 1..$MAX_NODES (got '$n')"
  [[ $cpus =~ ^[0-9]+$ ]] && [ "$cpus" -ge 1 ] || die 2 "--cpus must be a positive integer (got '$cpus')"
  [ -z "$slurmd_timeout" ] || { [[ $slurmd_timeout =~ ^[0-9]+$ ]] && [ "$slurmd_timeout" -ge 1 ]; } ||
    die 2 "--slurmd-timeout must be a positive integer (got '$slurmd_timeout')"

  if pid_from_file "$CTL_PID_FILE" slurmctld >/dev/null; then
    die 1 "a cluster is already up in $DIR (tests/cluster/local-cluster.sh down first)"
  fi
  local owner
  if owner=$(live_owner_dir) && [ "$owner" != "$DIR" ]; then
    die 1 "a cluster from $owner is up (MPI_S2_CLUSTER_DIR=$owner tests/cluster/local-cluster.sh down first)"
  fi
  if [ -e "$DIR" ] && [ ! -f "$ENV_FILE" ] && [ -n "$(ls -A "$DIR" 2>/dev/null)" ]; then
    die 1 "$DIR exists, is not empty and is not a local-cluster state directory"
  fi
  if [ -n "$(our_namespaces)" ] || [ -f "$ENV_FILE" ]; then
    say "cleaning up what an earlier run left behind"
    teardown
  fi

  trap on_up_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  mkdir -p "$DIR"
  if [ "$BASE" != "$DIR" ]; then rm -f "$ALIAS" && ln -s "$DIR" "$ALIAS"; fi
  printf 'NODES=%s\nCPUS=%s\n' "$n" "$cpus" >"$ENV_FILE"
  local mem_mb
  mem_mb=$(awk -v n="$n" '/^MemTotal:/ {m = int($2 / 1024 / n); print (m > 0 ? m : 1)}' /proc/meminfo)
  write_hosts "$n"
  write_conf "$n" "$cpus" "$mem_mb" "$slurmd_timeout"
  : >"$DIR/jobcomp.txt"
  ensure_libpmix_link
  ensure_etc_hosts
  start_munged
  UP_FAIL_LOG=
  make_network "$n"
  start_slurmctld
  start_slurmds "$n"
  wait_idle "$n"
  UP_DONE=1
  trap - EXIT INT TERM
  say "up: $n node$([ "$n" -eq 1 ] || echo s) ($(node_list "$n")), $cpus CPUs each, state in $DIR;" \
    "run: tests/cluster/local-cluster.sh run sbatch --wait ..."
}

# ---------------------------------------------------------------- run, down, status

# Run a client command in the controller's namespaces (network, hostname ctl, its /etc/hosts), from the current
# directory. -r keeps the controller's root directory: entering a mount namespace resets the root to the
# namespace's, so under chroot (the fresh-root CI) the client would otherwise run on the host's file system.
in_ctl_ns() {
  local pid=$1
  shift
  exec nsenter -t "$pid" -n -u -m -r --wd="$PWD" -- env SLURM_CONF="$CONF" "$@"
}

client() {
  local pid
  pid=$(pid_from_file "$CTL_PID_FILE" slurmctld) || return 1
  (in_ctl_ns "$pid" "$@")
}

cmd_run() {
  [ $# -gt 0 ] || die 2 "run needs a command (e.g. run sbatch --wait job.sh)"
  local pid
  pid=$(pid_from_file "$CTL_PID_FILE" slurmctld) ||
    die 2 "no cluster is up in $DIR (tests/cluster/local-cluster.sh up first)"
  in_ctl_ns "$pid" "$@"
}

cmd_down() {
  local owner
  if owner=$(live_owner_dir) && [ "$owner" != "$DIR" ]; then
    say "down: the cluster that is up belongs to $owner, not $DIR: left as is"
    [ -d "$DIR" ] && teardown_dir_only
    return 0
  fi
  if [ -z "$(our_namespaces)" ] && [ ! -f "$ENV_FILE" ]; then
    [ -d "$DIR" ] && rmdir -- "$DIR" 2>/dev/null || true   # an empty directory; anything else is not ours
    say "down: nothing is up ($DIR)"
    return 0
  fi
  teardown
  say "down: stopped and removed $DIR"
}

# Only DIR's own leftovers (its munged, the directory), when the namespaces belong to another live cluster.
teardown_dir_only() {
  local pids=() pid
  for pid in $(munged_pids_of "$DIR"); do pids+=("$pid"); done
  stop_pids ${pids[@]+"${pids[@]}"}
  remove_dir
}

cmd_status() {
  local n='?' cpus='?'
  if pid_from_file "$CTL_PID_FILE" slurmctld >/dev/null; then
    [ -f "$ENV_FILE" ] && { n=$(sed -n 's/^NODES=//p' "$ENV_FILE"); cpus=$(sed -n 's/^CPUS=//p' "$ENV_FILE"); }
    say "up: $n node(s) ($([ "$n" = '?' ] && echo '?' || node_list "$n")), $cpus CPUs each, state in $DIR"
    client sinfo -N -o '%N %T %c' || true
    return 0
  fi
  local owner
  if owner=$(live_owner_dir); then
    say "not up in $DIR (a cluster from $owner is up)"
  elif [ -n "$(our_namespaces)" ] || [ -f "$ENV_FILE" ]; then
    say "not up in $DIR (leftovers from an earlier run: 'down' cleans them)"
  else
    say "not up ($DIR)"
  fi
  return 1
}

main() {
  local cmd=${1:-}
  [ $# -gt 0 ] && shift
  case $cmd in
    -h | --help | help) usage; exit 0 ;;
    up | run | down | status) ;;
    '') usage >&2; exit 2 ;;
    *) err "unknown command '$cmd'"; usage >&2; exit 2 ;;
  esac
  check_root
  check_tools
  check_dir
  export PATH=$PATH:$SYS_PATH
  "cmd_$cmd" "$@"
}

main "$@"
