#!/usr/bin/env bash
# Medians of `docker exec ID true`, `docker stop` of a container whose PID 1 handles SIGTERM,
# and `docker run --rm busybox true`, against rmachine-engine on this host.
#
# Usage (as root, from the workspace root):
#   cargo build --release -p rmachine-engine -p rmachine-runtime
#   crates/engine/benches/exec-stop.sh [TARGET_DIR]     # default: target/release
# Needs: docker CLI, /usr/bin/busybox (busybox-static). RUNS=N changes the number of runs (20).
set -euo pipefail
DEFAULT_RUNS=20
# shellcheck source=engine-env.sh
source "$(dirname "$0")/engine-env.sh"


ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

docker run -d --name target busybox sleep 100000 >/dev/null
docker exec target true
exec_times=()
for _ in $(seq "$runs"); do
    start=$(date +%s%N)
    docker exec target true
    exec_times+=("$(ms "$start")")
done
docker rm -f target >/dev/null

stop_times=()
for i in $(seq "$runs"); do
    docker run -d --name "stop$i" busybox sh -c 'trap "exit 0" TERM; while :; do sleep 0.1; done' >/dev/null
    sleep 0.3
    start=$(date +%s%N)
    docker stop "stop$i" >/dev/null
    stop_times+=("$(ms "$start")")
    docker rm "stop$i" >/dev/null
done

run_times=()
for _ in $(seq "$runs"); do
    start=$(date +%s%N)
    docker run --rm busybox true
    run_times+=("$(ms "$start")")
done

echo "docker exec ID true:         median $(printf '%s\n' "${exec_times[@]}" | median) ms"
echo "docker stop (handles TERM):  median $(printf '%s\n' "${stop_times[@]}" | median) ms"
echo "docker run --rm busybox true: median $(printf '%s\n' "${run_times[@]}" | median) ms"
