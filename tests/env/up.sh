#!/usr/bin/env bash
# Starts the real local test environment the integration tests run against, all on 127.0.0.1:
#   etcd + kube-apiserver + kube-controller-manager (RBAC, TokenRequest, a fake EKS-like OIDC issuer),
#   MinIO over plain HTTP and a second MinIO over HTTPS (own CA), the Versity S3 Gateway (versitygw,
#   the second S3 implementation) the same two ways, moto in server mode (IAM, STS), and a ZenML
#   server (uvicorn, SQLite) with two service accounts and their API keys.
# The binaries come from tests/env/build.sh (run it first). Idempotent: when the environment recorded
# in $STATE_DIR is running and healthy this only prints the env file's path. The last line on stdout
# is always the path of the env file (mode 0600, `export` lines) that tells tests where everything is.
# Stop it with tests/env/down.sh. tests/env/node-up.sh adds a node (kubelet, containerd, scheduler)
# for the tests that run pods.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VENV="$CACHE_DIR/venv"
OIDC_ISSUER="https://oidc.artifact-operator.test/cluster"
S3_REGION="us-east-1"

PIDS="$STATE_DIR/pids"
ENV_FILE="$STATE_DIR/env"
PORTS_FILE="$STATE_DIR/ports"   # the ports of a running environment, for the health check

# Every process we start carries this marker in its environment; down.sh signals only processes
# that have it, so a stale pid file never makes us kill a stranger that reused the pid.
export AO_TESTENV_STATE="$STATE_DIR"

# --- helpers (die, start, wait_for, new_cert, kubeconfig and the others are in lib.sh) ----------

