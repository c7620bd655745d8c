#!/usr/bin/env bash
# Stops the local test environment that tests/env/up.sh started (first the node of node-up.sh, if
# there is one) and removes its state. The logs are moved to $STATE_DIR/../testenv-logs (replacing
# the previous ones) for debugging. Idempotent: with nothing running it only clears what is left.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PIDS="$STATE_DIR/pids"
KEPT_LOGS="$(dirname "$STATE_DIR")/testenv-logs"

# One up.sh or down.sh at a time; up.sh holds the lock already when it runs us.
if [[ "${_AO_TESTENV_LOCKED:-}" != 1 ]]; then
  mkdir -p "$(dirname "$STATE_DIR")"
  exec 9>"$STATE_DIR.lock"
  flock -w 300 9 || { log "ERROR: timed out waiting for another up.sh/down.sh"; exit 1; }
fi

# The node of node-up.sh goes first: its containers, mounts, network and cgroups need more than a
# signal, and its kubelet would only restart what we stop. (Also for what a crashed node left.)
if [[ -d "$STATE_DIR/node" || "$(cat "/sys/class/net/$POD_BRIDGE/ifalias" 2>/dev/null)" == "$STATE_DIR" ]]; then
  _AO_TESTENV_LOCKED=1 "$ENV_DIR/node-down.sh"
fi

# A pid is ours only while its process carries up.sh's marker in its environment: a pid file that
# outlived its process (after a reboot, say) must not make us signal whoever has the pid now.
ours() {
  local pid=$1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" | grep -qxF "AO_TESTENV_STATE=$STATE_DIR"
}

pids=()
if [[ -d "$PIDS" ]]; then
  for f in "$PIDS"/*.pid; do
    [[ -f "$f" ]] || continue
    pid=$(<"$f")
    ours "$pid" && pids+=("$pid")
  done
fi

if ((${#pids[@]})); then
  log "stopping ${#pids[@]} processes"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  deadline=$((SECONDS + GRACE_SECONDS))
  while :; do
    left=()
    for pid in "${pids[@]}"; do ours "$pid" && left+=("$pid"); done
    ((${#left[@]})) || break
    if ((SECONDS >= deadline)); then
      log "killing ${#left[@]} processes that ignored SIGTERM"
      kill -KILL "${left[@]}" 2>/dev/null || true
      # Give the kernel a moment to tear them down (a killed process loses its environ at once,
      # so `ours` turns false as soon as it is gone or a zombie).
      sleep 0.2
      break
    fi
    sleep 0.1
  done
fi

if [[ -d "$STATE_DIR/logs" ]]; then
  rm -rf "$KEPT_LOGS"
  mv "$STATE_DIR/logs" "$KEPT_LOGS"
fi
rm -rf "$STATE_DIR"
