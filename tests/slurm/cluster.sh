#!/usr/bin/env bash
# A real two-node Slurm cluster on this machine, for the launcher tests (DESIGN.md, "Launching and SLURM").
#
#   tests/slurm/cluster.sh start   # installs Debian's slurmctld, slurmd, munge if missing (as root), starts them
#   tests/slurm/cluster.sh stop
#   tests/slurm/cluster.sh env     # prints `export SLURM_CONF=...` for clients (sbatch, squeue, scontrol)
#
# Debian's build has MULTIPLE_SLURMD=yes, so nodes n1 and n2 are two slurmd daemons on ports
# 17001/17002, both at 127.0.0.1. Node names are not in DNS: jobs take the master address from
# Slurm's NodeAddr. Everything lives under $JEVONS_SLURM_DIR (default /tmp/jevons-slurm).
set -euo pipefail

ROOT=${JEVONS_SLURM_DIR:-/tmp/jevons-slurm}
CONF=$ROOT/slurm.conf
NODES=(n1 n2)

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
    return
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "cluster.sh: slurmctld, slurmd and munge are missing and installing them needs root" >&2
    exit 1
  fi
  echo "cluster.sh: installing slurmctld, slurmd, slurm-client and munge (Debian packages)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
}

write_config() {
  mkdir -p "$ROOT"/{state,log,run}
  for node in "${NODES[@]}"; do mkdir -p "$ROOT/spool/$node"; done
  local cpus
  cpus=$(nproc)
  cat >"$CONF" <<EOF
ClusterName=jevons
SlurmctldHost=$(hostname)(127.0.0.1)
SlurmctldPort=16817
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$ROOT/state
SlurmdSpoolDir=$ROOT/spool/%n
SlurmctldPidFile=$ROOT/run/slurmctld.pid
SlurmdPidFile=$ROOT/run/slurmd-%n.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=300
SlurmdTimeout=60
InactiveLimit=0
NodeName=n1 NodeAddr=127.0.0.1 Port=17001 CPUs=$cpus RealMemory=4000 State=UNKNOWN
NodeName=n2 NodeAddr=127.0.0.1 Port=17002 CPUs=$cpus RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
}

start_munge() {
  if pgrep -x munged >/dev/null; then return; fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge
  chmod 0755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  runuser -u munge -- /usr/sbin/munged
}

wait_for_nodes() {
  for _ in $(seq 1 60); do
    local idle
    idle=$(SLURM_CONF=$CONF sinfo -h -N -o "%N %t" 2>/dev/null | grep -c "idle" || true)
    if [ "$idle" = "${#NODES[@]}" ]; then return 0; fi
    sleep 1
  done
  echo "cluster.sh: nodes did not become idle; see $ROOT/log" >&2
  SLURM_CONF=$CONF sinfo -N >&2 || true
  exit 1
}

start() {
  install_packages
  stop_daemons
  write_config
  start_munge
  SLURM_CONF=$CONF slurmctld -c -f "$CONF"
  for node in "${NODES[@]}"; do
    SLURM_CONF=$CONF slurmd -N "$node" -f "$CONF"
  done
  wait_for_nodes
  echo "cluster.sh: nodes ${NODES[*]} idle; export SLURM_CONF=$CONF" >&2
}

stop_daemons() {
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
  for _ in $(seq 1 20); do
    pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || return 0
    sleep 0.5
  done
  pkill -9 -x slurmd 2>/dev/null || true
  pkill -9 -x slurmctld 2>/dev/null || true
}

case "${1:-}" in
  start) start ;;
  stop) stop_daemons ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
