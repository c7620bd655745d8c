#!/usr/bin/env bash
# Stops the node that tests/env/node-up.sh started and removes everything it put on this machine:
# its processes and every container, the mounts under its directories, the pods' network
# namespaces, the bridge, IPAM state, its cgroups, the host paths it created. The control plane of
# up.sh keeps running; the Node object and the pods bound to it are deleted from it. The node's
# logs stay in $STATE_DIR/logs (node-*.log, and the pods' logs in node-pod-logs/). Idempotent: with
# nothing running it only clears what is left, also after a crash. tests/env/down.sh runs it first.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PIDS="$NODE_DIR/pids"

((EUID == 0)) || die "node-down.sh needs root, as node-up.sh does"

# One up.sh, down.sh, node-up.sh or node-down.sh at a time; those running us hold the lock already.
if [[ "${_AO_TESTENV_LOCKED:-}" != 1 ]]; then
  mkdir -p "$(dirname "$STATE_DIR")"
  exec 9>"$STATE_DIR.lock"
  flock -w 300 9 || die "timed out waiting for another up.sh/down.sh/node-up.sh"
fi

# A process is ours only while it carries node-up.sh's marker (the daemons, socat's children and
# containerd's shims): a pid file that outlived its process must not make us signal a stranger.
ours() {
  local pid=$1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  grep -qzxF "AO_TESTENV_NODE=$NODE_DIR" "/proc/$pid/environ" 2>/dev/null
}

