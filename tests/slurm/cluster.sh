#!/usr/bin/env bash
# A one-node SLURM cluster on localhost for the tests: munged, slurmctld and slurmd run as root from a
# folder of their own (config, state, spool, logs, pid files), with no systemd.
#   tests/slurm/cluster.sh start DIR   install slurm-wlm and munge where missing, write DIR/slurm.conf, start
#                                      the daemons, wait until the node is idle; prints `export SLURM_CONF=...`
#   tests/slurm/cluster.sh stop DIR    stop exactly the daemons started for DIR (their pid files)
# Exit status 3 from start: this machine cannot run it (not root, no apt); the reason is on stderr.
set -euo pipefail

cmd=${1:?usage: cluster.sh start|stop DIR}
dir=$(realpath -m "${2:?usage: cluster.sh start|stop DIR}")
partition=${OTHINK_SLURM_PARTITION:-othink_test}

stop() {
  for name in slurmd slurmctld munged; do
    pidfile="$dir/run/$name.pid"
    [[ -f $pidfile ]] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$pidfile"
  done
}

cannot() { echo "cluster.sh: cannot start a localhost SLURM cluster here: $*" >&2; exit 3; }

start() {
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    [[ $(id -u) == 0 ]] || cannot "slurm-wlm and munge are not installed and installing them needs root"
    command -v apt-get >/dev/null || cannot "slurm-wlm and munge are not installed and there is no apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >"$dir.apt.log" 2>&1 \
      || cannot "apt-get install slurm-wlm munge failed (log: $dir.apt.log)"
  fi
  [[ $(id -u) == 0 ]] || cannot "the daemons run as root here (SlurmUser=root) and this is uid $(id -u)"
  mkdir -p "$dir"/{state,spool,log,run,munge}
  chmod 700 "$dir/munge"
  [[ -f $dir/munge/munge.key ]] || { dd if=/dev/urandom bs=1 count=1024 of="$dir/munge/munge.key" status=none; chmod 400 "$dir/munge/munge.key"; }
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
  cat >"$dir/slurm.conf" <<CONF
ClusterName=othink
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits for the step credential to expire (120 s by default).
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=5
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=${OTHINK_SLURMCTLD_PORT:-16817}
SlurmdPort=${OTHINK_SLURMD_PORT:-16818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobRequeue=1
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$partition Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF=$dir/slurm.conf
  munged -f --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munge.seed"
  slurmctld -f "$SLURM_CONF"
  slurmd -f "$SLURM_CONF"
  for _ in $(seq 100); do
    state=$(sinfo -h -p "$partition" -o %T 2>/dev/null || true)
    [[ $state == idle ]] && { echo "export SLURM_CONF=$SLURM_CONF"; return 0; }
    sleep 0.2
  done
  echo "cluster.sh: the node did not become idle in 20 s (state '$state'); logs in $dir/log" >&2
  stop
  exit 1
}

case $cmd in
  start) mkdir -p "$dir"; start ;;
  stop) stop ;;
  *) echo "usage: cluster.sh start|stop DIR" >&2; exit 2 ;;
esac
