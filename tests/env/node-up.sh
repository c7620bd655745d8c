#!/usr/bin/env bash
# Adds a real Kubernetes node to the environment of tests/env/up.sh (which it runs first, so that
# starts too when it is not running), for the tests that install the operator's Helm chart and run
# its pods:
#   containerd (CRI plugin, runc, cgroupfs) whose pause image is built here from catatonit, a kubelet
#   and a kube-scheduler from the pinned Kubernetes module, a private pod bridge ($POD_BRIDGE,
#   $POD_SUBNET, no route off the machine, no NAT), and relays on its gateway ($POD_GATEWAY) to the
#   apiserver, both MinIOs, moto and the ZenML server, on the same ports as on 127.0.0.1 (TLS stays
#   end to end); and a container registry (the distribution registry, HTTPS with a certificate from
#   the cluster CA, its storage in the node's directory) that containerd pulls from.
# There is no kube-proxy and no cluster DNS. Pods reach the apiserver at the address the kubelet
# gives them for the Service `kubernetes` (KUBERNETES_SERVICE_HOST/PORT, $SERVICE_API_IP:443,
# AO_POD_SERVICE_API): the pods' one route leads there through the gateway, where a relay on this
# host answers; or at AO_POD_KUBE_API_HOST/PORT, the gateway's relay. Images get to the node in one of two ways: imported into
# containerd with tests/env/build-image.sh --import (never pulled), or pushed to the registry at
# AO_REGISTRY (tests/env/oci-image.py push; tests/env/zenml-image.sh --push) and pulled by the
# kubelet from AO_POD_REGISTRY/NAME:TAG, the same registry through its relay on the gateway.
# Needs root (bridge, mounts, cgroups) and what `tests/env/build.sh go` and `build.sh node` provide.
# Idempotent like up.sh: when the node is running and Ready this only prints its env file's path.
# The last line on stdout is the path of the node's env file (mode 0600, `export` lines), beside
# up.sh's. Stop the node with tests/env/node-down.sh; tests/env/down.sh stops it too.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CNI_BIN_DIR=/usr/lib/cni

PIDS="$NODE_DIR/pids"
NODE_ENV_FILE="$NODE_DIR/env"
NODE_PORTS_FILE="$NODE_DIR/ports"
CONTAINERD_DIR="$NODE_RUN/containerd"
KUBELET_DIR="$NODE_RUN/kubelet"

# Every daemon we start carries up.sh's marker and, through node_start, the node's: node-down.sh
# signals only processes with AO_TESTENV_NODE (containerd's shims inherit it, so it finds those
# too). Not exported here: this script and node-down.sh must not carry it themselves.
export AO_TESTENV_STATE="$STATE_DIR"
# node-down.sh, run from here, must not wait for the lock we hold.
export _AO_TESTENV_LOCKED=1

# Paths outside our state the kubelet, containerd and libcni create whatever they are told (the
# kubelet's device-plugin socket, its /var/log/containers links, libcni's result cache, the shims'
# sockets). Those missing before the node starts are recorded; node-down.sh removes them again.
HOST_PATHS=(/var/lib/kubelet /var/log/containers /var/lib/cni /run/containerd)

# What the kubelet insists the kernel be set to (pkg/kubelet/cm: setupKernelTunables). It would
# write these host-wide; see start_kubelet.
KUBELET_SYSCTLS=(vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1
  kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000)

node_start() { # NAME COMMAND...: lib.sh's start, with the node's marker
  local name=$1; shift
  start "$name" env AO_TESTENV_NODE="$NODE_DIR" "$@"
}

node_ctr() { ctr --address "$NODE_CONTAINERD_SOCK" --namespace k8s.io "$@"; }

# Ready, and schedulable: the apiserver taints every new Node not-ready until the node lifecycle
# controller sees it Ready.
node_ready() {
  kube_curl "/api/v1/nodes/$NODE_NAME" | python3 -c '
import json, sys
node = json.load(sys.stdin)
ready = any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))
tainted = any(t["key"] == "node.kubernetes.io/not-ready" for t in node["spec"].get("taints") or [])
sys.exit(not ready or tainted)'
}

# --- health of a node that is already recorded --------------------------------------------------

