#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for development and CI:
# munge, MariaDB + slurmdbd (accounting: submitit reads job states through sacct), slurmctld,
# slurmd, one partition, two declared (fake) GPUs and more declared CPUs than cores.
#
#   slurm/local-cluster.sh up       install Debian's packages if missing, start, wait for an idle node
#   slurm/local-cluster.sh down     stop exactly the daemons `up` started
#   slurm/local-cluster.sh status   which daemons run, and sinfo
#
# Environment: SUITE_SLURM_DIR (state and logs, default /var/tmp/suite-slurm),
# SUITE_SLURM_CPUS (declared CPUs, default 8). Needs root. It writes /etc/slurm/slurm.conf,
# and refuses to replace one that it did not write.
set -euo pipefail

STATE=${SUITE_SLURM_DIR:-/var/tmp/suite-slurm}
CPUS=${SUITE_SLURM_CPUS:-8}
HOST=$(hostname -s)
MARK="# written by suite slurm/local-cluster.sh"
CONF=/etc/slurm/slurm.conf
PACKAGES="slurmctld slurmd slurm-client munge slurmdbd mariadb-server"

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

install_packages() {
  local missing=()
  for p in $PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

write_configs() {
  if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    log "$CONF exists and was not written by this script; not replacing it"
    exit 1
  fi
  mkdir -p "$STATE"/{ctld,spool,log,dev}
  # Fake GPUs: gres.conf wants device files; links to /dev/null pass its checks.
  ln -sf /dev/null "$STATE/dev/gpu0"
  ln -sf /dev/null "$STATE/dev/gpu1"
  cat > "$CONF" <<EOF
$MARK
ClusterName=suite
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
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
AccountingStorageHost=127.0.0.1
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/none
# Quick turnaround for tests: kill 5 s after the signal, no grace over the time limit.
KillWait=5
OverTimeLimit=0
MinJobAge=600
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=16000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  cat > /etc/slurm/gres.conf <<EOF
$MARK
AutoDetect=off
NodeName=$HOST Name=gpu File=$STATE/dev/gpu[0-1]
EOF
  cat > /etc/slurm/slurmdbd.conf <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
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

start_slurm() {
  alive "$STATE/slurmdbd.pid" || slurmdbd
  wait_for 20 slurmdbd bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819'
  alive "$STATE/slurmctld.pid" || slurmctld
  wait_for 20 slurmctld scontrol ping
  alive "$STATE/slurmd.pid" || slurmd
  wait_for 30 "an idle node" bash -c "sinfo -h -n $HOST -o %t | grep -qE '^(idle|mix|alloc)'" || {
    scontrol update nodename="$HOST" state=resume 2>/dev/null || true
    wait_for 10 "an idle node" bash -c "sinfo -h -n $HOST -o %t | grep -qE '^(idle|mix|alloc)'"
  }
}

up() {
  local t0=$SECONDS
  install_packages
  write_configs
  start_munge
  start_mariadb
  start_slurm
  log "up in $((SECONDS - t0))s: node $HOST, $CPUS CPUs, 2 GPUs (fake), partition debug"
  log "state and logs: $STATE (logs in $STATE/log), config: $CONF"
}

down() {
  local pid
  for d in slurmd slurmctld slurmdbd mariadb munged; do
    if alive "$(pidfile $d)"; then
      pid=$(cat "$(pidfile $d)")
      kill "$pid" && log "stopped $d"
      wait_for 20 "$d to stop" bash -c "! kill -0 $pid 2>/dev/null" || true
    fi
  done
}

status() {
  local rc=0
  for d in munged mariadb slurmdbd slurmctld slurmd; do
    if alive "$(pidfile $d)"; then echo "$d: running"; else echo "$d: stopped"; rc=1; fi
  done
  [ $rc -eq 0 ] && sinfo
  return $rc
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
