#!/usr/bin/env bash
# Time to a first container, side by side: `rmachine create` of a previous guest image and of
# this tree's, alternating, each followed at once by `docker load` of the busybox fixture and
# `docker run --rm busybox true`. Each variant keeps one store for all runs: run 1 imports the
# image (and, with QEMU boot snapshots, takes the snapshot the later runs start from). Boot changes that move work after "ready" (the engine
# answers before the container modules are loaded) show here what a user waits in total.
#
# Usage (workspace root, after `cargo build -p rmachine -p rmachine-fixtures` and
# `guest/build.sh`):
#   OLD_GUEST=DIR drivers/qemu/benches/first-container.sh [RUNS]     (default 3)
# Environment: NEW_GUEST (default guest/out), RMACHINE (default target/debug/rmachine),
# OLD_RMACHINE (the host CLI for the old image, e.g. a previous build; default RMACHINE),
# FIXTURES (default target/debug/rmachine-fixtures), SHARE ("--no-share" by default; set it
# empty for the default home-folder share).
set -euo pipefail
cd "$(dirname "$0")/../../.."
runs=${1:-3}
rmachine=${RMACHINE:-target/debug/rmachine}
fixtures=${FIXTURES:-target/debug/rmachine-fixtures}
share=${SHARE---no-share}
[ -n "${OLD_GUEST:-}" ] || { echo "OLD_GUEST: the previous guest image's directory" >&2; exit 2; }
declare -A image=([old]=$OLD_GUEST [new]=${NEW_GUEST:-guest/out})
declare -A cli=([old]=${OLD_RMACHINE:-$rmachine} [new]=$rmachine)
scratch=$(mktemp -d /tmp/rmachine-first-container.XXXXXX)
cleanup() {
    for v in old new; do
        RMACHINE_STORAGE_PATH="$scratch/store-$v" "${cli[$v]}" rm -f -y "first-$v" >/dev/null 2>&1 || true
    done
    rm -rf "$scratch"
}
trap cleanup EXIT
"$fixtures" busybox "$scratch/busybox.tar" >/dev/null
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l | xargs printf '%.2f'; }
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq "$runs"); do
    for v in old new; do
        export RMACHINE_STORAGE_PATH="$scratch/store-$v"
        t0=$(now)
        # shellcheck disable=SC2086
        "${cli[$v]}" create -d qemu $share --no-progress --guest-image "${image[$v]}" "first-$v" >/dev/null
        t1=$(now)
        (
            eval "$("${cli[$v]}" env --shell bash "first-$v")"
            export DOCKER_CONFIG="$scratch/docker-config"
            docker load -i "$scratch/busybox.tar" >/dev/null
            t2=$(now)
            docker run --rm busybox true
            t3=$(now)
            echo "$v run $i: create $(secs "$t0" "$t1") s, load $(secs "$t1" "$t2") s," \
                "run $(secs "$t2" "$t3") s, create to the container's exit $(secs "$t0" "$t3") s"
        )
        "${cli[$v]}" rm -f -y "first-$v" >/dev/null
    done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
