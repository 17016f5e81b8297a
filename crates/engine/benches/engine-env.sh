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
