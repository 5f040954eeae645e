#!/usr/bin/env bash
# A real Slurm cluster on this machine, for development and CI: munge, MariaDB + slurmdbd
# (accounting: submitit reads job states through sacct), slurmctld, one slurmd per node, one
# partition, two declared (fake) GPUs and more declared CPUs than cores per node.
#
#   slurm/local-cluster.sh up [--nodes N]   install Debian's packages if missing, start, wait for
#                                           idle nodes (N: 1, or the running cluster's count)
#   slurm/local-cluster.sh down             stop exactly what `up` started, remove what it made
#   slurm/local-cluster.sh status           which daemons run, and sinfo
#   slurm/local-cluster.sh kill-node NAME   test only: the node dies (its slurmd and every
#                                           process on it); `up` brings it back
#
# One node (the default) is this machine itself: its hostname, at 127.0.0.1. With N >= 2 every
# node is a test host of its own: a network namespace (suite-nodeK) on a bridge (suitebr0, whose
# address 10.77.0.1 is the controller's), with address 10.77.0.(10+K), its own hostname (nodeK,
# in its own UTS namespace, listed in /etc/hosts) and its own slurmd (-N nodeK; per-node spool,
# log and pid files). Jobs inherit the node's network and hostname. Traffic stays on the bridge
# and on loopback.
#
# Environment: SUITE_SLURM_DIR (state and logs, default /var/tmp/suite-slurm),
# SUITE_SLURM_CPUS (declared CPUs per node, default 8). Needs root. It writes /etc/slurm/slurm.conf,
# and refuses to replace one that it did not write.
set -euo pipefail

STATE=${SUITE_SLURM_DIR:-/var/tmp/suite-slurm}
CPUS=${SUITE_SLURM_CPUS:-8}
HOST=$(hostname -s)
MARK="# written by suite slurm/local-cluster.sh"
HOSTS_MARK="# suite local-cluster test host"
CONF=/etc/slurm/slurm.conf
PACKAGES="slurmctld slurmd slurm-client munge slurmdbd mariadb-server"
BRIDGE=suitebr0
SUBNET=10.77.0
NODES=1
CTL_ADDR=127.0.0.1  # the controller's and accounting's address: the bridge's with N >= 2

log() { echo "local-cluster: $*" >&2; }

pidfile() {  # pidfile DAEMON
  case "$1" in
    mariadb) echo "$STATE/mariadb/mariadb.pid" ;;
    munged) echo /run/munge/munged.pid ;;
    *) echo "$STATE/$1.pid" ;;
  esac
}