node_healthy() {
  [[ -f "$NODE_ENV_FILE" && -f "$NODE_PORTS_FILE" && -d "$PIDS" ]] || return 1
  # (absent: written by an older node-up.sh)
  grep -q "^export AO_KUBELET_DIR=" "$NODE_ENV_FILE" && grep -q "^export AO_POD_SERVICE_API=" "$NODE_ENV_FILE" ||
    return 1
  all_alive "$PIDS" || return 1
  # shellcheck source=/dev/null
  source "$NODE_PORTS_FILE"
  curl -fsS --max-time 2 "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz" >/dev/null 2>&1 &&
    registry_answers "127.0.0.1:$REGISTRY_PORT" &&
    node_ctr version >/dev/null 2>&1 &&
    node_ready >/dev/null 2>&1
}

# --- pieces of the node --------------------------------------------------------------------------

make_bridge() {
  # Created here rather than by the bridge plugin on the first pod: the relays bind its address
  # before any pod exists. The plugin runs with isGateway off: it would then also switch on
  # net.ipv4.ip_forward for the whole machine, and nothing here is routed (pods only talk to
  # addresses on their own link: each other and the gateway, which is this host).
  # One node per machine: the bridge and the subnet are fixed (the certificates name the gateway).
  if [[ -e "/sys/class/net/$POD_BRIDGE" ]]; then
    die "$POD_BRIDGE exists already, from the node of '$(cat "/sys/class/net/$POD_BRIDGE/ifalias")';" \
      "stop that one first (its node-down.sh)"
  fi
  if ip -o -4 addr show | awk '{print $4}' | grep -q "^${POD_SUBNET%.*/*}\."; then
    die "$POD_SUBNET is in use on this machine already (ip -4 addr); the node needs it for itself"
  fi
  ip link add "$POD_BRIDGE" type bridge
  # The alias names the state directory owning the bridge, for node-down.sh of another checkout.
  ip link set "$POD_BRIDGE" alias "$STATE_DIR"
  ip addr add "$POD_GATEWAY/${POD_SUBNET#*/}" dev "$POD_BRIDGE"
  # The apiserver's service IP, for the relay that stands in for kube-proxy (start_relays).
  ip addr add "$SERVICE_API_IP/32" dev "$POD_BRIDGE"
  ip link set "$POD_BRIDGE" up

  mkdir -p "$NODE_DIR/cni/conf"
  # One route, to the apiserver's service IP through the gateway, and no default route: pod traffic
  # cannot leave the machine, and there is no masquerading. (The loopback plugin is not listed:
  # containerd's CRI plugin sets up lo itself.)
  cat >"$NODE_DIR/cni/conf/10-$NODE_CNI_NETWORK.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "$NODE_CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$POD_BRIDGE",
      "isGateway": false,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": false,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$POD_SUBNET", "gateway": "$POD_GATEWAY" }]],
        "routes": [{ "dst": "$SERVICE_API_IP/32", "gw": "$POD_GATEWAY" }],
        "dataDir": "$NODE_RUN/cni/ipam"
      }
    }
  ]
}
EOF
}

# overlayfs works on most file systems, not on all (overlay on overlay, some FUSE setups): try it
# where containerd's snapshots will live, as containerd itself would, and fall back to native.
pick_snapshotter() {
  local dir="$CONTAINERD_DIR/root/overlay-check"
  mkdir -p "$dir/lower" "$dir/upper" "$dir/work" "$dir/merged"
  if mount -t overlay overlay -o "lowerdir=$dir/lower,upperdir=$dir/upper,workdir=$dir/work" \
    "$dir/merged" 2>/dev/null; then
    umount "$dir/merged"
    echo overlayfs
  else
    log "overlayfs does not work under $CONTAINERD_DIR; containerd uses the (slower) native snapshotter"
    echo native
  fi
  rm -rf "$dir"
}

# The kubelet's cgroupRoot: a cgroup of our own in every hierarchy, which node-down.sh empties and
# removes without looking at any other (on a machine with a real kubelet, /kubepods is that one's).
make_cgroup_root() {
  local mnt
  for mnt in $(findmnt -rn -t cgroup,cgroup2 -o TARGET); do
    mkdir -p "$mnt/$NODE_ID"
    # A new cpuset cgroup (v1) has no CPUs and memory nodes; processes cannot join it until it gets
    # its parent's.
    if [[ -f "$mnt/cpuset.cpus" && -f "$mnt/$NODE_ID/cpuset.cpus" ]]; then
      cat "$mnt/cpuset.cpus" >"$mnt/$NODE_ID/cpuset.cpus"
      cat "$mnt/cpuset.mems" >"$mnt/$NODE_ID/cpuset.mems"
    fi
  done
}