# Secrets never reach stdout/stderr: everything we show from a log goes through this (it replaces
# lib.sh's pass-through redact). The delimiter "|" is in neither alphabet of our secrets: hex, and
# the base64 of ZenML's API keys, whose alphabet has "/" (and "+", a plain character in sed's basic
# regular expressions).
redact() {
  local args=() s
  for s in "${ROOT_SECRET_KEY:-}" "${USER_SECRET_KEY:-}" "${VGW_SECRET_KEY:-}" \
    "${ZENML_ADMIN_PASSWORD:-}" "${ZENML_JWT_SECRET:-}" "${ZENML_API_KEY:-}" "${ZENML_OTHER_API_KEY:-}"; do
    [[ -n "$s" ]] && args+=(-e "s|$s|<redacted>|g")
  done
  if ((${#args[@]})); then sed "${args[@]}"; else cat; fi
}

# --- health of an environment that is already recorded -----------------------------------------

healthy() {
  [[ -f "$ENV_FILE" && -f "$PORTS_FILE" && -d "$PIDS" ]] || return 1
  all_alive "$PIDS" || return 1
  # shellcheck source=/dev/null
  source "$PORTS_FILE"
  curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" >/dev/null 2>&1 &&
    kube_curl /readyz >/dev/null 2>&1 &&
    curl -fsSk --max-time 2 "https://127.0.0.1:$KCM_PORT/healthz" >/dev/null 2>&1 &&
    curl -fsS --max-time 2 "http://127.0.0.1:$S3_PORT/minio/health/ready" >/dev/null 2>&1 &&
    curl -fsS --max-time 2 --cacert "$PKI/s3-ca.crt" \
      "https://127.0.0.1:$S3_TLS_PORT/minio/health/ready" >/dev/null 2>&1 &&
    curl -fsS --max-time 2 "http://127.0.0.1:$MOTO_PORT/moto-api/" >/dev/null 2>&1 &&
    [[ -n "${VGW_PORT:-}" && -n "${VGW_TLS_PORT:-}" ]] && # (absent: recorded by an older up.sh)
    vgw_answers "http://127.0.0.1:$VGW_PORT" && vgw_answers "https://127.0.0.1:$VGW_TLS_PORT" &&
    [[ -n "${ZENML_PORT:-}" ]] && # (absent: recorded by an older up.sh)
    curl -fsS --max-time 2 "http://127.0.0.1:$ZENML_PORT/health" >/dev/null 2>&1
}

# versitygw has no health endpoint: any S3 answer (an anonymous request is refused) means it serves.
vgw_answers() {
  local code
  code=$(curl -sS --max-time 2 --cacert "$PKI/s3-ca.crt" -o /dev/null -w '%{http_code}' "$1/" 2>/dev/null) &&
    [[ "$code" =~ ^[2-5][0-9][0-9]$ ]]
}

# --- certificates --------------------------------------------------------------------------------

make_pki() {
  new_ca ca "artifact-operator test cluster CA"
  # $POD_GATEWAY: pods on node-up.sh's node reach the apiserver (and the HTTPS MinIO) through relays
  # on the pod bridge's gateway address, with TLS end to end.
  new_cert apiserver ca "/CN=kube-apiserver" serverAuth \
    "IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:$SERVICE_API_IP,IP:$POD_GATEWAY"
  new_ca client-ca "artifact-operator test client CA"
  new_cert admin client-ca "/O=system:masters/CN=admin" clientAuth
  new_cert kube-controller-manager client-ca "/CN=system:kube-controller-manager" clientAuth
  # The apiserver's identity towards kubelets (logs, exec, port-forward), as on a kubeadm cluster.
  new_cert kubelet-client client-ca "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  # The service-account token signing key pair (RSA, so tokens are RS256 like EKS's).
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key" 2>/dev/null
  openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  # The HTTPS MinIO's serving certificate, from a CA of its own so tests must pass it explicitly.
  new_ca s3-ca "artifact-operator test S3 CA"
  new_cert s3 s3-ca "/CN=minio" serverAuth "IP:127.0.0.1,DNS:localhost,IP:$POD_GATEWAY"
}

# --- startup --------------------------------------------------------------------------------------

start_all() {
  umask 077   # keys, kubeconfigs and the env file are for our user only
  rm -rf "$STATE_DIR"
  mkdir -p "$PKI" "$LOGS" "$PIDS"

  read -r ETCD_PORT ETCD_PEER_PORT API_PORT KCM_PORT S3_PORT S3_CONSOLE_PORT S3_TLS_PORT \
    S3_TLS_CONSOLE_PORT MOTO_PORT VGW_PORT VGW_TLS_PORT ZENML_PORT < <(free_ports 12)
  declare -p ETCD_PORT API_PORT KCM_PORT S3_PORT S3_TLS_PORT MOTO_PORT VGW_PORT VGW_TLS_PORT ZENML_PORT |
    sed 's/^declare -- //' >"$PORTS_FILE"

  # Random credentials, hex so they are safe in URLs, sed and MinIO's key alphabet.
  ROOT_ACCESS_KEY="aoroot$(openssl rand -hex 6)"
  ROOT_SECRET_KEY=$(openssl rand -hex 20)
  USER_ACCESS_KEY="aolimited$(openssl rand -hex 6)"
  USER_SECRET_KEY=$(openssl rand -hex 20)
  VGW_ACCESS_KEY="aovgw$(openssl rand -hex 6)"
  VGW_SECRET_KEY=$(openssl rand -hex 20)
  ZENML_ADMIN_PASSWORD=$(openssl rand -hex 20)
  ZENML_JWT_SECRET=$(openssl rand -hex 32)

  # The ZenML server goes first: it needs none of the rest, and its imports and database setup
  # (5-10 s) take longest of all, so they overlap with everything below. Its SQLite database,
  # configuration and local stores are in a directory of its own ($STATE_DIR is absolute, so the
  # URL has the four slashes of an absolute path). Auto-activation creates the default user, admin
  # with our password; the JWT key is ours too, and the secrets go through the environment.
  local zenml_dir="$STATE_DIR/zenml"
  mkdir -p "$zenml_dir"
  start zenml env ZENML_STORE_URL="sqlite:///$zenml_dir/zenml.db" \
    ZENML_CONFIG_PATH="$zenml_dir/config" ZENML_LOCAL_STORES_PATH="$zenml_dir/stores" \
    ZENML_ANALYTICS_OPT_IN=false ZENML_LOGGING_COLORS_DISABLED=true \
    ZENML_SERVER_AUTO_ACTIVATE=true ZENML_DEFAULT_USER_NAME=admin \
    ZENML_DEFAULT_USER_PASSWORD="$ZENML_ADMIN_PASSWORD" ZENML_SERVER_JWT_SECRET_KEY="$ZENML_JWT_SECRET" \
    "$VENV/bin/python" -m uvicorn zenml.zen_server.zen_server_api:app --host 127.0.0.1 --port "$ZENML_PORT"

  make_pki

  # etcd: a fresh single-member cluster. No fsync: the data is thrown away anyway.
  start etcd "$BIN/etcd" --name testenv --data-dir "$STATE_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "testenv=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --log-level warn

  # The S3 side starts meanwhile: two MinIOs (the credentials go through the environment, not argv)
  # and moto. MINIO_CI_CD relaxes checks meant for production disks.
  local minio_env=(env MINIO_ROOT_USER="$ROOT_ACCESS_KEY" MINIO_ROOT_PASSWORD="$ROOT_SECRET_KEY"
    MINIO_REGION="$S3_REGION" MINIO_BROWSER=off MINIO_UPDATE=off MINIO_CI_CD=1)
  mkdir -p "$STATE_DIR/minio" "$STATE_DIR/minio-tls/data" "$STATE_DIR/minio-tls/certs/CAs"
  # (An empty --certs-dir of its own: the default, ~/.minio/certs, could turn this one into HTTPS.)
  start minio "${minio_env[@]}" "$BIN/minio" server --quiet --anonymous \
    --address "127.0.0.1:$S3_PORT" --console-address "127.0.0.1:$S3_CONSOLE_PORT" \
    --certs-dir "$STATE_DIR/minio-certs-unused" "$STATE_DIR/minio"
  # MinIO serves HTTPS when its certs dir holds public.crt and private.key.
  cp "$PKI/s3.crt" "$STATE_DIR/minio-tls/certs/public.crt"
  cp "$PKI/s3.key" "$STATE_DIR/minio-tls/certs/private.key"
  cp "$PKI/s3-ca.crt" "$STATE_DIR/minio-tls/certs/CAs/s3-ca.crt"
  start minio-tls "${minio_env[@]}" "$BIN/minio" server --quiet --anonymous \
    --address "127.0.0.1:$S3_TLS_PORT" --console-address "127.0.0.1:$S3_TLS_CONSOLE_PORT" \
    --certs-dir "$STATE_DIR/minio-tls/certs" "$STATE_DIR/minio-tls/data"
  start moto "$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT"
  # versitygw on plain directories (its posix backend keeps metadata in extended attributes),
  # versioning enabled, over HTTP and, with the same certificate as the HTTPS MinIO, over HTTPS.
  # Its root account's keys go through the environment.
  local vgw_env=(env ROOT_ACCESS_KEY="$VGW_ACCESS_KEY" ROOT_SECRET_KEY="$VGW_SECRET_KEY" VGW_REGION="$S3_REGION")
  local vgw
  for vgw in versitygw versitygw-tls; do
    mkdir -p "$STATE_DIR/$vgw/data" "$STATE_DIR/$vgw/versions"
  done
  start versitygw "${vgw_env[@]}" "$BIN/versitygw" --port "127.0.0.1:$VGW_PORT" --quiet \
    posix --versioning-dir "$STATE_DIR/versitygw/versions" "$STATE_DIR/versitygw/data"
  start versitygw-tls "${vgw_env[@]}" "$BIN/versitygw" --port "127.0.0.1:$VGW_TLS_PORT" --quiet \
    --cert "$PKI/s3.crt" --key "$PKI/s3.key" \
    posix --versioning-dir "$STATE_DIR/versitygw-tls/versions" "$STATE_DIR/versitygw-tls/data"

  wait_for etcd "healthy etcd" curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_PORT/health"

  start kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --secure-port "$API_PORT" --advertise-address 127.0.0.1 \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --cert-dir "$STATE_DIR/kube-apiserver" \
    --client-ca-file "$PKI/client-ca.crt" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --kubelet-client-certificate "$PKI/kubelet-client.crt" --kubelet-client-key "$PKI/kubelet-client.key" \
    --kubelet-certificate-authority "$PKI/ca.crt" --kubelet-preferred-address-types InternalIP \
    --service-account-issuer "$OIDC_ISSUER" \
    --service-account-key-file "$PKI/sa.pub" \
    --service-account-signing-key-file "$PKI/sa.key" \
    --api-audiences "$OIDC_ISSUER,sts.amazonaws.com" \
    --service-cluster-ip-range 10.96.0.0/24 \
    --allow-privileged=true \
    --endpoint-reconciler-type none \
    --feature-gates WatchList=true \
    --profiling=false
  # (WatchList=true: streaming lists, on by default from Kubernetes 1.34 and off in 1.33 alone; the
  # operator's watches stream their first lists where it is on, and fall back to pages where the
  # apiserver refuses them, which src/controller/caches.rs's tests cover.)
  # (--endpoint-reconciler-type none: the default reconciler would try to publish 127.0.0.1 as the
  # endpoint of the "kubernetes" Service, which validation rejects as loopback, and log it forever.)
  # Node,RBAC and NodeRestriction: a kubelet (node-up.sh) gets exactly a real node's permissions.
  # The kubelet's serving certificate comes from the cluster CA, so the apiserver verifies it.
  wait_for kube-apiserver "ok /readyz" kube_curl /readyz

  kubeconfig "$STATE_DIR/kubeconfig" admin
  kubeconfig "$STATE_DIR/kube-controller-manager.kubeconfig" kube-controller-manager
  # With --use-service-account-credentials each controller runs as its own kube-system service
  # account with the bootstrap RBAC role made for it, as on a kubeadm cluster; its own identity
  # (system:kube-controller-manager) may not delete a namespace's contents.
  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$STATE_DIR/kube-controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --cert-dir "$STATE_DIR/kube-controller-manager" \
    --leader-elect=false \
    --controllers "$KCM_CONTROLLERS" \
    --use-service-account-credentials=true \
    --service-account-private-key-file "$PKI/sa.key" \
    --root-ca-file "$PKI/ca.crt" \
    --profiling=false

  wait_for minio "ready MinIO" curl -fsS --max-time 2 "http://127.0.0.1:$S3_PORT/minio/health/ready"
  wait_for minio-tls "ready HTTPS MinIO" curl -fsS --max-time 2 --cacert "$PKI/s3-ca.crt" \
    "https://127.0.0.1:$S3_TLS_PORT/minio/health/ready"
  # The limited user, through MinIO's admin API, on both instances. Secrets go by environment.
  local endpoint
  for endpoint in "http://127.0.0.1:$S3_PORT" "https://127.0.0.1:$S3_TLS_PORT"; do
    AO_S3_ADMIN_ENDPOINT="$endpoint" AO_S3_CA_FILE="$PKI/s3-ca.crt" \
      AO_S3_ROOT_ACCESS_KEY="$ROOT_ACCESS_KEY" AO_S3_ROOT_SECRET_KEY="$ROOT_SECRET_KEY" \
      AO_S3_USER_ACCESS_KEY="$USER_ACCESS_KEY" AO_S3_USER_SECRET_KEY="$USER_SECRET_KEY" \
      "$VENV/bin/python" "$ENV_DIR/minio-limited-user.py" >>"$LOGS/minio-admin.log" 2>&1 ||
      { log "ERROR: creating the limited MinIO user at $endpoint failed:"; tail -n 20 "$LOGS/minio-admin.log" | redact >&2; exit 1; }
  done

  wait_for moto "moto answering" curl -fsS --max-time 2 "http://127.0.0.1:$MOTO_PORT/moto-api/"
  wait_for versitygw "versitygw answering" vgw_answers "http://127.0.0.1:$VGW_PORT"
  wait_for versitygw-tls "HTTPS versitygw answering" vgw_answers "https://127.0.0.1:$VGW_TLS_PORT"
  wait_for kube-controller-manager "ok /healthz" \
    curl -fsSk --max-time 2 "https://127.0.0.1:$KCM_PORT/healthz"
  # The controllers really work once the serviceaccount controller has filled in "default".
  wait_for kube-controller-manager "ServiceAccount default/default" \
    kube_curl /api/v1/namespaces/default/serviceaccounts/default

  wait_for zenml "healthy ZenML server" curl -fsS --max-time 2 "http://127.0.0.1:$ZENML_PORT/health"
  # The operator's service account and another team's, each with an API key, through the REST API
  # as admin. Secrets go by environment, the keys come back in files.
  AO_ZENML_URL="http://127.0.0.1:$ZENML_PORT" AO_ZENML_ADMIN_PASSWORD="$ZENML_ADMIN_PASSWORD" \
    AO_ZENML_API_KEY_FILE="$zenml_dir/artifact-operator.key" \
    AO_ZENML_OTHER_API_KEY_FILE="$zenml_dir/other-team.key" \
    "$VENV/bin/python" "$ENV_DIR/zenml-service-account.py" >>"$LOGS/zenml-admin.log" 2>&1 ||
    { log "ERROR: creating the ZenML service accounts failed:"; tail -n 20 "$LOGS/zenml-admin.log" | redact >&2; exit 1; }
  ZENML_API_KEY=$(<"$zenml_dir/artifact-operator.key")
  ZENML_OTHER_API_KEY=$(<"$zenml_dir/other-team.key")

  # The env file is written last and atomically: its presence means a complete environment.
  write_private_file "$ENV_FILE" <<EOF
# The local test environment started by tests/env/up.sh; stop it with tests/env/down.sh.
export KUBECONFIG='$STATE_DIR/kubeconfig'
export AO_KUBE_API='https://127.0.0.1:$API_PORT'
export AO_OIDC_ISSUER='$OIDC_ISSUER'
export AO_S3_ENDPOINT='http://127.0.0.1:$S3_PORT'
export AO_S3_TLS_ENDPOINT='https://127.0.0.1:$S3_TLS_PORT'
export AO_S3_CA_FILE='$PKI/s3-ca.crt'
export AO_S3_REGION='$S3_REGION'
export AO_S3_ROOT_ACCESS_KEY='$ROOT_ACCESS_KEY'
export AO_S3_ROOT_SECRET_KEY='$ROOT_SECRET_KEY'
export AO_S3_USER_ACCESS_KEY='$USER_ACCESS_KEY'
export AO_S3_USER_SECRET_KEY='$USER_SECRET_KEY'
export AO_MOTO_ENDPOINT='http://127.0.0.1:$MOTO_PORT'
export AO_VGW_ENDPOINT='http://127.0.0.1:$VGW_PORT'
export AO_VGW_TLS_ENDPOINT='https://127.0.0.1:$VGW_TLS_PORT'
export AO_VGW_ACCESS_KEY='$VGW_ACCESS_KEY'
export AO_VGW_SECRET_KEY='$VGW_SECRET_KEY'
export AO_ZENML_URL='http://127.0.0.1:$ZENML_PORT'
export AO_ZENML_API_KEY='$ZENML_API_KEY'
export AO_ZENML_OTHER_API_KEY='$ZENML_OTHER_API_KEY'
export AO_ZENML_ADMIN_PASSWORD='$ZENML_ADMIN_PASSWORD'
export AO_VENV='$VENV'
export AO_CACHE_DIR='$CACHE_DIR'
EOF
}

# --- main -----------------------------------------------------------------------------------------

for b in etcd kube-apiserver kube-controller-manager minio versitygw; do
  [[ -x "$BIN/$b" ]] || die "$BIN/$b is missing: run tests/env/build.sh first"
done
[[ -x "$VENV/bin/moto_server" && -x "$VENV/bin/uvicorn" && -x "$VENV/bin/python" ]] ||
  die "$VENV has no moto_server or no uvicorn (ZenML's server): run tests/env/build.sh python first"

# The controllers the tests rely on (names as in kube-controller-manager --help of v1.33).
# root-ca-certificate-publisher puts kube-root-ca.crt into every namespace, as on a real cluster.
KCM_CONTROLLERS="garbage-collector-controller,namespace-controller,serviceaccount-controller"
KCM_CONTROLLERS+=",serviceaccount-token-controller,root-ca-certificate-publisher-controller"
# The ones that turn workloads into pods for node-up.sh's node (a Helm-installed Deployment, Jobs)
# and delete pods that finished or whose node is gone. Without a node they only create Pending pods.
# node-lifecycle lifts the not-ready taint the apiserver puts on every new Node (and marks a node
# whose kubelet stopped NotReady), without which nothing is ever scheduled.
KCM_CONTROLLERS+=",deployment-controller,replicaset-controller,job-controller"
KCM_CONTROLLERS+=",ttl-after-finished-controller,pod-garbage-collector-controller,node-lifecycle-controller"

# One up.sh or down.sh at a time (test binaries may race to start the environment). The lock lives
# beside the state directory because down.sh removes the directory.
mkdir -p "$(dirname "$STATE_DIR")"
exec 9>"$STATE_DIR.lock"
flock -w 300 9 || die "timed out waiting for another up.sh/down.sh (lock $STATE_DIR.lock)"
export _AO_TESTENV_LOCKED=1   # down.sh, run from here, must not wait for our own lock

if healthy; then
  log "environment already running"
  echo "$ENV_FILE"
  exit 0
fi

started=$SECONDS
for attempt in 1 2; do
  # Clear whatever an earlier, dead or half-started environment left behind.
  "$ENV_DIR/down.sh" >/dev/null
  log "starting the test environment in $STATE_DIR"
  # In a subshell so a failure anywhere in it lands here; errexit is switched on inside it
  # explicitly because bash ignores `set -e` in anything run as an `if` condition.
  set +e
  (set -e; start_all)
  rc=$?
  set -e
  if ((rc == 0)); then
    log "environment up in $((SECONDS - started))s"
    echo "$ENV_FILE"
    exit 0
  fi
  # A port picked as free may have been taken before our daemon bound it: start over once.
  if ((attempt == 1)) && grep -qs 'address already in use' "$LOGS"/*.log; then
    log "a port was taken meanwhile; retrying with new ports"
    continue
  fi
  log "startup failed; logs are kept in $(dirname "$STATE_DIR")/testenv-logs"
  "$ENV_DIR/down.sh" >/dev/null
  exit 1
done
