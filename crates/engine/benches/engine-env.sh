# Sourced by the engine benchmarks: starts a release rmachine-engine on a private socket with a
# locally built busybox image loaded, and sets DOCKER_HOST for the docker CLI. The caller sets
# DEFAULT_RUNS; RUNS=N overrides it. Cleans up on exit.

target=${1:-target/release}
runs=${RUNS:-$DEFAULT_RUNS}
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

# shellcheck source=busybox-image.sh
source "$(dirname "${BASH_SOURCE[0]}")/busybox-image.sh"

# In a network namespace of its own (lo up): the bridge, veths and NAT table of the engine's
# containers must not land on this host's. unshare and sh exec: $! is the engine's PID.
unshare --net sh -c 'ip link set lo up && exec "$@"' sh \
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