# The registry's API root answers 200 to anyone (no authentication: only this host and the node's
# pods reach it).
registry_answers() { # HOST:PORT
  curl -fsS --max-time 2 --cacert "$PKI/ca.crt" "https://$1/v2/" >/dev/null 2>&1
}

# containerd finds a registry's settings in $NODE_DIR/certs.d/HOST:PORT/hosts.toml (the CRI
# plugin's config_path): the node's registry by its address on the gateway, as pods name it, with
# the cluster CA that signed its certificate.
write_registry_hosts() {
  local host="$POD_GATEWAY:$REGISTRY_PORT"
  mkdir -p "$NODE_DIR/certs.d/$host"
  cat >"$NODE_DIR/certs.d/$host/hosts.toml" <<EOF
server = "https://$host"

[host."https://$host"]
  capabilities = ["pull", "resolve"]
  ca = "$PKI/ca.crt"
EOF
}

start_containerd() {
  local snapshotter=$1
  mkdir -p "$CONTAINERD_DIR/root" "$CONTAINERD_DIR/state"
  # Everything in our state directories: root, state, socket, runc's state, the opt plugin. The
  # CRI plugin uses cgroupfs (there is no systemd) and restricts the oom_score_adj it gives
  # containers to no lower than its own: root here lacks CAP_SYS_RESOURCE, and the kubelet asks
  # for negative values (the sandbox, Guaranteed pods), which the kernel would refuse.
  # AppArmor stays off so that no profile is loaded into the host's kernel, and the pods' network
  # namespaces are mounted in containerd's state directory instead of /run/netns.
  cat >"$NODE_DIR/containerd.toml" <<EOF
version = 2
root = "$CONTAINERD_DIR/root"
state = "$CONTAINERD_DIR/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$NODE_CONTAINERD_SOCK"

[plugins."io.containerd.internal.v1.opt"]
  path = "$CONTAINERD_DIR/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "$snapshotter"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$NODE_RUN/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$NODE_DIR/cni/conf"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$NODE_DIR/certs.d"
EOF
  node_start node-containerd containerd --config "$NODE_DIR/containerd.toml"
}

make_node_pki() {
  new_cert node-kubelet client-ca "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
  # The kubelet's serving certificate, from the cluster CA, which the apiserver verifies it with.
  new_cert node-kubelet-serving ca "/CN=$NODE_NAME" serverAuth "IP:$POD_GATEWAY,DNS:$NODE_NAME"
  new_cert node-kube-scheduler client-ca "/CN=system:kube-scheduler" clientAuth
  # The registry's, for the host (127.0.0.1, where images are pushed) and the node (the gateway).
  new_cert node-registry ca "/CN=ao-node-registry" serverAuth "IP:127.0.0.1,IP:$POD_GATEWAY"
  kubeconfig "$NODE_DIR/kubelet.kubeconfig" node-kubelet
  kubeconfig "$NODE_DIR/kube-scheduler.kubeconfig" node-kube-scheduler
}

# The distribution registry on 127.0.0.1 (its relay on the gateway is for the node), its storage in
# the node's directory, so node-down.sh removes every image pushed to it. No authentication, no
# storage health check, no tracing export, no upload purging (nothing lives long enough for it).
start_registry() {
  mkdir -p "$NODE_DIR/registry/data"
  cat >"$NODE_DIR/registry/config.yml" <<EOF
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $NODE_DIR/registry/data
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$REGISTRY_PORT
  secret: $(openssl rand -hex 16)
  tls:
    certificate: $PKI/node-registry.crt
    key: $PKI/node-registry.key
EOF
  node_start node-registry env OTEL_TRACES_EXPORTER=none "$BIN/registry" serve "$NODE_DIR/registry/config.yml"
}

