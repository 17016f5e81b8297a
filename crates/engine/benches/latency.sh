#!/usr/bin/env bash
# The three latencies issue 3 benchmarks, as medians measured by hyperfine (no shell between it
# and the docker CLI): `docker run --rm busybox true`, `docker exec ID true`, and `docker stop`
# of a container whose PID 1 handles SIGTERM at once (its trap runs as soon as the signal
# arrives: the shell waits in `wait`, not in a `sleep` that must end first).
#
# Usage (as root, from the workspace root):
#   cargo build --release -p rmachine-engine -p rmachine-runtime
#   crates/engine/benches/latency.sh [TARGET_DIR]      # default: target/release
# ENGINE=dockerd measures Debian's dockerd 20.10 the same way (dockerd-env.sh).
# CGROUP=v2 runs engine and CLI in a mount namespace whose /sys/fs/cgroup is this hybrid host's
# cgroup v2 tree, as on the guest (pure v2; this tree has no controllers, so no limits apply).
# The exec floor is measured too: the CLI against instant-api.py, which answers at once.
# RUNS=N changes the number of runs (20). Needs: docker CLI, hyperfine, jq, busybox-static.
set -euo pipefail
if [ "${CGROUP:-}" = v2 ] && [ -z "${RMACHINE_BENCH_IN_NS:-}" ]; then
    exec unshare -m env RMACHINE_BENCH_IN_NS=1 bash -c \
        'mount --make-rslave / && mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec "$0" "$@"' \
        "$0" "$@"
fi
DEFAULT_RUNS=20
if [ "${ENGINE:-rmachine}" = dockerd ]; then
    # shellcheck source=dockerd-env.sh
    source "$(dirname "$0")/dockerd-env.sh"
else
    # shellcheck source=engine-env.sh
    source "$(dirname "$0")/engine-env.sh"
fi

median_ms() { jq -r '.results[0].median * 1000 | . * 10 | round / 10' "$1"; }
measure() { # NAME, then hyperfine arguments
    local name=$1
    shift
    hyperfine -N --style none --runs "$runs" --export-json "$work/$name.json" "$@" >/dev/null
}

measure run --warmup 3 'docker run --rm busybox true'

docker run -d --name exec-target busybox sleep 100000 >/dev/null
measure exec --warmup 3 'docker exec exec-target true'
docker rm -f exec-target >/dev/null

cat >"$work/fresh-stop-target" <<'SH'
#!/bin/sh
docker rm -f stop-target >/dev/null 2>&1
docker run -d --name stop-target busybox \
    sh -c 'trap "exit 0" TERM; while :; do sleep 1 & wait; done' >/dev/null
sleep 0.3
SH
chmod +x "$work/fresh-stop-target"
measure stop --prepare "$work/fresh-stop-target" 'docker stop stop-target'
docker rm -f stop-target >/dev/null 2>&1 || true

# The floor: the same exec against a server that answers at once and runs nothing.
python3 "$(dirname "$0")/instant-api.py" "$work/instant.sock" &
instant_pid=$!
for _ in $(seq 50); do [ -S "$work/instant.sock" ] && break; sleep 0.1; done
DOCKER_HOST="unix://$work/instant.sock" measure floor --warmup 3 'docker exec target true'
kill "$instant_pid"

echo "engine: ${ENGINE:-rmachine}, cgroups: ${CGROUP:-host}, runs: $runs (medians)"
echo "docker run --rm busybox true: $(median_ms "$work/run.json") ms"
echo "docker exec ID true:          $(median_ms "$work/exec.json") ms"
echo "docker stop (TERM handled):   $(median_ms "$work/stop.json") ms"
echo "docker exec, instant server:  $(median_ms "$work/floor.json") ms (the CLI's floor)"
