#!/usr/bin/env bash
# Medians of `docker exec ID true`, `docker stop` of a container whose PID 1 handles SIGTERM,
# and `docker run --rm busybox true`, against rmachine-engine on this host.
#
# Usage (as root, from the workspace root):
#   cargo build --release -p rmachine-engine -p rmachine-runtime
#   crates/engine/benches/exec-stop.sh [TARGET_DIR]     # default: target/release
# Needs: docker CLI, /usr/bin/busybox (busybox-static). RUNS=N changes the number of runs (20).
set -euo pipefail

target=${1:-target/release}
runs=${RUNS:-20}
engine="$target/rmachine-engine"
runtime="$target/rmachine-runtime"
for bin in "$engine" "$runtime"; do
    [ -x "$bin" ] || { echo "missing $bin: build it first" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }

work=$(mktemp -d /tmp/rmachine-bench.XXXXXX)
engine_pid=
cleanup() {
    if [ -n "$engine_pid" ]; then
        kill -TERM "$engine_pid" 2>/dev/null || true
        wait "$engine_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# A one-layer busybox image in `docker save` format.
mkdir -p "$work/rootfs/bin" "$work/rootfs/etc" "$work/rootfs/tmp" "$work/img"
cp /usr/bin/busybox "$work/rootfs/bin/busybox"
for applet in $(/usr/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$work/rootfs/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$work/rootfs/etc/passwd"
printf 'root:x:0:\n' >"$work/rootfs/etc/group"
tar -C "$work/rootfs" -cf "$work/layer.tar" .
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
mkdir -p "$work/img/$diff_id"
mv "$work/layer.tar" "$work/img/$diff_id/layer.tar"
cat >"$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","created":"2024-01-01T00:00:00Z",
 "config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]},
 "rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]}}
JSON
config_id=$(sha256sum "$work/config.json" | cut -d' ' -f1)
mv "$work/config.json" "$work/img/$config_id.json"
printf '[{"Config":"%s.json","RepoTags":["busybox:latest"],"Layers":["%s/layer.tar"]}]' \
    "$config_id" "$diff_id" >"$work/img/manifest.json"
tar -C "$work/img" -cf "$work/busybox.tar" .

"$engine" --data-root "$work/data" -H "unix://$work/docker.sock" --runtime "$runtime" \
    --log-level warn 2>"$work/engine.log" &
engine_pid=$!
export DOCKER_HOST="unix://$work/docker.sock" DOCKER_CONFIG="$work/docker-config"
for _ in $(seq 100); do
    docker version >/dev/null 2>&1 && break
    sleep 0.1
done
docker load -i "$work/busybox.tar"
docker run --rm busybox true # warm the page cache


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
