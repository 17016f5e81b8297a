#!/usr/bin/env bash
# Links the rmachine CLI for Apple Silicon on this Linux machine, without Apple's SDK, and
# checks the Mach-O it makes. Not run by CI: it compiles the host crates for macOS (about
# 4.5 min here, where CI's clippy step only type-checks them).
#
# zig ships only libSystem's stubs. Two crates link Apple frameworks: security-framework
# (through rustls-platform-verifier, which reqwest 0.13's rustls features always enable: the
# platform verifier is how downloads trust the Mac's certificate store) and core-foundation.
# So this writes text stubs (.tbd) of CoreFoundation and Security into a scratch "SDK"
# (SDKROOT, which cargo-zigbuild hands to zig as a framework search path) naming the symbols
# the link asks for: a first link with empty stubs lists them as undefined, the second links.
# The binary loads the real frameworks from /System/Library/Frameworks on a Mac.
#
# Usage: tests/macos/link.sh [--release]   (zig and cargo-zigbuild as .ci/setup installs them)
set -euo pipefail
cd "$(dirname "$0")/../.."
zig_venv="${RMACHINE_ZIG_VENV:-/opt/rmachine-zig}"
export PATH="$zig_venv/bin:$PATH"
target=aarch64-apple-darwin
profile=debug
args=()
if [ "${1:-}" = --release ]; then
  profile=release
  args=(--release)
fi

# A fixed place: build scripts of C code (ring) rerun when SDKROOT changes.
sdk=$(realpath -m "${RMACHINE_MACOS_STUBS:-target/$target/sdk-stubs}")
log=$(mktemp)
trap 'rm -f "$log"' EXIT
export SDKROOT="$sdk"

# stub FRAMEWORK SYMBOL…: a text stub exporting the symbols (a placeholder when none).
stub() {
  local framework=$1
  shift
  local symbols=${*:-_rmachine_placeholder}
  local dir="$sdk/System/Library/Frameworks/$framework.framework"
  mkdir -p "$dir"
  cat >"$dir/$framework.tbd" <<EOF
--- !tapi-tbd
tbd-version:     4
targets:         [ arm64-macos ]
install-name:    '/System/Library/Frameworks/$framework.framework/Versions/A/$framework'
exports:
  - targets:         [ arm64-macos ]
    symbols:         [ ${symbols// /, } ]
...
EOF
}

link() {
  cargo-zigbuild build --target "$target" -p rmachine "${args[@]}" >"$log" 2>&1
}

# The stubs are no input cargo tracks: the binary is linked anew each time.
cargo clean -p rmachine --target "$target" "${args[@]}" >/dev/null 2>&1
stub CoreFoundation
stub Security
if ! link; then
  undefined=$(grep -o 'undefined symbol: _[A-Za-z0-9_]*' "$log" | awk '{print $3}' | sort -u || true)
  if [ -z "$undefined" ]; then
    cat "$log" >&2
    exit 1
  fi
  other=$(grep -vE '^_k?(CF|Sec)' <<<"$undefined" || true)
  if [ -n "$other" ]; then
    echo "macos link: symbols of neither CoreFoundation nor Security are undefined:" >&2
    echo "$other" >&2
    exit 1
  fi
  stub CoreFoundation $(grep -E '^_k?CF' <<<"$undefined" || true)
  stub Security $(grep -E '^_k?Sec' <<<"$undefined" || true)
  link || { cat "$log" >&2; exit 1; }
fi

# The Mach-O header: a 64-bit arm64 executable that loads the frameworks from the system.
python3 - "target/$target/$profile/rmachine" <<'EOF'
import struct, sys
data = open(sys.argv[1], "rb").read()
magic, cputype, _, filetype, ncmds = struct.unpack_from("<IiiII", data, 0)
assert magic == 0xFEEDFACF, f"not a 64-bit Mach-O: {magic:#x}"
assert cputype == 0x0100000C, f"not arm64: {cputype:#x}"
assert filetype == 2, f"not an executable: filetype {filetype}"
dylibs, minos, offset = [], None, 32
for _ in range(ncmds):
    cmd, size = struct.unpack_from("<II", data, offset)
    if cmd in (0xC, 0x80000018):  # LC_LOAD_DYLIB, LC_LOAD_WEAK_DYLIB
        name = struct.unpack_from("<I", data, offset + 8)[0]
        dylibs.append(data[offset + name:offset + size].split(b"\0")[0].decode())
    elif cmd == 0x32:  # LC_BUILD_VERSION
        version = struct.unpack_from("<I", data, offset + 12)[0]
        minos = f"{version >> 16}.{(version >> 8) & 255}"
    offset += size
for wanted in ("/usr/lib/libSystem.B.dylib",
               "/System/Library/Frameworks/Security.framework/Versions/A/Security"):
    assert wanted in dylibs, f"{wanted} not loaded: {dylibs}"
print(f"{sys.argv[1]}: Mach-O arm64 executable, macOS {minos} or later, loads:")
for name in dylibs:
    print(f"  {name}")
EOF
