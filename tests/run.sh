#!/usr/bin/env bash
# The test command: formatting, lints, every test tier. Needs what .ci/setup installs, and root
# (the engine and runtime tests create namespaces and mounts; the e2e tier boots QEMU).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# A test that cannot run here (not root, no cgroup controller...) fails instead of passing as
# skipped (tests/engine/src/lib.rs `cannot_run`, crates/runtime/tests/common).
export RMACHINE_TESTS_REQUIRED=1
step() { printf '\n=== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "portability: clippy for Windows and macOS, the Windows CLI's command tests under Wine"
host_crates=(-p rmachine -p rmachine-host -p rmachine-driver -p rmachine-driver-qemu
             -p rmachine-driver-virtualbox -p rmachine-driver-hyperv -p rmachine-driver-generic)
cargo clippy --target x86_64-pc-windows-gnu "${host_crates[@]}" --all-targets -- -D warnings
# ring's C for macOS is compiled by zig (see .ci/setup); nothing is linked here: linking means a
# full macOS build (~4.5 min), which tests/macos/link.sh does by hand. Apple Silicon only: the
# host code has no x86_64-only path, and a second macOS target would double the step's time.
zig_venv="${RMACHINE_ZIG_VENV:-/opt/rmachine-zig}"
PATH="$zig_venv/bin:$PATH" cargo-zigbuild clippy --target aarch64-apple-darwin "${host_crates[@]}" \
  --all-targets -- -D warnings
# Opt-in: the full macOS link (4.5 min idle, 17+ min under load) with the committed symbol lists.
if [ "${RMACHINE_MACOS_LINK:-}" = 1 ]; then
  tests/macos/link.sh
fi
cargo build --target x86_64-pc-windows-gnu -p rmachine
tests/windows/run.sh

step "build host binaries (the engine tests run them)"
cargo build --workspace --bins

step "build the guest image"
guest/build.sh

step "build the arm64 guest image (cross-built; the e2e tier boots it under emulation)"
# CI boots this image for one test under emulation and never ships it: its release binaries are
# built without LTO and in 16 codegen units (the release profile's thin LTO over 4 units is
# most of this step's time). The x86_64 guest above keeps the release profile users get.
CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 ARCH=aarch64 guest/build.sh

step "unit, CLI, runtime and engine-on-host tests"
cargo test --workspace --exclude rmachine-e2e
tests/guest/publish_test.sh

step "end-to-end tests: real QEMU boots"
e2e_log="$(mktemp)"
trap 'rm -f "$e2e_log"' EXIT
RMACHINE_E2E=1 cargo test -p rmachine-e2e -- --test-threads=1 --nocapture 2>&1 | tee "$e2e_log"
# A test file whose tests were all compiled out (the rmachine_e2e cfg lost) runs zero tests and
# "passes": fail loudly instead.
if ! tests/e2e/check-ran.sh "$e2e_log"; then
    exit 1
fi

step "all tests passed"
