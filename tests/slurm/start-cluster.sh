#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine for the tests marked `slurm` (Debian/Ubuntu,
# as root): install slurmctld, slurmd, slurm-client and munge from the OS packages if missing,
# create the munge key, start munged, write a minimal slurm.conf (this machine as the one node
# of the partition `debug`), start slurmctld and slurmd and wait until `sinfo` shows the
# partition idle. Running it again while the cluster is up changes nothing.
#
#   sudo tests/slurm/start-cluster.sh          # then: python -m pytest -m slurm
#
# State, spool and daemon logs go to $MIXERBENCH_SLURM_DIR (default /tmp/mixerbench-slurm).
# The configuration is written to /etc/slurm/slurm.conf, where sbatch, srun and sinfo look by
# default (so the tests run the commands exactly as a user types them); a slurm.conf this
# script did not write is never replaced.
set -euo pipefail

PARTITION=debug
STATE=${MIXERBENCH_SLURM_DIR:-/tmp/mixerbench-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by mixerbench tests/slurm/start-cluster.sh"

say() { echo "start-cluster: $*" >&2; }

partition_up() {
    local state
    state=$(timeout 10 sinfo --noheader --partition "$PARTITION" --format %T 2>/dev/null) || return 1
    [[ "$state" =~ ^(idle|mixed|allocated)$ ]]
}

if command -v sinfo >/dev/null && partition_up; then
    say "the cluster is up (partition $PARTITION: $(sinfo -h -p "$PARTITION" -o %T))"
    exit 0
fi
if [[ $(id -u) != 0 ]]; then
    say "needs root (installs packages, starts munged, slurmctld and slurmd); run it with sudo"
    exit 1
fi

# 1. Packages (Debian 12 ships SLURM 22.05).
missing=()
for cmd in slurmctld:slurmctld slurmd:slurmd sinfo:slurm-client munged:munge; do
    command -v "${cmd%%:*}" >/dev/null || missing+=("${cmd##*:}")
done
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || { say "no apt-get: install ${missing[*]} with your OS's packages"; exit 1; }
    say "installing ${missing[*]}"
    apt-get update -qq
    # policy-rc.d in containers stops the packages' services from starting: we start them below
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. munge: a key, then the daemon (slurmctld, slurmd and the clients authenticate through it).
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=128 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- munged
    for _ in $(seq 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
fi

# 3. slurm.conf: this machine as the one node. Its cores may be shared by up to 4 jobs each
# (OverSubscribe=FORCE:4): the tests' cells are tiny one-thread runs, and sharing lets their
# independent scenarios run at once on a 2-core machine. proctrack/linuxproc and task/none need
# no cgroups (containers rarely delegate them); no accounting database (sacct is unavailable,
# as on many lab clusters). A requeued job may start again after the job credential expires
# (cred_expire, 120 s by default), then waits for a scheduling pass (every 30-60 s by
# default): 10 s and 2 s here keep the requeue tests short.
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
if [[ -e $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
    say "$CONF exists and was not written by this script: not replacing it"
    exit 1
fi
mkdir -p /etc/slurm "$STATE"/ctld "$STATE"/d "$STATE"/log
cat >"$CONF.tmp" <<CONF
$MARK
ClusterName=mixerbench
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
SlurmdParameters=config_overrides
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
mv "$CONF.tmp" "$CONF"

# 4. The daemons (each forks into the background), then wait for the partition.
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 120); do
    if partition_up; then
        say "the cluster is up: $(sinfo --version), partition $PARTITION on $HOST ($CPUS cores, $MEM_MB MB)"
        exit 0
    fi
    sleep 0.5
done
say "partition $PARTITION did not come up within 60 s; see $STATE/log/"
sinfo >&2 || true
exit 1
