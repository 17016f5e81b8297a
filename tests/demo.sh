#!/usr/bin/env bash
# The main job: build what is needed, create a machine, run a container in it.
#   tests/demo.sh [NAME]      (default NAME: intro)
# Leaves the machine running so you can go on with `eval $(target/release/rmachine env NAME)`.
set -euo pipefail
cd "$(dirname "$0")/.."
name="${1:-intro}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== building rmachine and the test-image tool"
cargo build --release -p rmachine -p rmachine-fixtures
echo "== building the guest image (kernel from Debian, our static binaries)"
guest/build.sh

rmachine=target/release/rmachine
echo "== rmachine create -d qemu $name"
"$rmachine" create -d qemu "$name"
"$rmachine" ls
eval "$("$rmachine" env "$name")"

echo "== docker load (a busybox image built locally from Debian's busybox-static)"
tar="$(mktemp -d)/busybox.tar"
target/release/rmachine-fixtures busybox "$tar"
docker load -i "$tar"
echo "== docker run --rm busybox echo hello"
docker run --rm busybox echo "hello from $(docker version --format '{{.Server.Os}}/{{.Server.Arch}}') in machine $name"
echo
echo "The machine is running. Next: eval \$($rmachine env $name); docker ps -a; $rmachine ssh $name; $rmachine rm -y $name"
