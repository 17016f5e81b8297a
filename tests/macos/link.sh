#!/usr/bin/env bash
# Links the rmachine CLI for Apple Silicon and for Intel Macs (aarch64-apple-darwin and
# x86_64-apple-darwin, in one cargo invocation: the build scripts and proc-macros both targets
# need are built once) on this Linux machine, without Apple's SDK, and checks the Mach-O files
# it makes. It links; it does not run the binaries (that needs a Mac).
# tests/run.sh's portability step runs it with `--profile portable` (a full macOS build of the
# host crates, which clippy only type-checks).
#
# zig ships only libSystem's stubs. Two crates link Apple frameworks: security-framework
# (through rustls-platform-verifier, which reqwest 0.13's rustls features always enable: the
# platform verifier is how downloads trust the Mac's certificate store) and core-foundation.
# So this writes text stubs (.tbd) of CoreFoundation and Security into a scratch "SDK"
# (SDKROOT, which cargo-zigbuild hands to zig as a framework search path) exporting the
# symbols listed in tests/macos/CoreFoundation.symbols and Security.symbols (committed: a
# symbol the code starts to use shows up as a reviewed diff of those files). A symbol the
# link asks for that no list has is added to the list its name belongs to (CF, __CF:
# CoreFoundation; Sec, kSec, SSL: Security), and the script fails asking for that diff to be
# reviewed and committed; a symbol of no known prefix is named and must be added by hand.
# The binary loads the real frameworks from /System/Library/Frameworks on a Mac.
#
# Usage: tests/macos/link.sh [--release | --profile NAME]   (zig and cargo-zigbuild as .ci/setup
# installs them; CI links with the `portable` profile: unoptimised, no debuginfo, the cheapest
# build that still links every crate the release binary links)
set -euo pipefail
cd "$(dirname "$0")/../.."
zig_venv="${RMACHINE_ZIG_VENV:-/opt/rmachine-zig}"
export PATH="$zig_venv/bin:$PATH"
targets=(aarch64-apple-darwin x86_64-apple-darwin)
usage() { echo "usage: tests/macos/link.sh [--release | --profile NAME]" >&2; exit 2; }
profile=debug
args=()
case "$#:${1:-}" in
  0:) ;;
  1:--release) profile=release; args=(--release) ;;
  2:--profile)
    [ -n "$2" ] || usage
    # cargo's directory for a profile: dev and test build into debug/, release and bench into
    # release/, a custom profile into its own name.
    case "$2" in
      dev|test) profile=debug ;;
      release|bench) profile=release ;;
      *) profile=$2 ;;
    esac
    args=(--profile "$2") ;;
  *) usage ;;
esac
target_dir="${CARGO_TARGET_DIR:-target}"

# A fixed place: build scripts of C code (ring) rerun when SDKROOT changes.
sdk=$(realpath -m "${RMACHINE_MACOS_STUBS:-$target_dir/macos-sdk-stubs}")
log=$(mktemp)
trap 'rm -f "$log"' EXIT
export SDKROOT="$sdk"
# rustc's minimum for aarch64-apple-darwin; without it zig stamps its own default (15.0) into
# the binary, which then refuses to start on macOS 11–14. One invocation takes one value, so the
# Intel binary says 11.0 too (rustc's own minimum there is 10.12).
export MACOSX_DEPLOYMENT_TARGET="${MACOSX_DEPLOYMENT_TARGET:-11.0}"

lists=tests/macos

# stub FRAMEWORK: a text stub exporting the symbols of $lists/FRAMEWORK.symbols (one a line),
# for both architectures.
stub() {
  local framework=$1
  local symbols
  symbols=$(grep -v '^#' "$lists/$framework.symbols" | grep . | paste -sd, - || true)
  local dir="$sdk/System/Library/Frameworks/$framework.framework"
  mkdir -p "$dir"
  cat >"$dir/$framework.tbd" <<EOF
--- !tapi-tbd
tbd-version:     4
targets:         [ arm64-macos, x86_64-macos ]
install-name:    '/System/Library/Frameworks/$framework.framework/Versions/A/$framework'
exports:
  - targets:         [ arm64-macos, x86_64-macos ]
    symbols:         [ ${symbols:-_rmachine_placeholder} ]
...
EOF
}

link() {
  local target_args=()
  for target in "${targets[@]}"; do target_args+=(--target "$target"); done
  # --keep-going: a target whose link fails does not stop the other's, so the symbols both
  # lack show in one run.
  cargo-zigbuild build --keep-going "${target_args[@]}" -p rmachine "${args[@]}" >"$log" 2>&1
}

