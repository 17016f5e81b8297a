#!/usr/bin/env bash
# Benchmarks the VM path: `rmachine create` until the engine answers, the guest's boot breakdown
# (from the console log's uptime stamps), `docker run --rm busybox true` inside the VM, and
# stop/start. Software emulation (TCG) here; numbers go to docs/benchmarks.md.
#
# Usage (from the workspace root, after `cargo build --release -p rmachine -p rmachine-fixtures`
# and `guest/build.sh`):   tests/bench/machine.sh [RUNS]        (default RUNS=3)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
rmachine=target/release/rmachine
fixtures=target/release/rmachine-fixtures
for bin in "$rmachine" "$fixtures"; do
    [ -x "$bin" ] || { echo "missing $bin: cargo build --release -p rmachine -p rmachine-fixtures" >&2; exit 1; }
done
store=$(mktemp -d /tmp/rmachine-bench-store.XXXXXX)
export RMACHINE_STORAGE_PATH="$store" DOCKER_CONFIG="$store/docker-config"
cleanup() { "$rmachine" rm -f -y bench >/dev/null 2>&1 || true; rm -rf "$store"; }
trap cleanup EXIT

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l | xargs printf '%.2f'; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

echo "load: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores, $(qemu-system-x86_64 --version | head -1)"
creates=()
for i in $(seq "$runs"); do
    t0=$(now)
    "$rmachine" create -d qemu --no-progress --guest-image guest/out bench >/dev/null
    t1=$(now)
    creates+=("$(secs "$t0" "$t1")")
    console="$store/machines/bench/console.log"
    echo "create #$i: $(secs "$t0" "$t1") s; guest boot stamps (seconds since kernel start):"
    grep -E 'Run /init|rmachine-init: (storage ready|network|sshd: listening|engine|boot complete)' "$console" \
        | sed -E 's/^/    /' | head -12 || true
    [ "$i" = "$runs" ] || "$rmachine" rm -y bench >/dev/null
done
echo "create median: $(printf '%s\n' "${creates[@]}" | median) s (runs: ${creates[*]})"

eval "$("$rmachine" env --shell bash bench)"
"$fixtures" busybox "$store/busybox.tar" >/dev/null
docker load -i "$store/busybox.tar" >/dev/null
docker run --rm busybox true
lat=()
for _ in $(seq 10); do
    t0=$(now); docker run --rm busybox true; t1=$(now)
    lat+=("$(echo "($t1 - $t0) * 1000" | bc -l | xargs printf '%.0f')")
done
echo "docker run --rm busybox true in the VM: median $(printf '%s\n' "${lat[@]}" | median) ms (runs: ${lat[*]})"

t0=$(now); "$rmachine" stop bench >/dev/null; t1=$(now)
echo "stop: $(secs "$t0" "$t1") s"
t0=$(now); "$rmachine" start bench >/dev/null; t1=$(now)
echo "start (until the engine answers): $(secs "$t0" "$t1") s"
t0=$(now); "$rmachine" rm -y bench >/dev/null; t1=$(now)
echo "rm: $(secs "$t0" "$t1") s"