# Every process carrying the marker, whether or not it has a pid file (never we or our callers,
# should one of them carry it).
marked_processes() {
  local ancestors=" " pid=$$ file
  while ((pid > 1)); do
    ancestors+="$pid "
    pid=$(awk '{print $4}' "/proc/$pid/stat" 2>/dev/null) || break
  done
  for file in $(grep -lzxF "AO_TESTENV_NODE=$NODE_DIR" /proc/[0-9]*/environ 2>/dev/null); do
    pid=${file#/proc/} pid=${pid%/environ}
    [[ "$ancestors" == *" $pid "* || "$pid" == "$BASHPID" ]] || echo "$pid"
  done
  return 0
}

# stop PID...: SIGTERM, then SIGKILL for what is still there after the grace period; returns once
# they are gone for good, since what comes next (unmounting, removing cgroups) needs them gone. (The
# pids were checked with `ours` just before; they cannot be reused while we wait for them.)
stop() {
  (($#)) || return 0
  kill -TERM "$@" 2>/dev/null || true
  local deadline=$((SECONDS + GRACE_SECONDS)) pid left killed=0
  while :; do
    left=()
    for pid in "$@"; do alive "$pid" && left+=("$pid"); done
    ((${#left[@]})) || return 0
    if ((SECONDS >= deadline && !killed)); then
      log "killing ${#left[@]} node processes that ignored SIGTERM"
      kill -KILL "${left[@]}" 2>/dev/null || true
      killed=1
    elif ((killed && SECONDS >= deadline + 10)); then
      log "WARNING: node processes ${left[*]} outlived SIGKILL by 10s (stuck in the kernel?)"
      return 0
    fi
    sleep 0.1
  done
}

pid_of() { # NAME: the pid in NAME's pid file, if that process is still ours
  local pid
  pid=$(cat "$PIDS/$1.pid" 2>/dev/null) && ours "$pid" && echo "$pid"
  return 0
}

# The node's cgroup root in every hierarchy, under which the kubelet (and runc) put the pods.
node_cgroups() {
  local mnt
  for mnt in $(findmnt -rn -t cgroup,cgroup2 -o TARGET); do
    [[ -d "$mnt/$NODE_ID" ]] && echo "$mnt/$NODE_ID"
  done
  return 0
}

# Every process in the node's cgroups is a container's (or a sandbox's): only the kubelet's pods
# are put there.
kill_pod_processes() {
  local pids
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    # (A cgroup may vanish between find and cat, as its container exits.)
    pids=$(node_cgroups | while read -r dir; do find "$dir" -name cgroup.procs -exec cat {} + 2>/dev/null; done | sort -u)
    [[ -n "$pids" ]] || return 0
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.2
  done
  log "WARNING: processes left in the node's cgroups: $pids"
}

# Mount points under the node's directories, deepest first (a path sorts after its parents).
node_mounts() {
  findmnt -rn -o TARGET | while read -r target; do
    target=$(printf '%b' "$target")   # findmnt escapes blanks as \x20
    case "$target" in
      "$NODE_DIR" | "$NODE_DIR"/* | "$NODE_RUN" | "$NODE_RUN"/*) echo "$target" ;;
    esac
  done | sort -ru
}

# --- the kubelet first, so that it restarts nothing; the scheduler, registry and relays with it --

daemons=()
for name in node-kubelet node-kube-scheduler node-registry node-relay-api node-relay-s3 node-relay-s3-tls \
  node-relay-moto node-relay-zenml node-relay-registry; do
  pid=$(pid_of "$name")
  [[ -n "$pid" ]] && daemons+=("$pid")
done
if ((${#daemons[@]})); then
  log "stopping the node's kubelet, scheduler, registry and relays"
  stop "${daemons[@]}"
fi

# The pods bound to the node and the Node object go from the apiserver too (at once: no kubelet is
# left to confirm a graceful deletion), so a new node-up.sh starts empty and controllers recreate
# their pods as Pending. Best effort: the control plane may be down already.
if [[ -f "$STATE_DIR/ports" && -f "$PKI/admin.crt" ]]; then
  # shellcheck source=/dev/null
  source "$STATE_DIR/ports"
  if kube_curl /readyz --max-time 2 >/dev/null 2>&1; then
    for pod in $(kube_curl "/api/v1/pods?fieldSelector=spec.nodeName%3D$NODE_NAME" 2>/dev/null | python3 -c '
import json, sys
for p in json.load(sys.stdin)["items"]:
    print(p["metadata"]["namespace"] + "/" + p["metadata"]["name"])' 2>/dev/null); do
      kube_curl "/api/v1/namespaces/${pod%%/*}/pods/${pod#*/}?gracePeriodSeconds=0" -X DELETE >/dev/null 2>&1 || true
    done
    kube_curl "/api/v1/nodes/$NODE_NAME" -X DELETE >/dev/null 2>&1 || true
  fi
fi

# --- containers: killed and deleted through containerd, which stops their shims -----------------

containerd_pid=$(pid_of node-containerd)
if [[ -n "$containerd_pid" ]] && ctr --address "$NODE_CONTAINERD_SOCK" version >/dev/null 2>&1; then
  node_ctr() { ctr --address "$NODE_CONTAINERD_SOCK" --namespace k8s.io "$@"; }
  mapfile -t containers < <(node_ctr containers list --quiet 2>/dev/null)
  if ((${#containers[@]})); then
    log "deleting ${#containers[@]} containers and sandboxes"
    for id in "${containers[@]}"; do
      node_ctr tasks kill --all --signal SIGKILL "$id" >/dev/null 2>&1 || true
    done
    kill_pod_processes
    for id in "${containers[@]}"; do
      node_ctr tasks delete --force "$id" >/dev/null 2>&1 || true
      node_ctr containers delete "$id" >/dev/null 2>&1 || true
    done
  fi
fi
if [[ -n "$containerd_pid" ]]; then
  log "stopping the node's containerd"
  stop "$containerd_pid"
fi

# Whatever is left: containers of a containerd that died earlier and their shims, which outlive it.
kill_pod_processes
mapfile -t leftovers < <(marked_processes)
if ((${#leftovers[@]})); then
  log "stopping ${#leftovers[@]} leftover node processes (shims, relay connections)"
  stop "${leftovers[@]}"
fi

# --- mounts (with the pods' network namespaces), shim sockets, the bridge ------------------------

# The shims' sockets are in /run/containerd/s whatever containerd's state directory; a shim that
# was killed leaves its own behind. Each task's directory names its shim's address.
for address in "$NODE_RUN"/containerd/state/io.containerd.runtime.v2.task/k8s.io/*/address; do
  [[ -f "$address" ]] || continue
  socket=$(<"$address") socket=${socket#unix://}
  [[ "$socket" == /run/containerd/s/* ]] && rm -f "$socket"
done

# The pods' network namespaces are nsfs mounts in containerd's state directory
# (netns_mounts_under_state_dir), so they go with the others.
for _ in 1 2 3 4 5; do
  mapfile -t mounts < <(node_mounts)
  ((${#mounts[@]})) || break
  for target in "${mounts[@]}"; do
    umount "$target" 2>/dev/null || umount --lazy "$target" 2>/dev/null || true
  done
done
mapfile -t mounts < <(node_mounts)
if ((${#mounts[@]})); then
  # Removing the directories now could reach through a bind mount into the host's files.
  die "still mounted, so nothing under $NODE_DIR is removed: ${mounts[*]}"
fi

# Only our bridge (node-up.sh names the state directory in its alias), not another checkout's node's.
if [[ "$(cat "/sys/class/net/$POD_BRIDGE/ifalias" 2>/dev/null)" == "$STATE_DIR" ]]; then
  # The pods' veth ends vanish with their namespaces; any still attached go with the bridge.
  for veth in $(ip -o link show master "$POD_BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link delete "$veth" 2>/dev/null || true
  done
  ip link delete "$POD_BRIDGE"
fi

# --- cgroups, host paths, state ------------------------------------------------------------------

kill_pod_processes
for dir in $(node_cgroups); do
  # Deepest first; a cgroup directory is removed with rmdir, never rm (its files are not files).
  find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
  [[ ! -d "$dir" ]] || log "WARNING: could not remove the cgroup $dir"
done

# libcni's cache of results, kept per network and sandbox in /var/lib/cni/results: our network's,
# and the loopback network's (CRI's own) of the same sandboxes.
for result in /var/lib/cni/results/"$NODE_CNI_NETWORK"-*-eth0; do
  [[ -f "$result" ]] || continue
  sandbox=${result#/var/lib/cni/results/"$NODE_CNI_NETWORK"-} sandbox=${sandbox%-eth0}
  rm -f "$result" "/var/lib/cni/results/cni-loopback-$sandbox-lo"
done
# The kubelet's device-plugin socket and checkpoint (a path it does not let us choose), unless a
# kubelet of this machine's own listens there, and the /var/log/containers links into our pod logs.
device_plugins=/var/lib/kubelet/device-plugins
if [[ -S "$device_plugins/kubelet.sock" ]] && ! grep -qF " $device_plugins/kubelet.sock" /proc/net/unix; then
  rm -f "$device_plugins/kubelet.sock" "$device_plugins/kubelet_internal_checkpoint"
fi
for link in /var/log/containers/*.log; do
  [[ -L "$link" ]] || continue
  case "$(readlink "$link")" in "$NODE_DIR"/* | "$NODE_RUN"/*) rm -f "$link" ;; esac
done
# The host paths that did not exist before node-up.sh, with whatever (now empty) directories the
# node created in them; anything else in there stays.
if [[ -f "$NODE_DIR/created-host-paths" ]]; then
  while read -r path; do
    if [[ -d "$path" ]]; then find "$path" -depth -type d -empty -delete 2>/dev/null || true; fi
    [[ ! -e "$path" ]] || log "WARNING: $path was created by the node but is not empty; left in place"
  done <"$NODE_DIR/created-host-paths"
fi

rm -f "$PKI"/node-*.crt "$PKI"/node-*.key
if [[ -d "$NODE_RUN/pod-logs" && -d "$LOGS" ]]; then
  rm -rf "$LOGS/node-pod-logs"
  mv "$NODE_RUN/pod-logs" "$LOGS/node-pod-logs"
fi
rm -rf "$NODE_DIR" "$NODE_RUN"