# add FRAMEWORK SYMBOL...: appends the symbols to the framework's list, kept sorted.
add() {
  local file="$lists/$1.symbols"
  shift
  [ $# -gt 0 ] || return 0
  local sorted
  sorted=$({ grep -v '^#' "$file" | grep . || true; printf '%s\n' "$@"; } | LC_ALL=C sort -u)
  { grep '^#' "$file" || true; printf '%s\n' "$sorted"; } >"$file.new"
  mv "$file.new" "$file"
}

# The stubs are no input cargo tracks: the binaries are linked anew each time.
for target in "${targets[@]}"; do
  if ! cargo clean -p rmachine --target "$target" "${args[@]}" >"$log" 2>&1; then
    echo "macos link: cargo clean -p rmachine --target $target failed:" >&2
    cat "$log" >&2
    exit 1
  fi
done
stub CoreFoundation
stub Security
if ! link; then
  undefined=$(grep -o 'undefined symbol: _[A-Za-z0-9_]*' "$log" | awk '{print $3}' | sort -u || true)
  if [ -z "$undefined" ]; then
    cat "$log" >&2
    exit 1
  fi
  cf=$(grep -E '^_(k?CF|__CF)' <<<"$undefined" || true)
  sec=$(grep -E '^_(k?Sec|SSL)' <<<"$undefined" || true)
  other=$(grep -vE '^_(k?CF|__CF|k?Sec|SSL)' <<<"$undefined" || true)
  if [ -n "$other" ]; then
    echo "macos link: undefined symbols of no known framework prefix; add each to" >&2
    echo "$lists/CoreFoundation.symbols or $lists/Security.symbols (where Apple's SDK has it):" >&2
    echo "$other" >&2
    exit 1
  fi
  # One symbol a word.
  # shellcheck disable=SC2086
  add CoreFoundation $cf
  # shellcheck disable=SC2086
  add Security $sec
  echo "macos link: the link needs framework symbols the lists lacked; they were added to" >&2
  echo "$lists/*.symbols: review and commit that diff, then run this again:" >&2
  echo "$undefined" >&2
  exit 1
fi

# The Mach-O headers: 64-bit executables of each architecture that load the frameworks from the
# system and say they start on $MACOSX_DEPLOYMENT_TARGET (LC_BUILD_VERSION's minos).
python3 - "$MACOSX_DEPLOYMENT_TARGET" "$target_dir/aarch64-apple-darwin/$profile/rmachine" arm64 \
  "$target_dir/x86_64-apple-darwin/$profile/rmachine" x86_64 <<'EOF'
import struct, sys
CPU_TYPES = {"arm64": 0x0100000C, "x86_64": 0x01000007}
# "11", "11.0" or "11.0.0" as Mach-O encodes a version: xxxx.yy.zz in nibbles 16/8/0.
parts = [int(p) for p in sys.argv[1].split(".")]
assert 1 <= len(parts) <= 3, f"MACOSX_DEPLOYMENT_TARGET={sys.argv[1]}: not a version"
parts += [0] * (3 - len(parts))
WANTED_MINOS = (parts[0] << 16) | (parts[1] << 8) | parts[2]
def version(v):
    return f"{v >> 16}.{(v >> 8) & 255}.{v & 255}"
def check(path, arch):
    data = open(path, "rb").read()
    magic, cputype, _, filetype, ncmds = struct.unpack_from("<IiiII", data, 0)
    assert magic == 0xFEEDFACF, f"{path}: not a 64-bit Mach-O: {magic:#x}"
    assert cputype == CPU_TYPES[arch], f"{path}: not {arch}: {cputype:#x}"
    assert filetype == 2, f"{path}: not an executable: filetype {filetype}"
    dylibs, minos, offset = [], None, 32
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", data, offset)
        if cmd in (0xC, 0x80000018):  # LC_LOAD_DYLIB, LC_LOAD_WEAK_DYLIB
            name = struct.unpack_from("<I", data, offset + 8)[0]
            dylibs.append(data[offset + name:offset + size].split(b"\0")[0].decode())
        elif cmd == 0x32:  # LC_BUILD_VERSION
            minos = struct.unpack_from("<I", data, offset + 12)[0]
        offset += size
    assert minos is not None, f"{path}: no LC_BUILD_VERSION (the macOS it needs is unknown)"
    assert minos == WANTED_MINOS, \
        f"{path}: needs macOS {version(minos)}, not {version(WANTED_MINOS)} (MACOSX_DEPLOYMENT_TARGET)"
    for wanted in ("/usr/lib/libSystem.B.dylib",
                   "/System/Library/Frameworks/CoreFoundation.framework/Versions/A/CoreFoundation",
                   "/System/Library/Frameworks/Security.framework/Versions/A/Security"):
        assert wanted in dylibs, f"{path}: {wanted} not loaded: {dylibs}"
    print(f"{path}: Mach-O {arch} executable, macOS {version(minos)} or later, loads:")
    for name in dylibs:
        print(f"  {name}")
for path, arch in zip(sys.argv[2::2], sys.argv[3::2]):
    check(path, arch)
EOF
