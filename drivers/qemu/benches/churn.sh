#!/usr/bin/env bash
# Does QEMU give back what the guest freed? (free page reporting, docs/boot-timings.md, ninth
# session.) Creates a machine, waits until docker answers and 10 s more, writes 300 MiB to a
# tmpfs in the guest, deletes it, and prints QEMU's RSS before, with the file, and 5, 15 and
# 30 s after the delete, the guest's used memory (MemTotal - MemAvailable) and QEMU's CPU time
# over those 30 s.
#
# Usage (workspace root, after `cargo build -p rmachine` and `guest/build.sh`):
#   drivers/qemu/benches/churn.sh [CREATE ARGS...]
# Environment: RMACHINE (default target/debug/rmachine), GUEST (default guest/out).
set -euo pipefail
cd "$(dirname "$0")/../../.."
cli=${RMACHINE:-target/debug/rmachine}
guest=${GUEST:-guest/out}
name=churn
scratch=$(mktemp -d /tmp/rmachine-churn.XXXXXX)
export RMACHINE_STORAGE_PATH=$scratch/store
cleanup() { "$cli" rm -f -y "$name" >/dev/null 2>&1 || true; rm -rf "$scratch"; }
trap cleanup EXIT

"$cli" create -d qemu --no-share --no-progress --guest-image "$guest" "$@" "$name" >/dev/null
(
    eval "$("$cli" env --shell bash "$name")"
    export DOCKER_CONFIG=$scratch/docker-config
    for _ in $(seq 3000); do docker version >/dev/null 2>&1 && exit 0; sleep 0.1; done
    exit 1
)
sleep 10
pid=$(cat "$scratch/store/machines/$name/qemu.pid")
rss() { awk '/^VmRSS:/ {print int($2 / 1024)}' "/proc/$pid/status"; }
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
echo "load $(cut -d' ' -f1-3 /proc/loadavg); image $(jq -r .version "$guest/manifest.json"); CLI $cli"
echo "QEMU RSS before: $(rss) MiB"
"$cli" ssh "$name" 'mkdir -p /run/churn && mount -t tmpfs -o size=400m tmpfs /run/churn &&
    dd if=/dev/zero of=/run/churn/x bs=1M count=300 2>/dev/null'
echo "with 300 MiB in a guest tmpfs: $(rss) MiB"
"$cli" ssh "$name" 'rm /run/churn/x && umount /run/churn'
t0=$(date +%s); c0=$(cpu)
for at in 5 15 30; do
    while (( $(date +%s) - t0 < at )); do sleep 0.5; done
    used=$("$cli" ssh "$name" cat /proc/meminfo \
        | awk '/^MemTotal:/ {t=$2} /^MemAvailable:/ {a=$2} END {print int((t - a) / 1024)}')
    echo "freed +${at}s: $(rss) MiB, guest used $used MiB"
done
echo "QEMU CPU over the 30 s after the delete: $(echo "($(cpu) - $c0) / $(getconf CLK_TCK)" | bc -l | xargs printf '%.2f') s"
