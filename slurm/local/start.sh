#!/usr/bin/env bash
# A real single-host SLURM cluster for the tests, CI and trying the cluster flow on a workstation:
# munge, MariaDB + slurmdbd (accounting, so sacct works), slurmctld and two virtual nodes node1, node2
# (one slurmd each), each with 4 CPUs and 4 fake GPUs. Idempotent; root required; no systemd needed.
#   sudo slurm/local/start.sh          then   sinfo; sbatch ...;   slurm/local/stop.sh
# Everything it writes lives under $PREFIX, except /etc/slurm/*.conf and the node names in /etc/hosts.
set -euo pipefail

PREFIX=${PIPELINE_SLURM_PREFIX:-/var/tmp/pipeline-slurm}
NODES=${PIPELINE_SLURM_NODES:-2}
CPUS=${PIPELINE_SLURM_CPUS:-4}
GPUS=${PIPELINE_SLURM_GPUS:-4}
DB_PORT=${PIPELINE_SLURM_DB_PORT:-13306}
CLUSTER=local

[ "$(id -u)" = 0 ] || { echo "slurm/local/start.sh: run as root" >&2; exit 1; }
log() { echo "slurm-local: $*"; }

packages="munge slurmctld slurmd slurm-client slurmdbd mariadb-server"
missing=""
for package in $packages; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing="$missing $package"
done
if [ -n "$missing" ]; then
    log "installing$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

nodes_up() { sinfo -h -N -o "%N %t" 2>/dev/null | grep -cE " (idle|mix|alloc)$" || true; }
if [ "$(nodes_up)" = "$NODES" ]; then
    log "already running ($NODES nodes up)"
    exit 0
fi

mkdir -p "$PREFIX"/{etc,log,run,state,dev,mysql}
for ((k = 1; k <= NODES; k++)); do mkdir -p "$PREFIX/spool/node$k"; done
chown -R slurm:slurm "$PREFIX"/{log,run,state,spool}

# Node names resolve to this host while the cluster runs (stop.sh removes the line).
grep -q "# pipeline-slurm" /etc/hosts || \
    echo "127.0.0.1 $(seq -f 'node%g' -s ' ' 1 "$NODES") # pipeline-slurm" >> /etc/hosts

# munge: the key comes with the package; the daemon runs as the munge user.
mkdir -p /run/munge && chown munge:munge /run/munge
[ -f /etc/munge/munge.key ] || runuser -u munge -- mungekey --create
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --force  # --force: past a stale socket left by a killed munged
fi

# Fake GPUs: gres.conf needs character devices (a regular file is rejected).
for ((g = 0; g < GPUS; g++)); do
    [ -c "$PREFIX/dev/gpu$g" ] || mknod "$PREFIX/dev/gpu$g" c 1 3
done

cat > /etc/slurm/slurm.conf <<EOF
# Written by slurm/local/start.sh: a single-host test cluster under $PREFIX.
ClusterName=$CLUSTER
SlurmctldHost=$(hostname)(127.0.0.1)
SlurmUser=slurm
SlurmctldPort=6817
AuthType=auth/munge
StateSaveLocation=$PREFIX/state
SlurmdSpoolDir=$PREFIX/spool/%n
SlurmctldPidFile=$PREFIX/run/slurmctld.pid
SlurmdPidFile=$PREFIX/run/slurmd-%n.pid
SlurmctldLogFile=$PREFIX/log/slurmctld.log
SlurmdLogFile=$PREFIX/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
GresTypes=gpu
ReturnToService=2
KillWait=5
# A requeued job waits cred_expire + 1 s before it may start again (default 120 s).
AuthInfo=cred_expire=10
MinJobAge=600
JobCompType=jobcomp/filetxt
JobCompLoc=$PREFIX/log/jobcomp.txt
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
NodeName=node[1-$NODES] NodeHostname=$(hostname) NodeAddr=127.0.0.1 Port=17001-$((17000 + NODES)) CPUs=$CPUS RealMemory=8000 Gres=gpu:$GPUS State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
echo "NodeName=node[1-$NODES] Name=gpu File=$PREFIX/dev/gpu[0-$((GPUS - 1))]" > /etc/slurm/gres.conf

# Accounting: MariaDB in the prefix on 127.0.0.1, then slurmdbd.
if [ ! -d "$PREFIX/mysql/mysql" ]; then
    mariadb-install-db --user=mysql --datadir="$PREFIX/mysql" --auth-root-authentication-method=socket \
        >"$PREFIX/log/mariadb-install.log" 2>&1
fi
chown -R mysql:mysql "$PREFIX/mysql"
socket=$PREFIX/run/mysql.sock
if ! mariadb-admin --socket="$socket" ping >/dev/null 2>&1; then
    chmod 1777 "$PREFIX/run"
    rm -f "$socket" "$socket.lock" "$PREFIX/run/mysql.pid"  # left by a killed server; nothing is listening
    setsid mariadbd --user=mysql --datadir="$PREFIX/mysql" --socket="$socket" --bind-address=127.0.0.1 \
        --port="$DB_PORT" --pid-file="$PREFIX/run/mysql.pid" --log-error="$PREFIX/mysql/error.log" \
        </dev/null >/dev/null 2>&1 &
    for _ in $(seq 60); do mariadb-admin --socket="$socket" ping >/dev/null 2>&1 && break; sleep 0.5; done
    mariadb-admin --socket="$socket" ping >/dev/null 2>&1 || {
        echo "slurm/local/start.sh: MariaDB did not start; see $PREFIX/mysql/error.log" >&2; exit 1; }
fi
mariadb --socket="$socket" -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"

cat > /etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=slurm
PidFile=$PREFIX/run/slurmdbd.pid
LogFile=$PREFIX/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
EOF
chown slurm:slurm /etc/slurm/slurmdbd.conf && chmod 600 /etc/slurm/slurmdbd.conf

pgrep -x slurmdbd >/dev/null || slurmdbd
for _ in $(seq 60); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.5; done
sacctmgr -n list cluster format=cluster | grep -qw "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null

pgrep -x slurmctld >/dev/null || slurmctld
for _ in $(seq 60); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.5; done
for ((k = 1; k <= NODES; k++)); do
    pgrep -f "slurmd -N node$k\$" >/dev/null || slurmd -N "node$k"
done

for _ in $(seq 120); do
    up=$(nodes_up)
    [ "$up" = "$NODES" ] && break
    sleep 0.5
done
if [ "$up" != "$NODES" ]; then
    echo "slurm/local/start.sh: only $up of $NODES nodes came up; see $PREFIX/log/" >&2
    sinfo -N >&2
    exit 1
fi
log "up: $NODES nodes x $CPUS CPUs x $GPUS fake GPUs, partition debug, accounting on; logs in $PREFIX/log"
