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

step "building the test environment (cached under ~/.cache/artifact-operator)"
tests/env/build.sh
step "building the operator and every test"
cargo test --locked --lib --bins --tests --test crd_deletion --test credential_renewal --no-run
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
step "building the static binary the image carries (the node test installs it with the chart)"
AO_STATIC_BINARY=$(tests/env/build-static.sh | tail -n 1)
export AO_STATIC_BINARY
step "format, lints and generated files"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo clippy --test crd_deletion --test credential_renewal --locked -- -D warnings
cargo run --quiet --locked -- crd --check
cargo run --quiet --locked -- generate --check
tests/chart/render.sh --check
step "the oldest Rust that Cargo.toml's rust-version promises still builds everything"
msrv=$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml)
rustup toolchain list | grep -q "^$msrv-" || rustup toolchain install "$msrv" --profile minimal >&2
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
