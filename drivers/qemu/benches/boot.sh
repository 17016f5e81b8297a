#!/usr/bin/env bash
# Boot speed side by side: a previous guest image against this tree's, under the same QEMU and
# host CLI, runs alternating so that the machine's load hits both alike. Per run and image:
#   create   `rmachine create` until `docker version` answers through `rmachine env`
#   stop     `rmachine stop` (power button, clean unmount)
#   start    cold `rmachine start` until `docker version` answers
#   save     `rmachine stop --save` with a container running (the guest's state to a file)
#   resume   `rmachine start` from that state until `docker version` answers
# and once per image, after the last start: QEMU's RSS, the guest's used memory
# (MemTotal - MemAvailable) and QEMU's host CPU use over IDLE_SECS of an idle machine.
# Medians and ratios (new / old) at the end. The figures go to docs/benchmarks.md.
#
# Usage (workspace root, after `cargo build -p rmachine` and `guest/build.sh`):
#   drivers/qemu/benches/boot.sh [RUNS]          (default 5)
# Environment:
#   NEW_GUEST    this tree's image (default guest/out)
#   OLD_GUEST    the previous image; unset: built from OLD_REV (default 1abc218) in a
#                temporary worktree with its own target dir (a release musl build: minutes)
#   RMACHINE     the host CLI (default target/debug/rmachine); both images use it, so the
#                difference measured is the guest image and what the driver does with it
#   OLD_RMACHINE the CLI the old image runs with instead (a change to the host side, such as
#                how a resume sets the guest's clock, is then measured too)
#   IDLE_SECS    idle window (default 60)
#   FIXTURES     rmachine-fixtures, which builds the busybox image run before the save
#                (default target/debug/rmachine-fixtures; missing: the save holds no container)
#   VARIANTS     which images run (default "old new"; "new" alone needs no previous image)
set -euo pipefail
cd "$(dirname "$0")/../../.."
runs=${1:-5}
idle_secs=${IDLE_SECS:-60}
rmachine=${RMACHINE:-target/debug/rmachine}
new_guest=${NEW_GUEST:-guest/out}
fixtures=${FIXTURES:-target/debug/rmachine-fixtures}
[ -x "$rmachine" ] || { echo "missing $rmachine: cargo build -p rmachine" >&2; exit 1; }
[ -f "$new_guest/manifest.json" ] || { echo "missing $new_guest: guest/build.sh" >&2; exit 1; }

scratch=$(mktemp -d /tmp/rmachine-boot-bench.XXXXXX)
old_worktree=""
cleanup() {
    for variant in old new; do
        RMACHINE_STORAGE_PATH="$scratch/store-$variant" "$rmachine" rm -f -y "bench-$variant" \
            >/dev/null 2>&1 || true
    done
    if [ -n "$old_worktree" ]; then git worktree remove --force "$old_worktree" >/dev/null 2>&1 || true; fi
    rm -rf "$scratch"
}
trap cleanup EXIT

variants=${VARIANTS:-old new}
if [ -z "${OLD_GUEST:-}" ] && [[ " $variants " == *" old "* ]]; then
    old_rev=${OLD_REV:-1abc218}
    old_worktree="$scratch/old-src"
    echo "building the previous guest from $old_rev (own target dir; this takes minutes)" >&2
    git worktree add --detach "$old_worktree" "$old_rev" >/dev/null
    CARGO_TARGET_DIR="$scratch/old-target" OUT="$scratch/old-guest" "$old_worktree/guest/build.sh" \
        2>"$scratch/old-build.log" || { tail -20 "$scratch/old-build.log" >&2; exit 1; }
    OLD_GUEST="$scratch/old-guest"
    rm -rf "$scratch/old-target"
fi

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l | xargs printf '%.2f'; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { echo "$2 / $1" | bc -l | xargs printf '%.2f'; }

# Runs the CLI for VARIANT's store.
rm_() {
    local variant=$1 cli=$rmachine; shift
    [ "$variant" = old ] && cli=${OLD_RMACHINE:-$rmachine}
    RMACHINE_STORAGE_PATH="$scratch/store-$variant" "$cli" "$@"
}
# Waits until docker answers through the machine's environment (at most 300 s).
docker_answers() {
    local variant=$1 env
    env=$(rm_ "$variant" env --shell bash "bench-$variant")
    (
        eval "$env"
        export DOCKER_CONFIG="$scratch/docker-config"
        for _ in $(seq 3000); do
            docker version >/dev/null 2>&1 && exit 0
            sleep 0.1
        done
        exit 1
    )
}

