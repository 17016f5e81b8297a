#!/usr/bin/env bash
# Cold push, cold pull and warm pull (the image already present: only the manifest travels) of
# a multi-layer image of more than 50 MB (busybox, the host's Python standard library, 8 MiB of
# random data) between an engine and a local docker-registry, median of RUNS (5). Each run starts from an empty registry (push) and
# a store without the image (cold pull).
#
# Usage (as root, from the workspace root):
#   cargo build --release -p rmachine-engine -p rmachine-runtime
#   crates/engine/benches/pull.sh [TARGET_DIR]          # default: target/release
# ENGINE=dockerd measures Debian's dockerd 20.10 the same way (dockerd-env.sh);
# pull-compare.sh runs both in one run. Needs: docker CLI, Debian's docker-registry, bc.
set -euo pipefail
DEFAULT_RUNS=5
if [ "${ENGINE:-rmachine}" = dockerd ]; then
    # shellcheck source=dockerd-env.sh
    source "$(dirname "$0")/dockerd-env.sh"
    # dockerd runs in this host's network namespace (no bridge, no iptables).
    in_engine_netns=()
else
    # shellcheck source=engine-env.sh
    source "$(dirname "$0")/engine-env.sh"
    # The engine has a network namespace of its own: the registry runs in it, on its loopback.
    in_engine_netns=(nsenter -t "$engine_pid" -n)
fi

# Debian's own Python (not a pyenv or venv one on PATH, which may be ten times larger).
python_lib=${PYTHON_LIB:-$(/usr/bin/python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')}
port=$("${in_engine_netns[@]}" python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
host="127.0.0.1:$port"
registry_pid=""
start_registry() {
    rm -rf "$work/storage"
    mkdir -p "$work/storage"
    cat >"$work/registry.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/storage
  delete:
    enabled: true
http:
  addr: $host
YML
    "${in_engine_netns[@]}" docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
    registry_pid=$!
    for _ in $(seq 100); do
        "${in_engine_netns[@]}" bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null && return
        sleep 0.1
    done
    echo "registry did not start" >&2
    exit 1
}
stop_registry() {
    kill "$registry_pid"
    wait "$registry_pid" 2>/dev/null || true
    registry_pid=""
}

# Real Debian files (the host's Python standard library, ~55 MB in thousands of files: what
# compresses and unpacks like a distribution layer), then 8 MiB that does not compress.
docker run --network none --name l1 -v "$python_lib:/src:ro" busybox cp -a /src /python >/dev/null
docker commit l1 bench-step >/dev/null
docker run --network none --name l2 bench-step sh -c 'head -c 8388608 /dev/urandom > /random' >/dev/null
docker commit l2 bench-multi >/dev/null
docker rm l1 l2 >/dev/null
image="$host/bench/multi:latest"
docker tag bench-multi "$image"

now() { date +%s.%N; }
# User+system CPU seconds of the engine process, all its threads, plus those of its children
# it has waited for (/proc/PID/stat fields 14-17: utime, stime, cutime, cstime): far less
# sensitive to the machine's load than wall time. The children matter for dockerd 20.10: it
# pushes in its own process, but unpacks each pulled layer in a re-executed child
# (`docker-untar`, chrootarchive's invokeUnpack), and would inflate in an `unpigz` child if
# one were on the PATH dockerd-env.sh gives it (none on this host: it inflates in-process).
cpu_pid=${engine_pid:-${dockerd_pid:-}}
cpu() {
    awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15 + $16 + $17) / hz}' "/proc/$cpu_pid/stat"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
push_times=()
pull_times=()
warm_times=()
push_cpu=()
pull_cpu=()
# Each timed step starts with nothing left to write back from the step before (the registry's
# blobs, the removed image): rmachine-engine flushes what a pull unpacked (one syncfs of its
# root's filesystem, before publishing the layers) and would otherwise also pay for the
# previous step's dirty pages on that filesystem, which dockerd (no flush) leaves to the kernel.
settle() { [ -n "${NO_SETTLE:-}" ] || sync; }
for _ in $(seq "$runs"); do
    start_registry
    settle
    c0=$(cpu)
    t0=$(now)
    docker push "$image" >/dev/null
    t1=$(now)
    push_cpu+=("$(echo "$(cpu) - $c0" | bc)")
    push_times+=("$(echo "$t1 - $t0" | bc)")
    docker rmi "$image" bench-multi bench-step >/dev/null 2>&1 || true
    settle
    c0=$(cpu)
    t0=$(now)
    docker pull "$image" >/dev/null
    t1=$(now)
    pull_cpu+=("$(echo "$(cpu) - $c0" | bc)")
    pull_times+=("$(echo "$t1 - $t0" | bc)")
    settle
    t0=$(now)
    docker pull "$image" >/dev/null
    t1=$(now)
    warm_times+=("$(echo "$t1 - $t0" | bc)")
    # Back to the starting point: the image local again, the registry emptied next round.
    docker tag "$image" bench-multi
    stop_registry
done
size=$(docker image inspect -f '{{.Size}}' "$image")
echo "engine: ${ENGINE:-rmachine}; image: 3 layers, $((size / 1000000)) MB unpacked; $runs runs; load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "cold push, median: $(printf '%s\n' "${push_times[@]}" | median) s   (all: ${push_times[*]})"
echo "cold pull, median: $(printf '%s\n' "${pull_times[@]}" | median) s   (all: ${pull_times[*]})"
echo "warm pull, median: $(printf '%s\n' "${warm_times[@]}" | median) s   (all: ${warm_times[*]})"
echo "cpu push, median: $(printf '%s\n' "${push_cpu[@]}" | median) s   (engine user+sys, waited-for children included; all: ${push_cpu[*]})"
echo "cpu pull, median: $(printf '%s\n' "${pull_cpu[@]}" | median) s   (engine user+sys, waited-for children included; all: ${pull_cpu[*]})"
