#!/usr/bin/env bash
# The benchmarks: builds the environment (cached), the release binary and the static musl binary
# the image ships, starts the local environment, and runs tests/bench/footprint.rs (binary sizes,
# memory, time to Ready for 200 stores, the static image) and tests/bench/scale.rs, which takes
# this script's arguments: --stores N (200), --namespaces M (10), --resync SECONDS (60), --profile.
# For example: tests/bench/run.sh --stores 10000 --namespaces 500
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source tests/env/lib.sh

target="$(uname -m)-unknown-linux-musl"
# The musl C toolchain (aws-lc-sys compiles C for the static target) and Rust's musl std.
if ! command -v musl-gcc >/dev/null; then
  log "installing musl-tools"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends musl-tools >/dev/null
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target"

tests/env/build.sh
log "building the static binary (as deploy/docker/Dockerfile does)"
# A target directory of its own, so this build and the test builds never wait on each other.
CARGO_TARGET_DIR=target/musl cargo build --release --locked --target "$target" --bin artifact-operator
static="$PWD/target/musl/$target/release/artifact-operator"

tests/env/up.sh >/dev/null
trap 'tests/env/down.sh >/dev/null 2>&1 || true' EXIT
AO_STATIC_BINARY="$static" cargo bench --locked --bench footprint
cargo bench --locked --bench scale -- "$@"
