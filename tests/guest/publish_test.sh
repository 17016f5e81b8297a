#!/usr/bin/env bash
# Checks guest/publish.sh's refusals on small fake images (no guest build needed):
#   tests/guest/publish_test.sh
set -euo pipefail
HERE="$(cd "$(dirname "$0")/../.." && pwd)"
VERSION="$(cd "$HERE" && cargo metadata --no-deps --format-version 1 \
  | jq -r '.packages[] | select(.name == "rmachine") | .version')"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# image DIR VERSION PROFILE: a fake x86_64 image without ISO.
image() {
  mkdir -p "$1"
  echo kernel >"$1/vmlinuz"
  echo initrd >"$1/initrd.img"
  jq -n --arg v "$2" --arg p "$3" \
    --arg k "$(sha256sum <"$1/vmlinuz" | cut -d' ' -f1)" \
    --arg i "$(sha256sum <"$1/initrd.img" | cut -d' ' -f1)" \
    '{version: $v, arch: "x86_64", kernel: "vmlinuz", initrd: "initrd.img", cmdline: "",
      buildProfile: $p, sha256: {vmlinuz: $k, "initrd.img": $i}}' >"$1/manifest.json"
}

image "$tmp/good" "$VERSION-abc" release
image "$tmp/ci" "$VERSION-abc" "release with CARGO_PROFILE_RELEASE_LTO=false"
image "$tmp/old" "0.0.1-abc" release

# An existing release directory without a manifest: refused, nothing moved inside it.
mkdir -p "$tmp/dest/guest-v$VERSION-x86_64"
touch "$tmp/dest/guest-v$VERSION-x86_64/partial"
if "$HERE/guest/publish.sh" "$tmp/dest" "$tmp/good" 2>"$tmp/err"; then
  fail "published into an existing directory without manifest"
fi
[[ "$(ls -A "$tmp/dest/guest-v$VERSION-x86_64")" == partial ]] \
  || fail "staging moved inside the existing directory"
rm -r "$tmp/dest/guest-v$VERSION-x86_64"

"$HERE/guest/publish.sh" "$tmp/ci" "$tmp/ci" 2>"$tmp/err" && fail "published CI's profile"
grep -q "not the plain release profile" "$tmp/err" || fail "CI profile: $(cat "$tmp/err")"
"$HERE/guest/publish.sh" "$tmp/dest" "$tmp/old" 2>"$tmp/err" && fail "published another version"
grep -q "is not rmachine's $VERSION" "$tmp/err" || fail "version: $(cat "$tmp/err")"

# A manifest without "arch" is refused as such (a tab-split read shifted the fields).
jq 'del(.arch)' "$tmp/good/manifest.json" >"$tmp/m" && mkdir -p "$tmp/noarch" \
  && cp "$tmp/good/"{vmlinuz,initrd.img} "$tmp/noarch/" && mv "$tmp/m" "$tmp/noarch/manifest.json"
"$HERE/guest/publish.sh" "$tmp/dest" "$tmp/noarch" 2>"$tmp/err" && fail "published without arch"
grep -q "arch missing" "$tmp/err" || fail "no arch: $(cat "$tmp/err")"

"$HERE/guest/publish.sh" "$tmp/dest" "$tmp/good" >/dev/null
cmp -s "$tmp/dest/guest-v$VERSION-x86_64/manifest.json" "$tmp/good/manifest.json" || fail "not published"
echo "publish_test: ok"
