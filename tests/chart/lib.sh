# shellcheck shell=bash disable=SC2034  # variables here are used by the scripts that source it
# Shared by the scripts in tests/chart. Sourced, not run.
CHART_TESTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$CHART_TESTS_DIR/../.." && pwd)"
CHART_DIR="$REPO_ROOT/charts/artifact-operator"
CACHE_DIR="${ARTIFACT_OPERATOR_CACHE:-$HOME/.cache/artifact-operator}"

# Prints the path of helm. With Go on the machine, through tests/env/build-helm.sh, which builds the
# pinned version when the cache does not hold it yet (a no-op otherwise); without Go, the cached
# $CACHE_DIR/bin/helm as it is.
find_helm() {
  if command -v go >/dev/null; then
    bash "$REPO_ROOT/tests/env/build-helm.sh" | tail -n 1
  elif [[ -x "$CACHE_DIR/bin/helm" ]]; then
    printf '%s\n' "$CACHE_DIR/bin/helm"
  else
    echo "no helm at $CACHE_DIR/bin/helm, and no Go to build it with (tests/env/build-helm.sh)" >&2
    return 1
  fi
}

# Installs a Debian package when one of its commands is missing (as root, or through sudo).
apt_install() { # package...
  local sudo=()
  ((EUID == 0)) || sudo=(sudo)
  echo "installing $* with apt-get" >&2
  "${sudo[@]}" apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$@" >&2
}

# Prints the path of a Lua 5.1 interpreter (Argo CD's health scripts run on gopher-lua, a 5.1).
find_lua() {
  command -v lua5.1 >/dev/null || apt_install lua5.1
  command -v lua5.1
}

# Makes `python3 -c 'import yaml'` work.
ensure_pyyaml() {
  python3 -c 'import yaml' 2>/dev/null && return
  echo "installing PyYAML for $(command -v python3)" >&2
  python3 -m pip install --quiet pyyaml >&2 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages pyyaml >&2
}

# Test bookkeeping: one line per case, and a closing "N passed, N failed".
PASSED=0
FAILED=0
pass() { PASSED=$((PASSED + 1)); printf 'PASS  %s\n' "$1"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL  %s\n' "$1"; [[ -z "${2:-}" ]] || printf '%s\n' "$2" | sed 's/^/      /'; }
finish() {
  printf '%d passed, %d failed\n' "$PASSED" "$FAILED"
  ((FAILED == 0))
}
