#!/usr/bin/env bash
# Stop the single-host SLURM cluster of slurm/local/start.sh. Idempotent. `--purge` also deletes its state
# (jobs, accounting database, logs), so the next start begins again at job id 1.
set -euo pipefail

PREFIX=${PIPELINE_SLURM_PREFIX:-/var/tmp/pipeline-slurm}
[ "$(id -u)" = 0 ] || { echo "slurm/local/stop.sh: run as root" >&2; exit 1; }

stop() {  # stop every process named $1, waiting for it to exit
    pkill -x "$1" 2>/dev/null || return 0
    for _ in $(seq 40); do pgrep -x "$1" >/dev/null || return 0; sleep 0.25; done
    pkill -9 -x "$1" 2>/dev/null || true
}
stop slurmd
stop slurmstepd
stop slurmctld
stop slurmdbd
stop mariadbd
sed -i '/# pipeline-slurm$/d' /etc/hosts
if [ "${1:-}" = "--purge" ]; then
    rm -rf "$PREFIX"
fi
echo "slurm-local: stopped"