declare -A results
record() { results[$1]="${results[$1]:-} $2"; }

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores, $(qemu-system-x86_64 --version | head -1)"
echo "old image: $(jq -r .version "${OLD_GUEST:-$new_guest}/manifest.json"), new image: $(jq -r .version "$new_guest/manifest.json")"
for i in $(seq "$runs"); do
    for variant in $variants; do
        image=$new_guest
        [ "$variant" = old ] && image=$OLD_GUEST
        t0=$(now)
        rm_ "$variant" create -d qemu --no-share --no-progress --guest-image "$image" "bench-$variant" >/dev/null
        docker_answers "$variant"
        t1=$(now)
        record "$variant-create" "$(secs "$t0" "$t1")"
        t0=$(now); rm_ "$variant" stop "bench-$variant" >/dev/null; t1=$(now)
        record "$variant-stop" "$(secs "$t0" "$t1")"
        t0=$(now)
        rm_ "$variant" start --no-progress "bench-$variant" >/dev/null
        docker_answers "$variant"
        t1=$(now)
        record "$variant-start" "$(secs "$t0" "$t1")"
        if [ "$i" = "$runs" ]; then
            pid=$(cat "$scratch/store-$variant/machines/bench-$variant/qemu.pid")
            tck=$(getconf CLK_TCK)
            # utime + stime of the QEMU process, in ticks.
            cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
            c0=$(cpu); t0=$(now)
            sleep "$idle_secs"
            c1=$(cpu); t1=$(now)
            record "$variant-idle-cpu" "$(echo "100 * ($c1 - $c0) / $tck / ($t1 - $t0)" | bc -l | xargs printf '%.2f')"
            rss_kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
            record "$variant-rss-mib" "$((rss_kb / 1024))"
            used_kb=$(rm_ "$variant" ssh "bench-$variant" cat /proc/meminfo \
                | awk '/^MemTotal:/ {t=$2} /^MemAvailable:/ {a=$2} END {print t - a}')
            record "$variant-guest-used-mib" "$((used_kb / 1024))"
        fi
        (
            eval "$(rm_ "$variant" env --shell bash "bench-$variant")"
            export DOCKER_CONFIG="$scratch/docker-config"
            # A running container, so the state holds what a user's would.
            if [ -x "$fixtures" ]; then
                [ -f "$scratch/busybox.tar" ] || "$fixtures" busybox "$scratch/busybox.tar" >/dev/null
                docker load -i "$scratch/busybox.tar" >/dev/null
                docker run -d --name sleeper busybox sleep 100000 >/dev/null
            fi
        )
        t0=$(now); rm_ "$variant" stop --save "bench-$variant" >/dev/null; t1=$(now)
        record "$variant-save" "$(secs "$t0" "$t1")"
        record "$variant-state-mib" "$(( $(stat -c %s "$scratch/store-$variant/machines/bench-$variant/vmstate.bin") / 1048576 ))"
        t0=$(now)
        rm_ "$variant" start --no-progress "bench-$variant" >/dev/null
        docker_answers "$variant"
        t1=$(now)
        record "$variant-resume" "$(secs "$t0" "$t1")"
        rm_ "$variant" rm -f -y "bench-$variant" >/dev/null
        echo "run $i $variant: create $(echo "${results[$variant-create]}" | awk '{print $NF}') s," \
            "stop $(echo "${results[$variant-stop]}" | awk '{print $NF}') s," \
            "start $(echo "${results[$variant-start]}" | awk '{print $NF}') s," \
            "save $(echo "${results[$variant-save]}" | awk '{print $NF}') s," \
            "resume $(echo "${results[$variant-resume]}" | awk '{print $NF}') s"
    done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

printf '\n| what | old | new | new/old |\n| --- | --- | --- | --- |\n'
# A variant that did not run shows "-" and no ratio.
ratio_or_dash() { if [ "$1" = - ] || [ "$2" = - ]; then echo -; else ratio "$1" "$2"; fi; }
for what in create start stop save resume; do
    o=-; n=-
    [ -n "${results[old-$what]:-}" ] && o=$(printf '%s\n' ${results[old-$what]} | median)
    [ -n "${results[new-$what]:-}" ] && n=$(printf '%s\n' ${results[new-$what]} | median)
    printf '| %s (median of %s, s) | %s | %s | %s |\n' "$what" "$runs" "$o" "$n" "$(ratio_or_dash "$o" "$n")"
done
for what in idle-cpu rss-mib guest-used-mib; do
    o=${results[old-$what]:- -}; o=${o# }
    n=${results[new-$what]:- -}; n=${n# }
    printf '| %s | %s | %s | %s |\n' "$what" "$o" "$n" "$(ratio_or_dash "$o" "$n")"
done
for what in state-mib; do
    o=-; n=-
    [ -n "${results[old-$what]:-}" ] && o=$(printf '%s\n' ${results[old-$what]} | median)
    [ -n "${results[new-$what]:-}" ] && n=$(printf '%s\n' ${results[new-$what]} | median)
    printf '| %s (median) | %s | %s | %s |\n' "$what" "$o" "$n" "$(ratio_or_dash "$o" "$n")"
done
