#!/usr/bin/env bash
# Tests the Argo CD health checks deploy/argocd/{artifactstore,stack}-health.lua with Lua 5.1 (what
# Argo CD's gopher-lua implements) on objects, each with the status and message it must give: one
# per reason each kind's Ready condition can carry (Progressing when transient, Degraded otherwise),
# generated from src/reason.rs by `artifact-operator generate --fixtures`, and the objects captured
# from the integration tests in tests/chart/fixtures/argocd/*.json. Also checks that the scripts are
# the generated ones and that argocd-cm-patch.yaml carries them. Installs lua5.1 and lua-dkjson with
# apt-get when they are missing. To capture the objects again (the local environment up):
#   CAPTURE_HEALTH_FIXTURES=$PWD/tests/chart/fixtures/argocd cargo test --test artifact_store --test robustness --test stack
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

LUA=$(find_lua)
"$LUA" -e 'require("dkjson")' 2>/dev/null || apt_install lua-dkjson
ARGOCD="$REPO_ROOT/deploy/argocd"

generated=$(mktemp -d)
trap 'rm -rf "$generated"' EXIT
if out=$(cd "$REPO_ROOT" && cargo run --quiet --locked -- generate --check --fixtures "$generated" 2>&1); then
  pass "the health scripts are generated from src/reason.rs"
else
  fail "the health scripts are generated from src/reason.rs" "$out"
fi

shopt -s nullglob
fixtures=("$generated"/*.json "$CHART_TESTS_DIR"/fixtures/argocd/*.json)
((${#fixtures[@]} >= 8)) || { echo "expected at least 8 fixtures, found ${#fixtures[@]}" >&2; exit 1; }

for fixture in "${fixtures[@]}"; do
  name=$(basename "$fixture" .json)
  # The fixture's "script" names the health check: artifactstore or stack.
  script=$(sed -n 's/^ *"script": *"\([a-z]*\)".*/\1/p' "$fixture" | head -n 1)
  if [[ -z "$script" || ! -f "$ARGOCD/$script-health.lua" ]]; then
    fail "$name" "no health script for \"script\": \"$script\""
    continue
  fi
  if out=$("$LUA" "$CHART_TESTS_DIR/argocd-health-harness.lua" "$ARGOCD/$script-health.lua" "$fixture" 2>&1); then
    pass "$name ($out)"
  else
    fail "$name" "$out"
  fi
done

# argocd-cm-patch.yaml must install exactly these scripts under the right keys.
ensure_pyyaml
for kind in ArtifactStore Stack; do
  file="$ARGOCD/$(tr '[:upper:]' '[:lower:]' <<<"$kind")-health.lua"
  key="resource.customizations.health.artifacts.dev_$kind"
  if out=$(python3 - "$ARGOCD/argocd-cm-patch.yaml" "$key" "$file" 2>&1 <<'PY'
import sys, yaml
patch_path, key, script_path = sys.argv[1:]
cm = yaml.safe_load(open(patch_path))
assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm", "not a patch of argocd-cm"
script = cm["data"].get(key)
assert script is not None, f"no key {key}"
assert script == open(script_path).read(), f"{key} differs from {script_path}: run tests/chart/render.sh"
PY
  ); then
    pass "argocd-cm-patch.yaml installs $(basename "$file") as $key"
  else
    fail "argocd-cm-patch.yaml installs $(basename "$file") as $key" "$out"
  fi
done

finish
