#!/usr/bin/env bash
# The benchmarks: builds the environment (cached), the release binary and the static musl binary
# the image ships, starts the local environment, and runs tests/bench/footprint.rs (binary sizes,
# memory, time to Ready for 200 stores, the static image) and tests/bench/scale.rs, which takes
# this script's arguments: --stores N (200), --namespaces M (10), --resync SECONDS (60), --profile.
# For example: tests/bench/run.sh --stores 10000 --namespaces 500
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source tests/env/lib.sh

tests/env/build.sh
static=$(tests/env/build-static.sh | tail -n 1)

# A fresh environment: what the tests left (stores, Stacks, namespaces) would be reconciled beside
# the benchmark's own objects and counted in its figures.
tests/env/down.sh >/dev/null
tests/env/up.sh >/dev/null
trap 'tests/env/down.sh >/dev/null 2>&1 || true' EXIT
AO_STATIC_BINARY="$static" cargo bench --locked --bench footprint
AO_STATIC_BINARY="$static" cargo bench --locked --bench scale -- "$@"
