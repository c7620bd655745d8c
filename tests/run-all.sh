#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a warm one: builds (or reuses from the cache) the
# real control plane, S3, moto, ZenML and helm; starts the local environment; checks formatting,
# lints and generated files; runs every test; stops the environment.
#
# The renewal of scoped credentials (tests/credential_renewal.rs) waits through a real 15-minute
# credential lifetime, so it starts as soon as the environment is up and runs beside everything
# else: the static binary, the lints, the older Rust and the other suites. Its two tests (a boto3
# client, and an Argo workflow on the node) wait through their lifetimes side by side. Deleting the
# ArtifactStore CRD deletes every store in the cluster, so that suite runs alone before it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$(date +%s)
# A fresh clone gains nothing from incremental compilation, and its files are gigabytes on disk.
export CARGO_INCREMENTAL=0
step() { printf '\n==> %s (%ss)\n' "$*" "$(($(date +%s) - start))"; }

step "the Debian packages of the node and of the static binary"
tests/env/build.sh node
step "building the test environment, and beside it the operator, every test and the static binary"
# From empty caches both are long and neither keeps two cores busy throughout: Go links one binary
# at a time, pip and the module downloads wait on the network, cargo waits on its longest crates.
# The node tests check what the image does, not its speed: its binary is built in the dev profile
# (the benchmark, tests/bench/run.sh, uses the release build the Dockerfile makes).
mkdir -p target
msrv=$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml)
setsid bash -c '
  set -euo pipefail
  cargo test --locked --lib --bins --tests --test crd_deletion --test credential_renewal --no-run
  tests/env/build-static.sh --dev | tail -n 1 >target/static-binary
  rustup toolchain list | grep -q "^$1-" || rustup toolchain install "$1" --profile minimal
  echo "the operator, its tests and the static binary built in $(($(date +%s) - $2)) s"
' operator-build "$msrv" "$(date +%s)" >target/operator-build.log 2>&1 &
operator_build=$!
trap 'kill -- "-$operator_build" 2>/dev/null || true' EXIT
tests/env/build.sh
step "the operator's build, begun beside the environment's"
wait "$operator_build" || { cat target/operator-build.log; echo "the operator's build failed" >&2; exit 1; }
tail -n 1 target/operator-build.log
AO_STATIC_BINARY=$(cat target/static-binary)
export AO_STATIC_BINARY
step "starting the local environment"
tests/env/up.sh >/dev/null
trap 'tests/env/down.sh >/dev/null 2>&1 || true' EXIT
step "deleting the ArtifactStore CRD, alone"
cargo test --locked --test crd_deletion
step "the renewal of scoped credentials starts, beside what follows"
# Its binary runs by itself: cargo would hold the build directory's lock while it runs.
renewal_bin=$(cargo test --locked --no-run --test credential_renewal 2>&1 |
  sed -n 's/.*(\(target\/debug\/deps\/credential_renewal-[0-9a-f]*\)).*/\1/p')
[[ -x "$renewal_bin" ]] || { echo "no credential_renewal test binary" >&2; exit 1; }
# In a process group of its own, so that stopping it early also stops the operators it started.
setsid "$renewal_bin" --test-threads 2 >target/credential-renewal.log 2>&1 &
renewal=$!
trap 'kill -- "-$renewal" 2>/dev/null || true; tests/env/down.sh >/dev/null 2>&1 || true' EXIT
step "format, lints and generated files"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo clippy --test crd_deletion --test credential_renewal --locked -- -D warnings
cargo run --quiet --locked -- crd --check
cargo run --quiet --locked -- generate --check
tests/chart/render.sh --check
step "the oldest Rust that Cargo.toml's rust-version promises still builds everything"
CARGO_TARGET_DIR=target/msrv cargo "+$msrv" check --quiet --locked --all-targets --test crd_deletion --test credential_renewal
step "chart and Argo CD health checks"
tests/chart/test-chart.sh
tests/chart/test-argocd-health.sh
step "cargo test"
# Every unit and integration test; the footprint benchmark (tests/bench/run.sh) runs apart. The
# node's tests start it (tests/env/node-up.sh) on first use: tests/argo_node.rs (Argo's controller
# and workflows built by build.sh above), then tests/node.rs (the chart, with the static binary).
cargo test --locked --lib --bins --tests -- --test-threads 4
step "the store and stack suites again, against versitygw (the second S3 implementation)"
AO_S3_SERVER=versitygw cargo test --locked --test artifact_store --test stack -- --test-threads 4
step "the renewal of scoped credentials, started after the environment"
renewal_status=0
wait "$renewal" || renewal_status=$?
cat target/credential-renewal.log
exit "$renewal_status"
