#!/usr/bin/env bash
# The test command: formatting, lints, every test tier. Needs what .ci/setup installs, and root
# (the engine and runtime tests create namespaces and mounts; the e2e tier boots QEMU).
#
# Clippy lints the workspace while the host and test builds compile it: clippy-driver is the
# workspace's rustc wrapper for the whole run (exported below, as `cargo clippy` sets it), so
# the dependencies are compiled once, for the tests, instead of once more in check mode for a
# separate `cargo clippy` (their code is not linted either way). The host build (every library
# and binary), the test build (every test target and example) and the e2e tier's test build
# right after it (with the VM tests compiled in) together lint what
# `RMACHINE_E2E=1 cargo clippy --workspace --all-targets -- -D warnings` lints: that is the
# local equivalent (without RMACHINE_E2E=1 the e2e tests are compiled out, and not linted).
# A warning fails the build.
# The workspace's debug units are thus compiled by clippy-driver: rustc with clippy's lint
# passes, the same flags and codegen, except that it turns MIR optimisations off (a debug build
# runs few) and the debug checks of raw-pointer dereferences (null, alignment): only the tests'
# builds of our own crates, never a release or portable build, are made that way.
# Measured from clean (with the dev profile's unoptimised dependencies, Cargo.toml): `cargo
# clippy` + host build + test build + the e2e tier's build took 1047 CPU seconds, the two linted
# builds + the e2e tier's build take 456. Linting the e2e tests early costs 6 CPU seconds (5 s),
# which the e2e step then does not spend (it finds them built).
# The tests' own run time with the hot dependencies at opt-level 1 and the rest at 0
# (Cargo.toml), user+sys of the test and CLI processes: the host crate's unit tests 3.4-3.6 s,
# the same as with lzma-rust2, ruzstd and ring at 0; tests/e2e/tests/scp.rs (two creates, scp
# both ways and between them; QEMU's time not counted) 3.2-3.8 s against 5.9 with those three at
# 0, 25-28.5 s wall against 29.
# Every debug build of the run keeps that environment (a cargo without it would compile every
# workspace crate again); the builds of other profiles and targets that only need their
# binaries (the guest images', the portability step's Windows build and macOS links) drop it.
#
# Two lanes share the machine: the guest images (release builds for the musl targets, then
# packing) are built in the background from the start while the foreground runs fmt, the host
# build, the host test tiers and the portability step. The lanes' builds are mostly in different
# parts of target/ (the guest's release/ and <musl target>/release/, the foreground's debug/, the
# cross targets' directories and portable/), each with its own cargo lock. One step is not: the
# arm64 guest runs the host's `cargo build --workspace --bins` (its rmachine-init prints the
# udhcpc script), which takes target/debug's lock and so waits while a foreground cargo holds it:
# the host and test builds, the early lint of the e2e tests, and the portability clippy, whose
# build scripts and proc-macros are host units in target/debug. It compiles nothing there (the
# same units as the foreground's host build: whichever runs first builds them for both), so it
# only waits for the lock, and the arm64 image's packing waits with it: if that falls in the
# portability step, the guest lane ends after it. Compiling is most of the run and both lanes
# compete for the cores, so the order is what keeps them busy: the host tiers, which mostly wait
# on engines and containers, run while the guest lane compiles, and the CPU-bound portability step
# follows them. Only the e2e tier waits for the guest images. The test binaries run a few at a
# time (tests/parallel.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# A test that cannot run here (not root, no cgroup controller...) fails instead of passing as
# skipped (tests/engine/src/lib.rs `cannot_run`, crates/runtime/tests/common).
export RMACHINE_TESTS_REQUIRED=1
step() { printf '\n=== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }
export -f step

step "cargo fmt --check"
cargo fmt --all --check

# Clippy as `cargo clippy -- -D warnings` runs it (see the top of this file); the guest lane
# below inherits it too.
clippy_driver="$(rustc --print sysroot)/bin/clippy-driver"
if ! "$clippy_driver" --version >/dev/null 2>&1; then
  echo "tests/run.sh: $clippy_driver does not run (rustup component add clippy)" >&2
  exit 1
fi
export RUSTC_WORKSPACE_WRAPPER="$clippy_driver"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
# The lint pass must be on in a build that emits code, not only in `cargo check`'s: a probe with
# a clippy warning, compiled the way cargo calls the wrapper, has to fail (else every build
# below would pass unlinted).
lint_probe="$(mktemp -d)"
printf 'fn main() {\n    let args: Vec<String> = std::env::args().collect();\n    if args.len() == 0 {\n        println!("none");\n    }\n}\n' \
  >"$lint_probe/probe.rs"
if "$clippy_driver" rustc --edition 2021 --crate-name probe --crate-type bin --emit=link \
     -o "$lint_probe/probe" "$lint_probe/probe.rs" >"$lint_probe/out" 2>&1 \
   || ! grep -q 'len_zero' "$lint_probe/out"; then
  echo "tests/run.sh: clippy-driver as the workspace's rustc wrapper did not deny clippy::len_zero:" >&2
  cat "$lint_probe/out" >&2
  rm -rf "$lint_probe"
  exit 1
fi
rm -rf "$lint_probe"
# For the builds that only need binaries (other profiles and targets): without the lint pass.
unlinted() { env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS "$@"; }

# The guest lane, in the background: its own process group (killed if this script stops
# early), its output kept in a file and printed whole when the test tiers wait for it.
guest_lane() {
  set -euo pipefail
  step "build the guest image"
  guest/build.sh
  step "build the arm64 guest image (cross-built; the e2e tier boots it under emulation)"
  # CI boots this image for one test under emulation and never ships it: its release binaries
  # are built without LTO and in 16 codegen units (the release profile's thin LTO over 4 units
  # is most of this step's time). The x86_64 guest above keeps the release profile users get.
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 ARCH=aarch64 guest/build.sh
  step "guest images built"
}
export -f guest_lane
guest_log="$(mktemp)"
e2e_log="$(mktemp)"
# At the lowest CPU and I/O priority: the host test tiers run beside it and several of their tests
# measure time (the health probe's 300 ms, `docker logs -f` within 3 s, elapsed-time asserts), so
# the foreground must get the cores when it wants them. ionice is util-linux's (essential on
# Debian 12); where it is missing or refused, the lane runs with nice alone.
low_priority=(nice -n 19)
if command -v ionice >/dev/null 2>&1 && ionice -c3 true 2>/dev/null; then
  low_priority+=(ionice -c3)
fi
setsid "${low_priority[@]}" bash -c guest_lane >"$guest_log" 2>&1 </dev/null &
guest_pid=$!
guest_log_shown=""
guest_status=""
# The guest lane's exit status once it has ended (empty while it runs).
guest_lane_ended() {
  if [ -z "$guest_status" ] && ! kill -0 "$guest_pid" 2>/dev/null; then
    guest_status=0
    wait "$guest_pid" || guest_status=$?
  fi
}
show_guest_log() {
  if [ -z "$guest_log_shown" ]; then
    guest_log_shown=1
    printf '\n=== the guest lane'"'"'s output\n'
    cat "$guest_log"
  fi
}
# Between the foreground's steps: a guest lane that has failed stops the run now, with its
# output, instead of after the host tiers and the portability step.
check_guest_lane() {
  guest_lane_ended
  if [ -n "$guest_status" ] && [ "$guest_status" != 0 ]; then
    show_guest_log
    echo "the guest lane failed (exit $guest_status)" >&2
    exit 1
  fi
}
cleanup() {
  local status=$?
  kill -- -"$guest_pid" 2>/dev/null || true
  # The foreground failed: what the guest lane had done so far may explain it, or fail too.
  if [ "$status" != 0 ]; then
    show_guest_log
  fi
  rm -f "$guest_log" "$e2e_log" "${bins_json:-}" "${tests_json:-}"
}
trap cleanup EXIT
# The foreground's steps: each first checks the guest lane.
fg_step() {
  check_guest_lane
  step "$@"
}
step "build the guest images (in the background; their output is printed before the e2e tier)"

fg_step "build host binaries (the engine tests run them) and libraries, linted by clippy"
bins_json="$(mktemp)"
tests_json="$(mktemp)"
cargo build --workspace --lib --bins --message-format=json-render-diagnostics >"$bins_json"

fg_step "build the host tiers' tests and the examples, linted by clippy"
# The test build must reuse every unit the build above made: a dependency feature that only a
# dev-dependency enables (lzma-rust2's `encoder` was one) makes `cargo test` compile that crate
# and every crate above it again, and re-link target/debug/rmachine-engine... over the binaries
# the tests run, while the guest lane's arm64 step does the same the other way. (A second
# `cargo build --bins` would not see it: its own units are still fresh, it only re-links them.)
cargo test --workspace --exclude rmachine-e2e --no-run --message-format=json-render-diagnostics \
  >"$tests_json"
rebuilt="$(jq -rn --slurpfile bins "$bins_json" --slurpfile tests "$tests_json" '
  def unit: "\(.package_id) \(.target.kind | join(",")) \(.target.name)";
  [$bins[] | select(.reason == "compiler-artifact") | unit] as $built
  | $tests[] | select(.reason == "compiler-artifact" and .fresh == false and (.profile.test | not))
  | unit | select(IN($built[]))')"
rm -f "$bins_json" "$tests_json"
if [ -n "$rebuilt" ]; then
  printf 'the test build compiled again (other dependency features than `cargo build --workspace --lib --bins`):\n%s\n' \
    "$rebuilt" >&2
  exit 1
fi

fg_step "build the e2e tier's tests with the VM tests compiled in, linted by clippy"
# Here rather than at the e2e step ~15 minutes later, so that a lint in e2e code fails the run
# early. --workspace as at that step (same dependency features: only rmachine-e2e compiles),
# which then finds it built.
RMACHINE_E2E=1 cargo test --workspace --no-run

fg_step "unit, CLI, runtime and engine-on-host tests (beside the guest lane)"
tests/parallel.sh 3 --workspace --exclude rmachine-e2e
check_guest_lane
cargo test --workspace --exclude rmachine-e2e --doc
tests/guest/publish_test.sh

fg_step "portability: clippy for Windows and macOS, the Windows CLI's command tests under Wine, the macOS link"
host_crates=(-p rmachine -p rmachine-host -p rmachine-driver -p rmachine-driver-qemu
             -p rmachine-driver-virtualbox -p rmachine-driver-hyperv -p rmachine-driver-generic)
cargo clippy --target x86_64-pc-windows-gnu "${host_crates[@]}" --all-targets -- -D warnings
check_guest_lane
# ring's C for macOS is compiled by zig (see .ci/setup). Both Macs in one cargo invocation: one
# job graph for the two targets, no single-crate tail of the first while the second waits.
zig_venv="${RMACHINE_ZIG_VENV:-/opt/rmachine-zig}"
PATH="$zig_venv/bin:$PATH" cargo-zigbuild clippy --target aarch64-apple-darwin \
  --target x86_64-apple-darwin "${host_crates[@]}" --all-targets -- -D warnings
# The builds that link (the Windows CLI the Wine tests run, the Apple Silicon and Intel Mac CLIs
# whose Mach-O files are checked) use the `portable` profile (Cargo.toml): nothing hot runs in
# them, so their dependencies are not optimised and carry no debuginfo (measured from clean:
# the Windows build 214 CPU seconds, the Apple Silicon link 201; dev's settings as they were
# cost about 3 times as much). Both Macs link in one cargo invocation (tests/macos/link.sh).
# The clippy steps above linted their code for these targets: no second lint pass here.
check_guest_lane
unlinted cargo build --target x86_64-pc-windows-gnu -p rmachine --profile portable
tests/windows/run.sh --profile portable
check_guest_lane
unlinted tests/macos/link.sh --profile portable

fg_step "wait for the guest images"
if [ -z "$guest_status" ]; then
  guest_status=0
  wait "$guest_pid" || guest_status=$?
fi
check_guest_lane
show_guest_log

fg_step "end-to-end tests: real QEMU boots"
# Two guests at a time (each test still runs its own tests one after the other): a guest under
# TCG keeps one core busy, this machine has two. Built with --workspace: its dependency
# features are the same as those of the host tier's `--workspace --exclude rmachine-e2e` (the
# e2e crate adds no dependency and no feature), so only rmachine-e2e itself is compiled here
# (`-p rmachine-e2e` alone unifies dependency features differently and compiled 47 of them
# again, tokio, syn, serde, clap, nix among them: ~110 CPU seconds on the critical path), and
# only rmachine-e2e's test binaries run.
RMACHINE_E2E=1 tests/parallel.sh --run rmachine-e2e 2 --workspace -- --test-threads=1 --nocapture 2>&1 \
  | tee "$e2e_log"
# A test file whose tests were all compiled out (the rmachine_e2e cfg lost) runs zero tests and
# "passes": fail loudly instead.
if ! tests/e2e/check-ran.sh "$e2e_log"; then
    exit 1
fi

step "all tests passed"
