#!/usr/bin/env bash
# Lays out built guest images as release files, exactly as `rmachine create` downloads them from
# its default URL (crates/host/src/image.rs DEFAULT_DOWNLOAD_URL):
#
#   https://github.com/rmachine/rmachine/releases/download/guest-v{version}-{arch}/
#
# {version} is rmachine's version (the workspace's, which the CLI was built with) and {arch} the
# guest's architecture. For each image directory (default: guest/out and guest/out-aarch64, as
# `guest/build.sh` and `ARCH=aarch64 guest/build.sh` write them) this writes
#
#   DEST/guest-v{version}-{arch}/manifest.json, vmlinuz, initrd.img (and rmachine.iso for x86_64)
#
# after checking every sha256 the manifest lists. Each such directory is one GitHub release
# (tag guest-v{version}-{arch}) whose assets are its files, or, for a mirror, a directory served
# at the base URL users pass with --guest-image-url / RMACHINE_GUEST_IMAGE_URL
# (e.g. https://mirror.example/rmachine/guest-v{version}-{arch}/).
#
# Usage:
#   guest/publish.sh DEST [IMAGE_DIR...]
#
# A release already in DEST with other sums is refused: machines keep booting the files they
# downloaded, and a client that has them cached refuses a changed image of the same version.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
WORKSPACE="$(dirname "$HERE")"
die() { echo "publish.sh: $*" >&2; exit 1; }

[[ $# -ge 1 ]] || die "usage: guest/publish.sh DEST [IMAGE_DIR...]"
DEST="$1"
shift
for tool in jq sha256sum cargo; do
  command -v "$tool" >/dev/null || die "$tool not found"
done

if [[ $# -eq 0 ]]; then
  for dir in "$HERE/out" "$HERE/out-aarch64"; do
    [[ -f "$dir/manifest.json" ]] && set -- "$@" "$dir"
  done
  [[ $# -gt 0 ]] || die "no guest image in $HERE/out or $HERE/out-aarch64; run guest/build.sh (and ARCH=aarch64 guest/build.sh) first"
fi

VERSION="$(cd "$WORKSPACE" && cargo metadata --no-deps --format-version 1 \
  | jq -r '.packages[] | select(.name == "rmachine") | .version')"
[[ -n "$VERSION" && "$VERSION" != null ]] || die "cannot read rmachine's version from $WORKSPACE"

for image in "$@"; do
  manifest="$image/manifest.json"
  [[ -f "$manifest" ]] || die "$image: no manifest.json (run guest/build.sh)"
  # One field a line: `IFS=$'\t' read` merges empty fields (tab is whitespace to read), so a
  # manifest without "arch" shifted every later field.
  fields="$(jq -r '.arch // "", .version // "", .kernel // "", .initrd // "", .iso // "",
                   .buildProfile // ""' "$manifest")" || die "$manifest: not a manifest"
  mapfile -t field <<<"$fields"
  arch="${field[0]-}" version="${field[1]-}" kernel="${field[2]-}" initrd="${field[3]-}"
  iso="${field[4]-}" profile="${field[5]-}"
  sums="$(jq -r '.sha256 | to_entries[] | "\(.value)  \(.key)"' "$manifest")" \
    || die "$manifest: no sha256 map"
  case "$arch" in
    x86_64 | aarch64) ;;
    *) die "$manifest: arch ${arch:-missing}, expected x86_64 or aarch64" ;;
  esac
  # guest/build.sh names the version "<rmachine's version>-<hash of the files>".
  [[ "$version" == "$VERSION" || "$version" == "$VERSION"-* ]] \
    || die "$manifest: version ${version:-missing} is not rmachine's $VERSION: rebuild the image (guest/build.sh)"
  [[ "$profile" == release ]] \
    || die "$manifest: built with profile ${profile:-unknown}, not the plain release profile (CI's faster arm64 build?): rebuild with guest/build.sh"
  # The files the downloader fetches are exactly those the manifest lists with a sum.
  mapfile -t files < <(sed 's/^[^ ]*  //' <<<"$sums")
  for name in "$kernel" "$initrd" ${iso:+"$iso"}; do
    printf '%s\n' "${files[@]}" | grep -qxF -- "$name" || die "$manifest: no sha256 for $name"
  done
  for name in "${files[@]}"; do
    [[ "$name" =~ ^[A-Za-z0-9._-]+$ && "$name" != manifest.json ]] \
      || die "$manifest: bad file name $name"
  done
  if ! bad="$(cd "$image" && sha256sum --quiet -c - <<<"$sums" 2>&1)"; then
    die "$image: $(grep -m1 FAILED <<<"$bad" || echo "$bad") (its sha256 differs from the manifest's)"
  fi

  release="guest-v$VERSION-$arch"
  out="$DEST/$release"
  if [[ -f "$out/manifest.json" ]]; then
    published="$(jq -r '.sha256 | to_entries[] | "\(.value)  \(.key)"' "$out/manifest.json")"
    if [[ "$published" == "$sums" ]]; then
      echo "$release: already published with the same files"
      continue
    fi
    die "$out holds another image ($(jq -r .version "$out/manifest.json")); a published release is never replaced: bump rmachine's version"
  fi
  mkdir -p "$DEST"
  staging="$(mktemp -d "$DEST/.$release.XXXXXX")"
  trap 'rm -rf "$staging"' EXIT
  for name in "${files[@]}"; do
    cp "$image/$name" "$staging/$name"
  done
  cp "$manifest" "$staging/manifest.json"
  (cd "$staging" && sha256sum --quiet -c - <<<"$sums") \
    || die "the copy in $staging does not match its manifest"
  chmod 0755 "$staging"
  # -T: an existing $out (a directory without manifest.json) must fail, not receive
  # $staging inside it while this reports success.
  mv -T "$staging" "$out" || die "cannot move $staging to $out (does $out exist?)"
  trap - EXIT
  echo "$release: $version (${files[*]} manifest.json)"
done
