#!/usr/bin/env bash
# A real one-node Slurm cluster on localhost, for nanugpt's Slurm tests and for trying the
# Slurm launcher on a workstation. Needs root (munged, slurmctld and slurmd run as root).
#
#   launch/slurm/local_cluster.sh start    # installs slurm-wlm + munge (apt) if missing, starts
#   launch/slurm/local_cluster.sh status
#   launch/slurm/local_cluster.sh stop     # stops the daemons this script started
#   export SLURM_CONF=/tmp/nanugpt-slurm/slurm.conf   # then sbatch/srun/squeue talk to it
#
# All state (config, munge key and socket, spool dirs, logs, pid files) lives under one dir,
# $NANUGPT_SLURM_DIR (default /tmp/nanugpt-slurm); nothing under /etc is changed. The node
# declares $NANUGPT_SLURM_CPUS CPUs (default 8, whatever the machine has: SlurmdParameters=
# config_overrides), so a 2-job x 2-task sweep runs at once even on a 2-core machine.
set -euo pipefail

STATE=${NANUGPT_SLURM_DIR:-/tmp/nanugpt-slurm}
CPUS=${NANUGPT_SLURM_CPUS:-8}
CTLD_PORT=${NANUGPT_SLURMCTLD_PORT:-6817}
SLURMD_PORT=${NANUGPT_SLURMD_PORT:-6818}
NODE=$(hostname -s)
CONF=$STATE/slurm.conf
export SLURM_CONF=$CONF

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "local_cluster.sh: munged, slurmctld and slurmd must run as root here; rerun with sudo." >&2
        exit 1
    fi
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null && command -v munged >/dev/null; then
        return
    fi
    echo "Installing slurm-wlm and munge (apt-get) ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q || true
    apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null
}

write_config() {
    mkdir -p "$STATE"/{munge,ctld,spool,log}
    chmod 700 "$STATE/munge"
    if [ ! -s "$STATE/munge/munge.key" ]; then
        dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
        chmod 400 "$STATE/munge/munge.key"
    fi
    cat >"$CONF" <<EOF
# Written by launch/slurm/local_cluster.sh: a one-node cluster on localhost.
ClusterName=nanugpt-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/munge/munge.socket
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# No cgroups in a container: track processes by parentage, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# Declare more CPUs than the machine has, so small test jobs run side by side.
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
# Short waits so tests are quick: SIGTERM -> SIGKILL after 5 s; finished jobs linger 5 min.
KillWait=5
MinJobAge=300
SchedulerParameters=sched_interval=2
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=4096 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
}

running() {  # running <pid file>
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

start() {
    need_root
    install_packages
    write_config
    if ! running "$STATE/munge/munged.pid"; then
        munged --force --socket="$STATE/munge/munge.socket" --key-file="$STATE/munge/munge.key" \
            --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/log/munged.log" \
            --seed-file="$STATE/munge/munged.seed"
    fi
    running "$STATE/slurmctld.pid" || slurmctld -f "$CONF"
    running "$STATE/slurmd.pid" || slurmd -f "$CONF" -N "$NODE"
    for _ in $(seq 60); do
        if sinfo -h -N -o "%t" 2>/dev/null | grep -Eq "^(idle|mix|alloc)"; then
            echo "Slurm is up: node $NODE, $CPUS CPUs, partition debug."
            echo "export SLURM_CONF=$CONF"
            return
        fi
        sleep 1
    done
    echo "local_cluster.sh: the node did not come up within 60 s. Logs: $STATE/log/" >&2
    tail -n 20 "$STATE"/log/*.log >&2 || true
    exit 1
}

stop() {
    # Cancel this cluster's jobs first: slurmd with proctrack/linuxproc would leave their processes behind.
    if running "$STATE/slurmctld.pid" && [ -n "$(squeue -h -o %i 2>/dev/null)" ]; then
        scancel --full $(squeue -h -o %i) 2>/dev/null || true
        for _ in $(seq 30); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 1; done
    fi
    for pid_file in "$STATE/slurmd.pid" "$STATE/slurmctld.pid" "$STATE/munge/munged.pid"; do
        if running "$pid_file"; then
            kill "$(cat "$pid_file")"
            for _ in $(seq 20); do running "$pid_file" || break; sleep 0.5; done
        fi
        rm -f "$pid_file"
    done
    echo "Slurm stopped (state kept in $STATE)."
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) sinfo && squeue ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
