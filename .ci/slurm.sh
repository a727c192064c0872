#!/usr/bin/env bash
# .ci/slurm.sh — bring a real one-node Slurm cluster up and down on loopback, for tests and CI.
#
#   bash .ci/slurm.sh install   # apt-get the Debian packages (skipped when already installed)
#   bash .ci/slurm.sh start     # munged + slurm.conf + slurmctld + slurmd, wait for the node to be idle
#   bash .ci/slurm.sh status    # daemons, node and queue
#   bash .ci/slurm.sh stop      # cancel jobs, stop the daemons by the pids in their pid files
#
# Needs root on Debian 12 (no systemd needed); Debian's Slurm 22.05 + munge on 127.0.0.1.
# If `start` fails halfway, run `stop` (e.g. from a trap): it cleans up whatever did start.
# Daemons are only ever signalled by the pid in their pid file (never by name), so the
# script never touches processes it did not start. `start` and `stop` are idempotent.
#
# Environment (all optional):
#   SLURM_CI_PARTITION      partition name to create (default: debug). profiles/slurm-test uses "debug".
#   SLURM_CI_START_TIMEOUT  seconds to wait for the node to become idle (default: 60)
#   SLURM_CI_STOP_TIMEOUT   seconds to wait for each daemon to exit (default: 30)
set -euo pipefail

PARTITION=${SLURM_CI_PARTITION:-debug}
START_TIMEOUT=${SLURM_CI_START_TIMEOUT:-60}
STOP_TIMEOUT=${SLURM_CI_STOP_TIMEOUT:-30}

PACKAGES=(slurmctld slurmd slurm-client munge)
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
CONF_MARKER="# Written by saematch .ci/slurm.sh"
RUN_DIR=/run/slurm
CTLD_PID=$RUN_DIR/slurmctld.pid
SLURMD_PID=$RUN_DIR/slurmd.pid
LOG_DIR=/var/log/slurm
CTLD_SPOOL=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
MUNGE_KEY=/etc/munge/munge.key
MUNGE_RUN=/run/munge
MUNGE_PID=$MUNGE_RUN/munged.pid

log() { printf '[slurm.sh] %s\n' "$*" >&2; }
die() { printf '[slurm.sh] ERROR: %s\n' "$*" >&2; exit 1; }

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root (uid 0), not uid $(id -u)"; }

# pid from a pid file, if that process is alive and is the expected program.
# (The name check only guards against a stale pid file whose pid was reused.)
live_pid() {  # live_pid PIDFILE COMM
    local file=$1 comm=$2 pid
    [[ -s $file ]] || return 1
    pid=$(tr -dc '0-9' <"$file")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]] || return 1
    echo "$pid"
}

packages_installed() {
    local p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || return 1
    done
}

cmd_install() {
    need_root
    if packages_installed; then
        log "already installed: ${PACKAGES[*]}"
        return 0
    fi
    command -v apt-get >/dev/null || die "apt-get not found: this script supports Debian/Ubuntu only"
    # Keep the packages' maintainer scripts from starting daemons during installation:
    # `start` owns their lifecycle (and pid files). Only add a policy-rc.d if none exists.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        added_policy=1
    fi
    local rc=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                "${PACKAGES[@]}"
    } || rc=$?
    [[ $added_policy -eq 1 ]] && rm -f "$policy"
    [[ $rc -eq 0 ]] || die "apt-get failed (exit $rc)"
    packages_installed || die "packages still not installed after apt-get: ${PACKAGES[*]}"
    log "installed: ${PACKAGES[*]}"
}

start_munge() {
    getent passwd munge >/dev/null || die "user 'munge' missing: run '$0 install' first"
    install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
    install -d -o munge -g munge -m 0755 "$MUNGE_RUN"
    if [[ ! -s $MUNGE_KEY ]]; then
        log "creating $MUNGE_KEY"
        dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 0400 "$MUNGE_KEY"
    if pid=$(live_pid "$MUNGE_PID" munged); then
        log "munged already running (pid $pid)"
    else
        runuser -u munge -- /usr/sbin/munged --force --pid-file="$MUNGE_PID"
    fi
    local i
    for ((i = 0; i < 50; i++)); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "munge does not work: 'munge -n | unmunge' fails (see /var/log/munge/munged.log)"
}

write_conf() {
    local host cpus mem_avail_kb mem_mb
    host=$(hostname -s)
    cpus=$(nproc)
    mem_avail_kb=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
    # A little under the free memory: slurmd drains a node whose RealMemory exceeds what it finds.
    mem_mb=$((mem_avail_kb * 9 / 10 / 1024))
    ((mem_mb >= 256)) || die "too little free memory for a test cluster (${mem_mb} MiB)"
    install -d -m 0755 "$CONF_DIR"
    if [[ -e $CONF ]] && ! grep -qF "$CONF_MARKER" "$CONF"; then
        local backup
        backup="$CONF.bak.$(date +%Y%m%d%H%M%S)"
        log "moving a foreign $CONF to $backup"
        mv "$CONF" "$backup"
    fi
    cat >"$CONF.tmp" <<CONF
$CONF_MARKER — one-node test cluster on loopback; overwritten by every 'start'.
ClusterName=saematch-ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# The snakemake SLURM plugin polls with squeue only while MinJobAge >= 3x its first status
# delay (otherwise it falls back to sacct, which cannot answer without accounting).
MinJobAge=600
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
StateSaveLocation=$CTLD_SPOOL
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldTimeout=120
SlurmdTimeout=300
InactiveLimit=0
KillWait=10
Waittime=0
NodeName=$host NodeHostname=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    mv "$CONF.tmp" "$CONF"
    chmod 0644 "$CONF"
    log "wrote $CONF (node $host, CPUs=$cpus, RealMemory=${mem_mb} MiB, partition $PARTITION)"
}

