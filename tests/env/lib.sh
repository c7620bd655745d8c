# Shared paths for the local test environment. Sourced by the scripts beside it.
ENV_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$ENV_DIR/../.." && pwd)"
# Built binaries and the Python virtual environment live outside the checkout, keyed by the pinned
# versions, so a fresh clone on the same machine reuses them.
CACHE_DIR="${ARTIFACT_OPERATOR_CACHE:-$HOME/.cache/artifact-operator}"
# A running environment writes its state (certificates, data, logs, env file) here.
STATE_DIR="${ARTIFACT_OPERATOR_ENV:-$REPO_ROOT/target/testenv}"
# The built binaries; the certificates (up.sh's CAs, and the node's as node-*); the logs of every
# daemon, the control plane's and the node's together, which down.sh keeps.
BIN="$CACHE_DIR/bin"
PKI="$STATE_DIR/pki"
LOGS="$STATE_DIR/logs"
# Seconds a daemon has after SIGTERM before it is killed (down.sh, node-down.sh).
GRACE_SECONDS="${AO_TESTENV_STOP_GRACE:-5}"

# The node (node-up.sh) puts pods on a private bridge with this subnet; the host is its gateway, and
# the control plane's and S3's certificates carry the gateway's IP because pods reach them there.
POD_BRIDGE=ao-cni0
POD_SUBNET=10.244.77.0/24
POD_GATEWAY=10.244.77.1
# The apiserver's service IP (the first of up.sh's --service-cluster-ip-range, named by its
# certificate): the kubelet gives every pod KUBERNETES_SERVICE_HOST=$SERVICE_API_IP and port 443.
# With no kube-proxy, the node routes pods to it on the gateway, where a relay on this host answers.
SERVICE_API_IP=10.96.0.1

