# Shared paths for the local test environment. Sourced by the scripts beside it.
ENV_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$ENV_DIR/../.." && pwd)"
# Built binaries and the Python virtual environment live outside the checkout, keyed by the pinned
# versions, so a fresh clone on the same machine reuses them.
CACHE_DIR="${ARTIFACT_OPERATOR_CACHE:-$HOME/.cache/artifact-operator}"
# A running environment writes its state (certificates, data, logs, env file) here.
STATE_DIR="${ARTIFACT_OPERATOR_ENV:-$REPO_ROOT/target/testenv}"

log() { printf '[testenv] %s\n' "$*" >&2; }

# The cache key of a Go tool module: its go.mod and go.sum, plus the Go toolchain and the linker
# flags that build it, and for a program of our own (a main.go beside go.mod) its sources too.
module_key() { # module-dir [ldflags]
  local sources=()
  [[ -f "$ENV_DIR/$1/main.go" ]] && sources=("$ENV_DIR/$1"/*.go)
  cat "$ENV_DIR/$1/go.mod" "$ENV_DIR/$1/go.sum" "${sources[@]}" <(go env GOVERSION) <(echo "${2:-}") |
    sha256sum | cut -c1-16
}
