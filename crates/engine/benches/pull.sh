#!/usr/bin/env bash
# Cold push and cold pull of a multi-layer image (busybox + two layers of 16 MiB of random
# data) between rmachine-engine and a local docker-registry on 127.0.0.1, median of 5 runs.
# Each run starts from an empty registry (push) and an image store without the image (pull).
# Needs root, Debian's docker-registry, the docker CLI, and `cargo build --workspace --bins`
# (or set TARGET=target/release after a release build).
set -euo pipefail
cd "$(dirname "$0")/../../.."
TARGET=${TARGET:-target/debug}
RUNS=${RUNS:-5}
work=$(mktemp -d /tmp/rmachine-bench-pull.XXXXXX)
engine_pid=""; registry_pid=""
cleanup() {
  [ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null || true
  [ -n "$engine_pid" ] && kill "$engine_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
host="127.0.0.1:$port"
start_registry() {
  rm -rf "$work/storage"; mkdir -p "$work/storage"
  cat > "$work/registry.yml" <<YML
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
  docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
  registry_pid=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return; sleep 0.1; done
  echo "registry did not start" >&2; exit 1
}
stop_registry() { kill "$registry_pid"; wait "$registry_pid" 2>/dev/null || true; registry_pid=""; }

"$TARGET/rmachine-engine" --data-root "$work/data" -H "unix://$work/docker.sock" \
  --runtime "$TARGET/rmachine-runtime" >"$work/engine.log" 2>&1 &
engine_pid=$!
export DOCKER_HOST="unix://$work/docker.sock" DOCKER_CONFIG="$work/docker-config"
for _ in $(seq 100); do docker version >/dev/null 2>&1 && break; sleep 0.1; done

"$TARGET/rmachine-fixtures" busybox "$work/busybox.tar" >/dev/null
docker load -i "$work/busybox.tar" >/dev/null
docker run --name l1 busybox sh -c 'head -c 16777216 /dev/urandom > /one' >/dev/null
docker commit l1 bench-step >/dev/null
docker run --name l2 bench-step sh -c 'head -c 16777216 /dev/urandom > /two' >/dev/null
docker commit l2 bench-multi >/dev/null
docker rm l1 l2 >/dev/null
image="$host/bench/multi:latest"
docker tag bench-multi "$image"

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
push_times=(); pull_times=()
for i in $(seq "$RUNS"); do
  start_registry
  t0=$(now); docker push "$image" >/dev/null; t1=$(now)
  push_times+=("$(echo "$t1 - $t0" | bc)")
  docker rmi "$image" bench-multi bench-step busybox >/dev/null 2>&1 || true
  t0=$(now); docker pull "$image" >/dev/null; t1=$(now)
  pull_times+=("$(echo "$t1 - $t0" | bc)")
  # Back to the starting point: the image local again, registry emptied next round.
  docker tag "$image" bench-multi
  stop_registry
done
size=$(docker image inspect -f '{{.Size}}' "$image")
echo "image: 3 layers, $((size / 1048576)) MiB unpacked; $RUNS runs"
echo "cold push, median: $(printf '%s\n' "${push_times[@]}" | median) s   (all: ${push_times[*]})"
echo "cold pull, median: $(printf '%s\n' "${pull_times[@]}" | median) s   (all: ${pull_times[*]})"