# The node (node-up.sh), one per machine: NODE_NAME, its pods on the CNI network NODE_CNI_NETWORK.
# Its own state (configuration, pid files, env file) is in NODE_DIR. What holds unix sockets
# (containerd's state, the kubelet's root directory) goes to NODE_RUN: NODE_DIR as well, unless that
# would make a socket's path longer than the 107 bytes Linux allows; then a short directory in /run.
# NODE_ID, derived from the state directory, names that directory and the node's cgroup (in every
# hierarchy), under which the kubelet puts its pods.
NODE_NAME=ao-node
NODE_CNI_NETWORK=ao-testenv
NODE_DIR="$STATE_DIR/node"
NODE_ID="ao-node-$(printf '%s' "$STATE_DIR" | sha256sum | cut -c1-12)"
NODE_RUN="$NODE_DIR"
((${#NODE_RUN} <= 60)) || NODE_RUN="/run/$NODE_ID"
NODE_CONTAINERD_SOCK="$NODE_RUN/containerd/containerd.sock"

log() { printf '[testenv] %s\n' "$*" >&2; }

# now_us: microseconds since the epoch. elapsed START_US: the seconds since then, as "12.34".
now_us() { echo "${EPOCHREALTIME//[!0-9]/}"; }
elapsed() {
  local us=$(($(now_us) - $1))
  printf '%d.%02d' $((us / 1000000)) $((us % 1000000 / 10000))
}

# The cache key of a Go tool module: its go.mod and go.sum, plus the Go toolchain and the linker
# flags that build it, and for a program of our own (a main.go beside go.mod) its sources too.
module_key() { # module-dir [ldflags]
  local sources=()
  [[ -f "$ENV_DIR/$1/main.go" ]] && sources=("$ENV_DIR/$1"/*.go)
  cat "$ENV_DIR/$1/go.mod" "$ENV_DIR/$1/go.sum" "${sources[@]}" <(go env GOVERSION) <(echo "${2:-}") |
    sha256sum | cut -c1-16
}

# --- helpers of the scripts that start daemons (up.sh, node-up.sh) -------------------------------
# They use LOGS and PKI above, the caller's PIDS (pid file directory) and
# API_PORT, and the marker variable AO_TESTENV_STATE the caller exports before it starts anything.

# Seconds each component gets to become ready; generous because the machine may be busy compiling.
READY_TIMEOUT="${AO_TESTENV_TIMEOUT:-90}"

die() { log "ERROR: $*"; exit 1; }

# What a log shows goes through this; up.sh replaces it with one that hides its secrets.
redact() { cat; }

# Alive and not a zombie (a child that died before we reaped it still answers kill -0).
alive() {
  local pid=$1 state
  kill -0 "$pid" 2>/dev/null || return 1
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ "$state" != Z ]]
}

# all_alive DIR: every daemon with a pid file in DIR is alive.
all_alive() {
  local f
  for f in "$1"/*.pid; do
    [[ -f "$f" ]] && alive "$(<"$f")" || return 1
  done
}

# start NAME COMMAND...: run a daemon in its own session (so a Ctrl-C or the caller's process group
# teardown does not reach it), detached from our stdio, logging to $LOGS/NAME.log.
start() {
  local name=$1; shift
  # 9>&-: the daemon must not inherit the lock of up.sh (fd 9), or it would hold it forever.
  setsid "$@" </dev/null >"$LOGS/$name.log" 2>&1 9>&- &
  echo $! >"$PIDS/$name.pid"
}

fail_with_log() { # NAME MESSAGE
  log "ERROR: $2; last lines of $LOGS/$1.log:"
  tail -n 40 "$LOGS/$1.log" 2>/dev/null | redact >&2 || true
  exit 1
}

# wait_for NAME DESCRIPTION COMMAND...: poll COMMAND until it succeeds, while NAME's process lives.
wait_for() {
  local name=$1 what=$2; shift 2
  local pid deadline=$((SECONDS + READY_TIMEOUT))
  pid=$(<"$PIDS/$name.pid")
  until "$@" >/dev/null 2>&1; do
    alive "$pid" || fail_with_log "$name" "$name exited before $what"
    ((SECONDS < deadline)) || fail_with_log "$name" "$name: no $what after ${READY_TIMEOUT}s"
    sleep 0.2
  done
}

# free_ports N [ADDRESS]: N free TCP ports on ADDRESS (loopback by default). All of them are bound
# at once so they are distinct, then released for our daemons. Another process could take one in
# between; startup then fails (up.sh retries once).
free_ports() {
  python3 - "$1" "${2:-127.0.0.1}" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind((sys.argv[2], 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# write_private_file FILE: writes stdin to FILE, readable by our user only, and atomically (to
# FILE.tmp, then renamed), so that whoever finds FILE finds it whole: the env files of up.sh and
# node-up.sh, whose presence means a complete environment or node.
write_private_file() {
  (
    umask 077
    cat >"$1.tmp"
    mv "$1.tmp" "$1"
  )
}

kube_curl() { # PATH [curl args...]: the apiserver as the admin user
  local path=$1; shift
  curl -fsS --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "$@" "https://127.0.0.1:$API_PORT$path"
}

# new_ca NAME CN: a self-signed CA (EC P-256). rustls/webpki insist on the CA extensions.
new_ca() {
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$PKI/$1.key" -out "$PKI/$1.crt" -days 3650 -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" 2>/dev/null
}

# new_cert NAME CA SUBJECT serverAuth|clientAuth [SANS]: a leaf certificate signed by CA.
new_cert() {
  local name=$1 ca=$2 subject=$3 usage=$4 sans=${5:-}
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$PKI/$name.key" -out "$PKI/$name.csr" -subj "$subject" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature"
    echo "extendedKeyUsage=$usage"
    echo "subjectKeyIdentifier=hash"
    echo "authorityKeyIdentifier=keyid"
    [[ -z "$sans" ]] || echo "subjectAltName=$sans"
  } >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 3650 -extfile "$PKI/$name.ext" \
    -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

# kubeconfig FILE USER: a kubeconfig for the apiserver with USER's client certificate embedded.
kubeconfig() {
  local file=$1 user=$2
  cat >"$file" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$user.crt")
    client-key-data: $(base64 -w0 "$PKI/$user.key")
contexts:
- name: testenv
  context:
    cluster: testenv
    user: $user
current-context: testenv
KUBECONFIG
}