alive() {  # alive PIDFILE
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  for _ in $(seq $((limit * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  log "gave up waiting for $what after ${limit}s; logs: $STATE/log"
  return 1
}

use_nodes() {  # use_nodes N: the node count, and the controller's address that follows from it
  NODES=$1
  case "$NODES" in ''|*[!0-9]*|0) log "--nodes wants a positive whole number, not '$NODES'"; exit 2 ;; esac
  if [ "$NODES" -ge 2 ]; then CTL_ADDR=$SUBNET.1; else CTL_ADDR=127.0.0.1; fi
}

running_nodes() {  # the node count of the cluster `up` last started, if its controller runs
  if [ -f "$STATE/nodes" ] && alive "$STATE/slurmctld.pid"; then cat "$STATE/nodes"; fi
}

node_names() {  # one per line
  if [ "$NODES" -eq 1 ]; then echo "$HOST"; else seq -f "node%g" 1 "$NODES"; fi
}

node_lines() {  # slurm.conf's node lines
  local k
  if [ "$NODES" -eq 1 ]; then
    echo "NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=16000 Gres=gpu:2 State=UNKNOWN"
    return
  fi
  for k in $(seq 1 "$NODES"); do
    echo "NodeName=node$k NodeAddr=$SUBNET.$((10 + k)) CPUs=$CPUS RealMemory=16000 Gres=gpu:2 State=UNKNOWN"
  done
}

install_packages() {
  local missing=()
  for p in $PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

write_configs() {
  local n
  if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    log "$CONF exists and was not written by this script; not replacing it"
    exit 1
  fi
  mkdir -p "$STATE"/{ctld,log,dev}
  for n in $(node_names); do mkdir -p "$STATE/spool/$n"; done
  # Fake GPUs: gres.conf wants device files; links to /dev/null pass its checks.
  ln -sf /dev/null "$STATE/dev/gpu0"
  ln -sf /dev/null "$STATE/dev/gpu1"
  cat > "$CONF" <<EOF
$MARK
ClusterName=suite
SlurmctldHost=$HOST($CTL_ADDR)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
# %n: the node's name, so that every node's slurmd keeps files of its own
SlurmdSpoolDir=$STATE/spool/%n
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmdLogFile=$STATE/log/slurmd-%n.log
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
# No cgroups in a container: track processes by their parent, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SchedulerType=sched/backfill
ReturnToService=2
GresTypes=gpu
# The node may declare more CPUs than it has, so small jobs run side by side.
SlurmdParameters=config_overrides
# An impossible request fails at submission instead of pending forever.
EnforcePartLimits=ALL
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$CTL_ADDR
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/none
# Quick turnaround for tests: kill 5 s after the signal, no grace over the time limit.
KillWait=5
OverTimeLimit=0
MinJobAge=600
# A node whose slurmd stops answering is set down after this long; its jobs end NODE_FAIL.
SlurmdTimeout=30
$(node_lines)
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  { echo "$MARK"; echo "AutoDetect=off"
    for n in $(node_names); do echo "NodeName=$n Name=gpu File=$STATE/dev/gpu[0-1]"; done
  } > /etc/slurm/gres.conf
  cat > /etc/slurm/slurmdbd.conf <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
DbdAddr=$CTL_ADDR
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=suite_slurm_acct_db
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
EOF
  chmod 600 /etc/slurm/slurmdbd.conf
}

# ---- test hosts (N >= 2): namespaces on a bridge, host names ------------------------------------

make_network() {
  local k ns
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$CTL_ADDR/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
  fi
  for k in $(seq 1 "$NODES"); do
    ns=suite-node$k
    ip netns list | grep -qw "$ns" && continue
    ip netns add "$ns"
    ip link add "suite-v$k" type veth peer name eth0 netns "$ns"
    ip link set "suite-v$k" master "$BRIDGE" up
    ip -n "$ns" addr add "$SUBNET.$((10 + k))/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
  done
  # every node, and this machine, resolves every node's name (rewritten in place: /etc/hosts
  # may be a mount point)
  grep -vF "$HOSTS_MARK" /etc/hosts > "$STATE/hosts" || true
  for k in $(seq 1 "$NODES"); do echo "$SUBNET.$((10 + k)) node$k $HOSTS_MARK" >> "$STATE/hosts"; done
  cat "$STATE/hosts" > /etc/hosts
}

remove_network() {
  local ns pids
  for ns in $(ip netns list | awk '$1 ~ /^suite-node[0-9]+$/ {print $1}'); do
    pids=$(ip netns pids "$ns" | tr '\n' ' ')
    if [ -n "${pids// /}" ]; then kill -9 $pids 2>/dev/null || true; log "killed what still ran on $ns: $pids"; fi
    ip netns delete "$ns" && log "removed namespace $ns"
  done
  # the kernel destroys a deleted namespace, and with it the veth pair, once its last process
  # has gone; until then the host's end of the link is still listed
  wait_for 20 "the nodes' links to go" bash -c "! ip -o link | grep -q ' suite-v[0-9]*@'" || true
  if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link delete "$BRIDGE" && log "removed bridge $BRIDGE"; fi
  if grep -qF "$HOSTS_MARK" /etc/hosts; then
    grep -vF "$HOSTS_MARK" /etc/hosts > "$STATE/hosts" || true
    cat "$STATE/hosts" > /etc/hosts && log "removed the test hosts from /etc/hosts"
  fi
}

# ---- daemons ------------------------------------------------------------------------------------

start_munge() {
  alive "$(pidfile munged)" && return 0
  # munged refuses to run as root; it wants its key private to the munge user.
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  [ -f /etc/munge/munge.key ] || mungekey --create >/dev/null
  chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
  runuser -u munge -- /usr/sbin/munged
  wait_for 10 munged munge -n
}

start_mariadb() {
  alive "$STATE/mariadb/mariadb.pid" && return 0
  # MariaDB runs as mysql: its pid, log and socket folders must be mysql's.
  mkdir -p /run/mysqld "$STATE/mariadb" && chown mysql:mysql /run/mysqld "$STATE/mariadb"
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null
  setsid /usr/sbin/mariadbd --user=mysql --pid-file="$STATE/mariadb/mariadb.pid" \
    --socket=/run/mysqld/mysqld.sock --bind-address=127.0.0.1 \
    --log-error="$STATE/mariadb/mariadb.log" </dev/null >/dev/null 2>&1 &
  wait_for 30 mariadb mysqladmin --socket=/run/mysqld/mysqld.sock ping
}

start_slurmd() {  # start_slurmd NODE
  local n=$1
  alive "$STATE/slurmd-$n.pid" && return 0
  if [ "$NODES" -eq 1 ]; then
    slurmd -N "$n"
  else  # inside the node: its network, and a hostname of its own that its jobs inherit
    # nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup mounts slurmd checks
    nsenter --net="/run/netns/suite-$n" unshare --uts sh -c "hostname $n && exec slurmd -N $n"
  fi
}

node_ready() {  # node_ready NODE: idle, mixed or allocated
  sinfo -h -n "$1" -o %t | grep -qE '^(idle|mix|alloc)$'
}

start_slurm() {
  local n
  alive "$STATE/slurmdbd.pid" || slurmdbd
  wait_for 20 slurmdbd bash -c "exec 3<>/dev/tcp/$CTL_ADDR/6819"
  alive "$STATE/slurmctld.pid" || slurmctld
  wait_for 20 slurmctld scontrol ping
  for n in $(node_names); do start_slurmd "$n"; done
  for n in $(node_names); do
    wait_for 30 "node $n to be idle" node_ready "$n" || {
      # a node set down (kill-node, or by hand) comes back only when told to
      scontrol update nodename="$n" state=resume 2>/dev/null || true
      wait_for 15 "node $n to be idle" node_ready "$n"
    }
  done
}

# ---- commands -----------------------------------------------------------------------------------

up() {
  local t0=$SECONDS running asked=""
  if [ "${1:-}" = "--nodes" ]; then asked=${2:-}; fi
  running=$(running_nodes)
  if [ -n "$asked" ] && [ -n "$running" ] && [ "$asked" != "$running" ]; then
    log "a $running-node cluster runs; '$0 down' first, then up --nodes $asked"
    exit 1
  fi
  use_nodes "${asked:-${running:-1}}"
  install_packages
  write_configs
  echo "$NODES" > "$STATE/nodes"
  if [ "$NODES" -ge 2 ]; then make_network; fi
  start_munge
  start_mariadb
  start_slurm
  log "up in $((SECONDS - t0))s: nodes $(node_names | paste -sd, -), $CPUS CPUs and 2 GPUs (fake) each, partition debug"
  log "state and logs: $STATE (logs in $STATE/log), config: $CONF"
}

stop() {  # stop PIDFILE NAME
  local pid
  if alive "$1"; then
    pid=$(cat "$1")
    kill "$pid" && log "stopped $2"
    wait_for 20 "$2 to stop" bash -c "! kill -0 $pid 2>/dev/null" || true
  fi
  if [ "$2" != munged ]; then rm -f "$1"; fi
}

down() {
  local f
  for f in "$STATE"/slurmd*.pid; do if [ -e "$f" ]; then stop "$f" "$(basename "$f" .pid)"; fi; done
  for d in slurmctld slurmdbd mariadb munged; do stop "$(pidfile $d)" "$d"; done
  remove_network
  rm -f "$STATE/nodes"
}

kill_node() {  # kill_node NAME: the node dies at once, as a power cut would end it
  local n=$1 pids
  ip netns list | grep -qw "suite-$n" || { log "no test host $n (kill-node needs up --nodes N >= 2)"; exit 2; }
  pids=$(ip netns pids "suite-$n" | tr '\n' ' ')
  if [ -n "${pids// /}" ]; then kill -9 $pids 2>/dev/null || true; fi
  rm -f "$STATE/slurmd-$n.pid"
  log "killed node $n (pids $pids)"
}

status() {
  local rc=0 n
  n=$(running_nodes)
  use_nodes "${n:-1}"
  for d in munged mariadb slurmdbd slurmctld; do
    if alive "$(pidfile $d)"; then echo "$d: running"; else echo "$d: stopped"; rc=1; fi
  done
  for n in $(node_names); do
    if alive "$STATE/slurmd-$n.pid"; then echo "slurmd $n: running"; else echo "slurmd $n: stopped"; rc=1; fi
  done
  if [ $rc -eq 0 ]; then sinfo; fi
  return $rc
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down ;;
  status) status ;;
  kill-node) kill_node "${2:?usage: $0 kill-node NAME}" ;;
  *) echo "usage: $0 up [--nodes N] | down | status | kill-node NAME" >&2; exit 2 ;;
esac
