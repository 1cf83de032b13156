#!/usr/bin/env bash
# Start or stop a single-node SLURM (munged + slurmctld + slurmd) whose whole state lives in one directory.
#
#   scripts/slurm_local.sh start DIR   # writes DIR/slurm.conf, starts the daemons, waits until the node is idle
#   scripts/slurm_local.sh stop DIR    # stops the daemons started for DIR (by the PIDs recorded there)
#
# Installs nothing: it needs `slurmctld slurmd slurm-client munge` from Debian
# (apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge).
# Clients (sbatch, squeue, scontrol, submitit) find this cluster through `export SLURM_CONF=DIR/slurm.conf`.
# Runs as root (this machine, CI): the daemons and the jobs run as the calling user.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action="$1"
dir="$(mkdir -p "$2" && cd "$2" && pwd)"

free_port() {
    python3 - <<'EOF'
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
EOF
}

stop() {
    # Its jobs first: a job's slurmstepd and processes outlive slurmd, so a test that failed while its job ran would
    # leave the job computing on the machine (and slowing everything after it).
    if [ -f "$dir/slurm.conf" ] && [ -f "$dir/slurmctld.pid" ] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
        SLURM_CONF="$dir/slurm.conf" scancel --user "$(id -un)" 2>/dev/null || true
        for _ in $(seq 100); do
            [ -z "$(SLURM_CONF="$dir/slurm.conf" squeue -h 2>/dev/null)" ] && break
            sleep 0.1
        done
    fi
    # Then only the processes this script started for $dir, by their recorded PIDs.
    for name in slurmd slurmctld munged; do
        pidfile="$dir/$name.pid"
        [ -f "$pidfile" ] || continue
        pid="$(cat "$pidfile")"
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
}

start() {
    for tool in munged slurmctld slurmd sinfo; do
        command -v "$tool" >/dev/null 2>&1 || {
            echo "$tool not found: install SLURM with apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge" >&2
            exit 3
        }
    done
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    chmod 700 "$dir"
    user="$(id -un)"
    host="$(hostname -s)"
    cpus="$(nproc)"

    # munge: a fresh key for this cluster only.
    key="$dir/munge.key"
    [ -f "$key" ] || { head -c 1024 /dev/urandom > "$key"; chmod 400 "$key"; }
    nohup setsid munged --foreground --force --key-file="$key" --socket="$dir/munge.socket" \
        --pid-file="$dir/munged.pidfile" --log-file="$dir/log/munged.log" --seed-file="$dir/munge.seed" \
        >"$dir/log/munged.out" 2>&1 < /dev/null &
    echo $! > "$dir/munged.pid"
    for _ in $(seq 50); do [ -S "$dir/munge.socket" ] && break; sleep 0.1; done
    [ -S "$dir/munge.socket" ] || { echo "munged did not start; see $dir/log/munged.log" >&2; stop; exit 1; }

    cat > "$dir/slurm.conf" <<EOF
ClusterName=harness-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=$user
SlurmdUser=$user
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
AuthInfo=socket=$dir/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pidfile
SlurmdPidFile=$dir/slurmd.pidfile
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
JobRequeue=1
KillWait=2
MinJobAge=300
SchedulerParameters=sched_interval=1
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=4096 State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF="$dir/slurm.conf"
    nohup setsid slurmctld -D -i -f "$dir/slurm.conf" >"$dir/log/slurmctld.out" 2>&1 < /dev/null &
    echo $! > "$dir/slurmctld.pid"
    nohup setsid slurmd -D -f "$dir/slurm.conf" >"$dir/log/slurmd.out" 2>&1 < /dev/null &
    echo $! > "$dir/slurmd.pid"

    for _ in $(seq 150); do
        state="$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)"
        case "$state" in idle*) echo "export SLURM_CONF=$dir/slurm.conf"; return 0 ;; esac
        sleep 0.2
    done
    echo "SLURM node did not become idle (state: '${state:-none}'); logs in $dir/log" >&2
    stop
    exit 1
}

case "$action" in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
