#!/usr/bin/env bash
# Builds the test executables `cargo test CARGO-ARGS` would run, then runs them JOBS at a time
# instead of one after the other; each one's output is printed whole when it ends, under
# cargo's own `Running <source> (<executable>)` line (tests/e2e/check-ran.sh reads it).
#
#   tests/parallel.sh [--run PACKAGE] JOBS CARGO-ARGS... [-- TEST-ARGS...]
#
# --run PACKAGE runs only that package's test executables of the ones CARGO-ARGS build. Cargo
# unifies dependency features over the packages a command selects: `cargo test -p X` compiles
# many dependencies again, with X's features, that `cargo test --workspace` had already built.
# So a tier of one package can build `--workspace` (all fresh but that package) and run only it.
#
# Most test binaries spend their time waiting on what they drive (an engine, containers, a
# QEMU guest), so running several at once fills the machine's cores. Every binary still runs
# (a failure does not stop the others, like --no-fail-fast) and the exit status is 1 when one
# failed; the failures are named at the end. Doctests are not built by --no-run: run
# `cargo test --doc` for them.
set -euo pipefail
trap 'echo "parallel.sh: stopped by a failure at line $LINENO" >&2' ERR
usage() {
    echo "usage: tests/parallel.sh [--run PACKAGE] JOBS CARGO-ARGS... [-- TEST-ARGS...]" >&2
    exit 2
}
only=""
if [ "${1:-}" = --run ]; then
    [ -n "${2:-}" ] || usage
    only="$2"
    shift 2
fi
if [ $# -lt 1 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
    usage
fi
jobs="$1"
shift
cargo_args=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do
    cargo_args+=("$1")
    shift
done
[ $# -gt 0 ] && shift
test_args=("$@")

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Build; cargo's JSON names every test executable, its source and its package's directory.
cargo test "${cargo_args[@]}" --no-run --message-format=json-render-diagnostics >"$work/build.json"
manifest=""
if [ -n "$only" ]; then
    manifest="$(cargo metadata --no-deps --format-version 1 \
        | jq -r --arg name "$only" '.packages[] | select(.name == $name) | .manifest_path')"
    if [ -z "$manifest" ]; then
        echo "parallel.sh: --run $only: the workspace has no package of that name" >&2
        exit 2
    fi
fi
jq -r --arg manifest "$manifest" \
    'select(.reason == "compiler-artifact" and .profile.test and .executable != null
            and ($manifest == "" or .manifest_path == $manifest))
     | [.executable, .target.src_path, (.manifest_path | rtrimstr("/Cargo.toml"))] | @tsv' \
    "$work/build.json" >"$work/all.tsv"
if [ ! -s "$work/all.tsv" ]; then
    echo "parallel.sh: cargo test ${cargo_args[*]} built no test executable${only:+ of $only}" >&2
    exit 1
fi
# Longest first, so that a long binary does not start last: a file's number of #[test]s is
# the estimate (a library's unit tests count all of its crate's).
while IFS=$'\t' read -r exe src dir; do
    if [[ "$src" == */src/* ]]; then
        count="$({ grep -rhc '#\[test\]' "${src%/src/*}/src" || true; } | awk '{n += $1} END {print n + 0}')"
    else
        count="$(grep -c '#\[test\]' "$src" || true)"
    fi
    printf '%s\t%s\t%s\t%s\n' "${count:-0}" "$exe" "$src" "$dir"
done <"$work/all.tsv" | sort -t$'\t' -k1,1nr -k3,3 | cut -f2- >"$work/queue.tsv"

export PARALLEL_WORK="$work"
run_one() {
    local exe="$1" src="$2" dir="$3" log status=0
    log="$(mktemp "$PARALLEL_WORK/log.XXXXXX")"
    shift 3
    (cd "$dir" && "$exe" "$@") >"$log" 2>&1 || status=$?
    # One binary's output at a time, in cargo's layout.
    {
        flock 9
        printf '     Running %s (%s)\n' "${src#"$dir"/}" "${exe#"$PWD"/}"
        cat "$log"
        if [ "$status" != 0 ]; then
            printf '%s (%s)\n' "${src#"$PWD"/}" "${exe#"$PWD"/}" >>"$PARALLEL_WORK/failed"
            printf 'parallel.sh: %s exited %s\n' "${src#"$PWD"/}" "$status"
        fi
    } 9>>"$PARALLEL_WORK/print.lock"
    rm -f "$log"
}
export -f run_one
tr '\n' '\0' <"$work/queue.tsv" \
    | xargs -0 -P "$jobs" -I{} bash -c 'IFS=$'"'\t'"' read -r exe src dir <<<"$1"; shift; run_one "$exe" "$src" "$dir" "$@"' _ {} "${test_args[@]}"
if [ -s "$work/failed" ]; then
    echo "parallel.sh: these test binaries failed:" >&2
    cat "$work/failed" >&2
    exit 1
fi
echo "parallel.sh: $(wc -l <"$work/queue.tsv") test binaries passed"
