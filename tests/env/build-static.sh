#!/usr/bin/env bash
# Builds the static (musl) binary as deploy/docker/Dockerfile does, for the image the node test
# installs and for the benchmarks. Installs what it needs on a fresh machine: Debian's musl-tools
# (aws-lc-sys compiles C for the static target) and Rust's musl standard library. Uses a target
# directory of its own (target/musl), so it never waits on the debug builds of the tests.
#
#   tests/env/build-static.sh          the release build, exactly the image's (the benchmarks)
#   tests/env/build-static.sh --dev    the same binary in cargo's dev profile, far quicker to build
#                                      from empty caches: the node tests check what the image does,
#                                      not how fast
#
# The last line on stdout is the binary's path.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

profile=release
case "${1:-}" in
  "") ;;
  --dev) profile=dev ;;
  *) die "usage: $0 [--dev]" ;;
esac
target="$(uname -m)-unknown-linux-musl"
if ! command -v musl-gcc >/dev/null; then
  log "installing musl-tools"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends musl-tools >/dev/null
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target" >&2
log "building the static binary (as deploy/docker/Dockerfile does, profile $profile)"
CARGO_TARGET_DIR=target/musl cargo build --profile "$profile" --locked --target "$target" --bin artifact-operator >&2
[[ $profile == dev ]] && dir=debug || dir=$profile
binary="$REPO_ROOT/target/musl/$target/$dir/artifact-operator"
# The image has no libc: fail here, not at pod start, if the binary asks for a dynamic loader.
if readelf --program-headers "$binary" | grep -q INTERP; then log "ERROR: $binary is not static"; exit 1; fi
echo "$binary"