node_state() { sinfo -h -n "$(hostname -s)" -o '%T' 2>/dev/null | head -n1; }

cmd_start() {
    need_root
    packages_installed || die "Slurm packages not installed: run '$0 install' first"
    install -d -m 0755 "$RUN_DIR" "$LOG_DIR" "$CTLD_SPOOL" "$SLURMD_SPOOL"
    start_munge

    local ctld slurmd
    ctld=$(live_pid "$CTLD_PID" slurmctld) || ctld=""
    slurmd=$(live_pid "$SLURMD_PID" slurmd) || slurmd=""
    if [[ -z $ctld && -z $slurmd ]]; then
        write_conf
    elif [[ ! -e $CONF ]]; then
        die "daemons running (slurmctld=${ctld:-none} slurmd=${slurmd:-none}) but $CONF is missing; run '$0 stop' first"
    else
        log "keeping $CONF: daemons already running"
    fi

    if [[ -n $ctld ]]; then
        log "slurmctld already running (pid $ctld)"
    else
        # -c: start from a clean job queue (a test cluster must not rerun stale jobs).
        /usr/sbin/slurmctld -c || die "slurmctld failed to start; see $LOG_DIR/slurmctld.log"
    fi
    local deadline=$((SECONDS + START_TIMEOUT))
    until scontrol ping 2>/dev/null | grep -q 'is UP'; do
        ((SECONDS < deadline)) || {
            tail -n 20 "$LOG_DIR/slurmctld.log" >&2 || true
            die "slurmctld did not answer 'scontrol ping' within ${START_TIMEOUT}s"
        }
        sleep 0.5
    done

    if [[ -n $slurmd ]]; then
        log "slurmd already running (pid $slurmd)"
    else
        /usr/sbin/slurmd || die "slurmd failed to start; see $LOG_DIR/slurmd.log"
    fi

    local state=""
    while :; do
        state=$(node_state)
        # slurmctld may report a stale state for a while: also insist on a live slurmd.
        if live_pid "$SLURMD_PID" slurmd >/dev/null; then
            case $state in
                idle | mixed | allocated) break ;;
            esac
        fi
        if ((SECONDS >= deadline)); then
            scontrol show node "$(hostname -s)" >&2 || true
            tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
            die "node $(hostname -s) not idle within ${START_TIMEOUT}s (state: '${state:-unknown}')"
        fi
        sleep 0.5
    done
    log "cluster up: node $(hostname -s) is $state, partition $PARTITION"
}

stop_daemon() {  # stop_daemon PIDFILE COMM
    local file=$1 comm=$2 pid
    if ! pid=$(live_pid "$file" "$comm"); then
        log "$comm not running"
        rm -f "$file"
        return 0
    fi
    log "stopping $comm (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "$comm (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
    kill -0 "$pid" 2>/dev/null && die "$comm (pid $pid) is still alive"
    rm -f "$file"
}

cmd_stop() {
    need_root
    # Cancel what is still queued or running, so no slurmstepd/job outlives the cluster.
    if live_pid "$CTLD_PID" slurmctld >/dev/null && command -v squeue >/dev/null; then
        local jobs
        jobs=$(squeue -h -o '%A' 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            log "cancelling jobs: ${jobs//$'\n'/ }"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            local deadline=$((SECONDS + STOP_TIMEOUT))
            while [[ -n $(squeue -h -t PD,R,CG,S -o '%A' 2>/dev/null || true) ]] &&
                ((SECONDS < deadline)); do
                sleep 0.5
            done
        fi
    fi
    stop_daemon "$SLURMD_PID" slurmd
    stop_daemon "$CTLD_PID" slurmctld
    stop_daemon "$MUNGE_PID" munged
    log "cluster stopped"
}

cmd_status() {
    local rc=0 pid name file
    for name in munged slurmctld slurmd; do
        case $name in
            munged) file=$MUNGE_PID ;;
            slurmctld) file=$CTLD_PID ;;
            slurmd) file=$SLURMD_PID ;;
        esac
        if pid=$(live_pid "$file" "$name"); then
            echo "$name: running (pid $pid)"
        else
            echo "$name: not running"
            rc=3
        fi
    done
    if [[ $rc -eq 0 ]]; then
        sinfo || rc=3
        squeue || true
    fi
    return $rc
}

usage() {
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
}

case ${1:-} in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
esac