start_relays() {
  # socat, one process per connection (fork), bound to the gateway address only.
  local relay name port
  for relay in "api:$API_PORT" "s3:$S3_PORT" "s3-tls:$S3_TLS_PORT" "moto:$MOTO_PORT" "zenml:$ZENML_PORT" \
    "registry:$REGISTRY_PORT"; do
    name=${relay%%:*} port=${relay#*:}
    node_start "node-relay-$name" socat "TCP-LISTEN:$port,bind=$POD_GATEWAY,reuseaddr,fork" "TCP:127.0.0.1:$port"
  done
  # What kube-proxy would do for the Service `kubernetes`: in-cluster clients that take the
  # apiserver from the kubelet's KUBERNETES_SERVICE_HOST/PORT (ZenML's orchestrator, for one)
  # reach it at $SERVICE_API_IP:443.
  node_start node-relay-service-api socat "TCP-LISTEN:443,bind=$SERVICE_API_IP,reuseaddr,fork" "TCP:127.0.0.1:$API_PORT"
}

wait_for_relays() {
  # Through the relays as a pod would connect; the apiserver's certificate must name the gateway.
  wait_for node-relay-api "the apiserver at $POD_GATEWAY:$API_PORT" \
    curl -fsS --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://$POD_GATEWAY:$API_PORT/readyz"
  wait_for node-relay-service-api "the apiserver at its service IP $SERVICE_API_IP:443" \
    curl -fsS --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://$SERVICE_API_IP:443/readyz"
  wait_for node-relay-s3 "MinIO at $POD_GATEWAY:$S3_PORT" \
    curl -fsS --max-time 2 "http://$POD_GATEWAY:$S3_PORT/minio/health/ready"
  wait_for node-relay-s3-tls "the HTTPS MinIO at $POD_GATEWAY:$S3_TLS_PORT" \
    curl -fsS --max-time 2 --cacert "$PKI/s3-ca.crt" "https://$POD_GATEWAY:$S3_TLS_PORT/minio/health/ready"
  wait_for node-relay-moto "moto at $POD_GATEWAY:$MOTO_PORT" \
    curl -fsS --max-time 2 "http://$POD_GATEWAY:$MOTO_PORT/moto-api/"
  wait_for node-relay-zenml "the ZenML server at $POD_GATEWAY:$ZENML_PORT" \
    curl -fsS --max-time 2 "http://$POD_GATEWAY:$ZENML_PORT/health"
  wait_for node-relay-registry "the registry at $POD_GATEWAY:$REGISTRY_PORT" \
    registry_answers "$POD_GATEWAY:$REGISTRY_PORT"
}

start_scheduler() {
  node_start node-kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig "$NODE_DIR/kube-scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" --cert-dir "$NODE_DIR/kube-scheduler" \
    --leader-elect=false \
    --profiling=false
}

start_kubelet() {
  mkdir -p "$KUBELET_DIR" "$NODE_RUN/pod-logs" "$NODE_DIR/sysctl"
  # Only what the pods and this file system need, and nothing that reaches other processes:
  # - cgroupfs with per-QoS cgroups (kubepods/...) under our own cgroup root (make_cgroup_root); no
  #   system or kubelet cgroups, so no other process is moved anywhere;
  # - no iptables chains (makeIPTablesUtilChains), no OOM score for itself (lowering it needs
  #   CAP_SYS_RESOURCE), cgroup v1 accepted (failCgroupV1: this machine has v1 with a v2 hybrid);
  # - eviction only when the disk or memory is really short (the defaults want 10-15% of the disk
  #   free), and no image garbage collection: imported images could not be pulled back;
  # - no DNS: no cluster DNS exists, and the host's resolvers are unreachable from pods anyway;
  # - x509 client certificates from up.sh's client CA (the apiserver's kubelet-client) and bearer
  #   tokens via TokenReview, authorized by SubjectAccessReview, as on a real node.
  cat >"$NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$NODE_CONTAINERD_SOCK
address: $POD_GATEWAY
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI/node-kubelet-serving.crt
tlsPrivateKeyFile: $PKI/node-kubelet-serving.key
rotateCertificates: false
serverTLSBootstrap: false
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $PKI/client-ca.crt
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
cgroupsPerQOS: true
cgroupRoot: /$NODE_ID
enforceNodeAllocatable: [pods]
failCgroupV1: false
failSwapOn: false
makeIPTablesUtilChains: false
oomScoreAdj: 0
protectKernelDefaults: false
clusterDomain: cluster.local
resolvConf: ""
hairpinMode: none
podLogsDir: $NODE_RUN/pod-logs
volumePluginDir: $NODE_RUN/volume-plugins
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 512Mi
  nodefs.inodesFree: 1%
  imagefs.available: 512Mi
  imagefs.inodesFree: 1%
maxPods: 110
registerNode: true
shutdownGracePeriod: 0s
EOF

  # The kubelet writes KUBELET_SYSCTLS into /proc/sys when they differ, host-wide (panic_on_oops=1
  # would turn any kernel oops into a reboot of this machine). It runs in a mount namespace of its
  # own in which each differing file is covered by one holding the value it wants, so it finds
  # nothing to change. Its root directory is made a shared mount first: the volumes it mounts there
  # (service account tokens, secrets) propagate to the host's namespace, where containerd takes them.
  mount --bind "$KUBELET_DIR" "$KUBELET_DIR"
  mount --make-rshared "$KUBELET_DIR"
  local entry key want binds=()
  for entry in "${KUBELET_SYSCTLS[@]}"; do
    key=${entry%%=*} want=${entry#*=}
    [[ "$(<"/proc/sys/$key")" == "$want" ]] && continue
    echo "$want" >"$NODE_DIR/sysctl/${key//\//.}"
    binds+=("$NODE_DIR/sysctl/${key//\//.}" "/proc/sys/$key")
  done
  # (`unshare` and `bash` exec, so the pid file holds the kubelet's pid.)
  node_start node-kubelet unshare --mount --propagation unchanged -- bash -c '
    while [[ $1 != -- ]]; do mount --bind "$1" "$2" || exit 1; shift 2; done
    shift; exec "$@"' kubelet-sysctl-mask "${binds[@]}" -- \
    "$BIN/kubelet" \
    --config "$NODE_DIR/kubelet.yaml" \
    --kubeconfig "$NODE_DIR/kubelet.kubeconfig" \
    --root-dir "$KUBELET_DIR" --cert-dir "$KUBELET_DIR/pki" \
    --hostname-override "$NODE_NAME" --node-ip "$POD_GATEWAY"
}

write_env_file() {
  write_private_file "$NODE_ENV_FILE" <<EOF
# The node started by tests/env/node-up.sh; stop it with tests/env/node-down.sh. Pods reach the
# control plane and S3 at the AO_POD_* addresses; the rest is in up.sh's env file ($STATE_DIR/env).
export AO_NODE_NAME='$NODE_NAME'
export AO_POD_GATEWAY='$POD_GATEWAY'
export AO_POD_SUBNET='$POD_SUBNET'
export AO_POD_KUBE_API_HOST='$POD_GATEWAY'
export AO_POD_KUBE_API_PORT='$API_PORT'
export AO_POD_SERVICE_API='$SERVICE_API_IP:443'
export AO_POD_S3_ENDPOINT='http://$POD_GATEWAY:$S3_PORT'
export AO_POD_S3_TLS_ENDPOINT='https://$POD_GATEWAY:$S3_TLS_PORT'
export AO_POD_MOTO_ENDPOINT='http://$POD_GATEWAY:$MOTO_PORT'
export AO_POD_ZENML_URL='http://$POD_GATEWAY:$ZENML_PORT'
export AO_REGISTRY='127.0.0.1:$REGISTRY_PORT'
export AO_POD_REGISTRY='$POD_GATEWAY:$REGISTRY_PORT'
export AO_REGISTRY_CA_FILE='$PKI/ca.crt'
export AO_CONTAINERD_ADDRESS='$NODE_CONTAINERD_SOCK'
export AO_CONTAINERD_NAMESPACE='k8s.io'
export AO_CONTAINERD_SNAPSHOTTER='$SNAPSHOTTER'
export AO_PAUSE_IMAGE='$PAUSE_IMAGE'
export AO_KUBELET_DIR='$KUBELET_DIR'
EOF
}

# --- startup --------------------------------------------------------------------------------------

start_node() {
  umask 077   # keys, kubeconfigs and the env file are for our user only
  mkdir -p "$NODE_DIR" "$NODE_RUN" "$PIDS" "$LOGS"
  local path
  for path in "${HOST_PATHS[@]}"; do
    [[ -e "$path" ]] || echo "$path"
  done >"$NODE_DIR/created-host-paths"

  make_bridge
  read -r KUBELET_PORT < <(free_ports 1 "$POD_GATEWAY")
  read -r KUBELET_HEALTHZ_PORT SCHEDULER_PORT REGISTRY_PORT < <(free_ports 3)
  declare -p KUBELET_PORT KUBELET_HEALTHZ_PORT SCHEDULER_PORT REGISTRY_PORT | sed 's/^declare -- //' >"$NODE_PORTS_FILE"

  # The daemons' own files (image layers, pod directories, logs) get the usual modes: a container
  # running as 65532 must be able to read what the kubelet and containerd set up for it.
  umask 022
  SNAPSHOTTER=$(pick_snapshotter)
  write_registry_hosts
  start_containerd "$SNAPSHOTTER"
  (umask 077; make_node_pki)
  start_registry
  start_relays
  start_scheduler

  # The sandbox image: built and imported before the kubelet asks for the first sandbox, since
  # containerd would try to pull it otherwise.
  wait_for node-containerd "its socket answering" node_ctr version
  "$ENV_DIR/build-image.sh" --pause --import --containerd "$NODE_CONTAINERD_SOCK" \
    --snapshotter "$SNAPSHOTTER" --output "$NODE_DIR/pause.tar" "$PAUSE_IMAGE" >/dev/null

  make_cgroup_root
  start_kubelet
  wait_for node-registry "its API answering" registry_answers "127.0.0.1:$REGISTRY_PORT"
  wait_for_relays
  wait_for node-kube-scheduler "ok /healthz" \
    curl -fsSk --max-time 2 "https://127.0.0.1:$SCHEDULER_PORT/healthz"
  wait_for node-kubelet "ok /healthz" curl -fsS --max-time 2 "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz"
  wait_for node-kubelet "Node $NODE_NAME Ready and untainted" node_ready
  write_env_file
}

# --- main -----------------------------------------------------------------------------------------

((EUID == 0)) || die "node-up.sh needs root: it creates a bridge, mounts and cgroups"
for b in kubelet kube-scheduler registry; do
  [[ -x "$BIN/$b" ]] || die "$BIN/$b is missing: run tests/env/build.sh go first"
done
for b in containerd containerd-shim-runc-v2 ctr runc socat catatonit ip unshare findmnt \
  "$CNI_BIN_DIR/bridge" "$CNI_BIN_DIR/host-local" "$CNI_BIN_DIR/loopback"; do
  command -v "$b" >/dev/null || die "$b is missing: run tests/env/build.sh node first"
done
# Named after the catatonit it holds, so a changed binary gets a new tag instead of a stale image.
PAUSE_IMAGE="localhost/ao-testenv-pause:$(sha256sum "$(command -v catatonit)" | cut -c1-12)"

# The control plane first (up.sh is idempotent and takes the lock itself), then the lock for us.
"$ENV_DIR/up.sh" >/dev/null
mkdir -p "$(dirname "$STATE_DIR")"
exec 9>"$STATE_DIR.lock"
flock -w 300 9 || die "timed out waiting for another up.sh/down.sh/node-up.sh (lock $STATE_DIR.lock)"
[[ -f "$STATE_DIR/env" && -f "$STATE_DIR/ports" ]] ||
  die "the environment of up.sh went away meanwhile (a down.sh?); run node-up.sh again"
# shellcheck source=/dev/null
source "$STATE_DIR/ports"
# An environment started by an older up.sh lacks what the node needs (Node authorization, the
# gateway in the apiserver's certificate); it would fail later and less clearly.
openssl x509 -in "$PKI/apiserver.crt" -noout -ext subjectAltName 2>/dev/null | grep -qE "IP Address:${POD_GATEWAY//./\\.}(,|$)" ||
  die "the running environment predates node support: restart it (tests/env/down.sh, then up.sh)"

if node_healthy; then
  log "node $NODE_NAME already running"
  echo "$NODE_ENV_FILE"
  exit 0
fi

started=$(now_us)
for attempt in 1 2; do
  # Clear whatever an earlier, dead or half-started node left behind.
  "$ENV_DIR/node-down.sh"
  log "starting node $NODE_NAME in $NODE_DIR"
  # A subshell, so a failure anywhere in it lands here (see up.sh).
  set +e
  (set -e; start_node)
  rc=$?
  set -e
  if ((rc == 0)); then
    log "node $NODE_NAME Ready in $(elapsed "$started")s"
    echo "$NODE_ENV_FILE"
    exit 0
  fi
  # A port picked as free may have been taken before our daemon bound it: start over once.
  if ((attempt == 1)) && grep -qs 'address already in use' "$LOGS"/node-*.log; then
    log "a port was taken meanwhile; retrying with new ports"
    continue
  fi
  log "node startup failed; its logs are in $LOGS/node-*.log (after down.sh: $(dirname "$STATE_DIR")/testenv-logs)"
  "$ENV_DIR/node-down.sh"
  exit 1
done
