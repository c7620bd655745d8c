#!/usr/bin/env bash
# Builds the static (musl) release binary exactly as deploy/docker/Dockerfile does, for the image
# the node test installs and for the benchmarks. Installs what it needs on a fresh machine: Debian's
# musl-tools (aws-lc-sys compiles C for the static target) and Rust's musl standard library. Uses a
# target directory of its own (target/musl), so it never waits on the debug builds of the tests.
# The last line on stdout is the binary's path.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

target="$(uname -m)-unknown-linux-musl"
if ! command -v musl-gcc >/dev/null; then
  log "installing musl-tools"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends musl-tools >/dev/null
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target" >&2
log "building the static binary (as deploy/docker/Dockerfile does)"
CARGO_TARGET_DIR=target/musl cargo build --release --locked --target "$target" --bin artifact-operator >&2
binary="$REPO_ROOT/target/musl/$target/release/artifact-operator"
# The image has no libc: fail here, not at pod start, if the binary asks for a dynamic loader.
if readelf --program-headers "$binary" | grep -q INTERP; then log "ERROR: $binary is not static"; exit 1; fi
echo "$binary"
