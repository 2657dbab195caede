#!/usr/bin/env bash
# A one-node SLURM cluster on localhost for integration tests (root only).
#   cluster.sh install        install slurm-wlm and munge from Debian's packages if missing
#   cluster.sh start DIR      write DIR/slurm.conf, start munged, slurmctld and slurmd
#   cluster.sh stop DIR       stop the daemons started by `start DIR`
# Clients find the cluster with SLURM_CONF=DIR/slurm.conf.
set -euo pipefail

cmd=${1:?usage: cluster.sh install|start DIR|stop DIR}

install() {
    if command -v slurmctld >/dev/null && command -v munged >/dev/null; then
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null
}

start() {
    local dir=$1
    mkdir -p "$dir"/state "$dir"/spool "$dir"/log
    local host cpus mem
    host=$(hostname -s)
    cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc honours OMP_NUM_THREADS
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
    cat > "$dir/slurm.conf" <<CONF
ClusterName=adept-test
SlurmctldHost=$host
SlurmUser=root
SlurmctldPort=$(( 20000 + RANDOM % 20000 ))
SlurmdPort=$(( 40000 + RANDOM % 20000 ))
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
MinJobAge=600
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
    : > "$dir/cgroup.conf"
    if ! pgrep -x munged >/dev/null; then
        mkdir -p /run/munge && chown munge:munge /run/munge
        if id munge >/dev/null 2>&1; then
            runuser -u munge -- /usr/sbin/munged
        else
            /usr/sbin/munged --force
        fi
    fi
    export SLURM_CONF=$dir/slurm.conf
    /usr/sbin/slurmctld -i
    /usr/sbin/slurmd
    for _ in $(seq 60); do
        if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
            return 0
        fi
        sleep 0.5
    done
    echo "cluster.sh: the node did not come up; see $dir/log" >&2
    return 1
}

stop() {
    local dir=$1 pidfile
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
        if [[ -f $pidfile ]]; then
            kill "$(cat "$pidfile")" 2>/dev/null || true
        fi
    done
}

case $cmd in
    install) install ;;
    start) start "${2:?DIR}" ;;
    stop) stop "${2:?DIR}" ;;
    *) echo "cluster.sh: unknown command $cmd" >&2; exit 2 ;;
esac
