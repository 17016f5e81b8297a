# Sourced by comparison runs: starts Debian's containerd + dockerd 20.10 (extracted, not
# installed: `apt-get download docker.io containerd runc tini` and `dpkg -x` each into
# /opt/dockerd-compare/root, or DOCKERD_ROOT) on a private socket and data root, loads the same
# busybox image as engine-env.sh, and sets DOCKER_HOST/DOCKER_CONFIG for the docker CLI. The
# caller may set DEFAULT_RUNS; RUNS=N overrides it. Leaves the host's netfilter and sysctls
# alone (no iptables, no bridge, no IP forwarding). Cleans up processes, mounts and files on exit.

dockerd_root=${DOCKERD_ROOT:-/opt/dockerd-compare/root}
runs=${RUNS:-${DEFAULT_RUNS:-20}}
for bin in usr/sbin/dockerd usr/bin/containerd usr/bin/containerd-shim-runc-v2 usr/sbin/runc \
    usr/bin/docker-init; do
    [ -x "$dockerd_root/$bin" ] || { echo "missing $dockerd_root/$bin: extract the debs first" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }

work=$(mktemp -d /tmp/dockerd-compare.XXXXXX)
containerd_pid=
dockerd_pid=
# cgroups dockerd creates (cgroupfs driver, parent "docker") that did not exist before us
new_cgroups=()
for parent in /sys/fs/cgroup /sys/fs/cgroup/*; do
    [ -e "$parent/cgroup.procs" ] && [ ! -e "$parent/docker" ] && new_cgroups+=("$parent/docker")
done

dockerd_cleanup() {
    if [ -n "$dockerd_pid" ]; then
        # Remove containers through the API first, so containerd's shims and mounts go too.
        local ids
        ids=$(docker ps -aq 2>/dev/null) || true
        [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
        kill -TERM "$dockerd_pid" 2>/dev/null || true
        wait "$dockerd_pid" 2>/dev/null || true
    fi
    if [ -n "$containerd_pid" ]; then
        kill -TERM "$containerd_pid" 2>/dev/null || true
        wait "$containerd_pid" 2>/dev/null || true
    fi
    # Anything still mounted under the scratch dir (overlays, netns bind mounts, shm), deepest first.
    local mnt
    awk -v w="$work" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r |
        while read -r mnt; do
            umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
        done
    # The shims leave their container cgroups a moment after they exit: retry briefly.
    local cg try
    for cg in "${new_cgroups[@]}"; do
        for try in 1 2 3 4 5 6 7 8 9 10; do
            [ -d "$cg" ] || break
            find "$cg" -mindepth 1 -depth -type d -exec rmdir {} + 2>/dev/null
            rmdir "$cg" 2>/dev/null && break
            sleep 0.2
        done
    done
    rm -rf "$work"
}
trap dockerd_cleanup EXIT

# shellcheck source=busybox-image.sh
source "$(dirname "${BASH_SOURCE[0]}")/busybox-image.sh"

# The daemons find runc, the shim and docker-init on PATH; give them only those, so the
# docker 20.10 CLI shipped in the same debs never shadows the caller's docker.
mkdir -p "$work/bin" "$work/opt"
for bin in usr/sbin/dockerd usr/bin/containerd usr/bin/containerd-shim-runc-v2 usr/sbin/runc \
    usr/bin/docker-init usr/bin/tini-static usr/sbin/docker-proxy; do
    [ -e "$dockerd_root/$bin" ] && ln -s "$dockerd_root/$bin" "$work/bin/"
done
daemon_path="$work/bin:/usr/sbin:/usr/bin:/sbin:/bin"

cat >"$work/containerd.toml" <<TOML
version = 2
root = "$work/containerd"
state = "$work/containerd-state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$work/opt"
TOML
PATH=$daemon_path "$work/bin/containerd" --config "$work/containerd.toml" --log-level warn \
    2>"$work/containerd.log" &
containerd_pid=$!
for _ in $(seq 100); do
    [ -S "$work/containerd.sock" ] && break
    sleep 0.1
done

echo '{}' >"$work/daemon.json"
PATH=$daemon_path "$work/bin/dockerd" --config-file "$work/daemon.json" \
    --containerd "$work/containerd.sock" --data-root "$work/data" --exec-root "$work/exec" \
    --pidfile "$work/dockerd.pid" -H "unix://$work/docker.sock" \
    --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false --bridge=none \
    --userland-proxy=false --log-level warn 2>"$work/dockerd.log" &
dockerd_pid=$!
export DOCKER_HOST="unix://$work/docker.sock" DOCKER_CONFIG="$work/docker-config"
for _ in $(seq 300); do
    docker version >/dev/null 2>&1 && break
    kill -0 "$dockerd_pid" 2>/dev/null || { cat "$work/dockerd.log" >&2; exit 1; }
    sleep 0.1
done
docker load -i "$work/busybox.tar"
docker run --rm busybox true # warm the page cache
