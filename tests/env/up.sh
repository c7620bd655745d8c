#!/usr/bin/env bash
# Starts the real local test environment the integration tests run against, all on 127.0.0.1:
#   etcd + kube-apiserver + kube-controller-manager (RBAC, TokenRequest, a fake EKS-like OIDC issuer),
#   MinIO over plain HTTP and a second MinIO over HTTPS (own CA), and moto in server mode (IAM, STS).
# The binaries come from tests/env/build.sh (run it first). Idempotent: when the environment recorded
# in $STATE_DIR is running and healthy this only prints the env file's path. The last line on stdout
# is always the path of the env file (mode 0600, `export` lines) that tells tests where everything is.
# Stop it with tests/env/down.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BIN="$CACHE_DIR/bin"
VENV="$CACHE_DIR/venv"
OIDC_ISSUER="https://oidc.artifact-operator.test/cluster"
S3_REGION="us-east-1"
# Seconds each component gets to become ready; generous because the machine may be busy compiling.
READY_TIMEOUT="${AO_TESTENV_TIMEOUT:-90}"

PKI="$STATE_DIR/pki"
LOGS="$STATE_DIR/logs"
PIDS="$STATE_DIR/pids"
ENV_FILE="$STATE_DIR/env"
PORTS_FILE="$STATE_DIR/ports"   # the ports of a running environment, for the health check

# Every process we start carries this marker in its environment; down.sh signals only processes
# that have it, so a stale pid file never makes us kill a stranger that reused the pid.
export AO_TESTENV_STATE="$STATE_DIR"

# --- helpers -----------------------------------------------------------------------------------

die() { log "ERROR: $*"; exit 1; }

# Secrets never reach stdout/stderr: everything we show from a log goes through this.
redact() {
  local args=() s
  for s in "${ROOT_SECRET_KEY:-}" "${USER_SECRET_KEY:-}"; do
    [[ -n "$s" ]] && args+=(-e "s/$s/<redacted>/g")
  done
  if ((${#args[@]})); then sed "${args[@]}"; else cat; fi
}

# Alive and not a zombie (a child that died before we reaped it still answers kill -0).
alive() {
  local pid=$1 state
  kill -0 "$pid" 2>/dev/null || return 1
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ "$state" != Z ]]
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

# Free loopback ports: bind all of them at once so they are distinct, then release them for our
# daemons. Another process could take one in between; startup then fails and is retried once.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

kube_curl() { # PATH [curl args...]: the apiserver as the admin user
  local path=$1; shift
  curl -fsS --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "$@" "https://127.0.0.1:$API_PORT$path"
}

# --- health of an environment that is already recorded -----------------------------------------

healthy() {
  [[ -f "$ENV_FILE" && -f "$PORTS_FILE" && -d "$PIDS" ]] || return 1
  local f
  for f in "$PIDS"/*.pid; do
    [[ -f "$f" ]] && alive "$(<"$f")" || return 1
  done
  # shellcheck source=/dev/null
  source "$PORTS_FILE"
  curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" >/dev/null 2>&1 &&
    kube_curl /readyz >/dev/null 2>&1 &&
    curl -fsSk --max-time 2 "https://127.0.0.1:$KCM_PORT/healthz" >/dev/null 2>&1 &&
    curl -fsS --max-time 2 "http://127.0.0.1:$S3_PORT/minio/health/ready" >/dev/null 2>&1 &&
    curl -fsS --max-time 2 --cacert "$PKI/s3-ca.crt" \
      "https://127.0.0.1:$S3_TLS_PORT/minio/health/ready" >/dev/null 2>&1 &&
    curl -fsS --max-time 2 "http://127.0.0.1:$MOTO_PORT/moto-api/" >/dev/null 2>&1
}

# --- certificates --------------------------------------------------------------------------------

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

make_pki() {
  new_ca ca "artifact-operator test cluster CA"
  new_cert apiserver ca "/CN=kube-apiserver" serverAuth \
    "IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.96.0.1"
  new_ca client-ca "artifact-operator test client CA"
  new_cert admin client-ca "/O=system:masters/CN=admin" clientAuth
  new_cert kube-controller-manager client-ca "/CN=system:kube-controller-manager" clientAuth
  # The service-account token signing key pair (RSA, so tokens are RS256 like EKS's).
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key" 2>/dev/null
  openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  # The HTTPS MinIO's serving certificate, from a CA of its own so tests must pass it explicitly.
  new_ca s3-ca "artifact-operator test S3 CA"
  new_cert s3 s3-ca "/CN=minio" serverAuth "IP:127.0.0.1,DNS:localhost"
}

# kubeconfig FILE USER: a kubeconfig for the apiserver with USER's client certificate embedded.
kubeconfig() {
  local file=$1 user=$2
  cat >"$file" <<EOF
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
EOF
}

# --- startup --------------------------------------------------------------------------------------

start_all() {
  umask 077   # keys, kubeconfigs and the env file are for our user only
  rm -rf "$STATE_DIR"
  mkdir -p "$PKI" "$LOGS" "$PIDS"

  read -r ETCD_PORT ETCD_PEER_PORT API_PORT KCM_PORT S3_PORT S3_CONSOLE_PORT S3_TLS_PORT \
    S3_TLS_CONSOLE_PORT MOTO_PORT < <(free_ports 9)
  declare -p ETCD_PORT API_PORT KCM_PORT S3_PORT S3_TLS_PORT MOTO_PORT | sed 's/^declare -- //' >"$PORTS_FILE"

  # Random credentials, hex so they are safe in URLs, sed and MinIO's key alphabet.
  ROOT_ACCESS_KEY="aoroot$(openssl rand -hex 6)"
  ROOT_SECRET_KEY=$(openssl rand -hex 20)
  USER_ACCESS_KEY="aolimited$(openssl rand -hex 6)"
  USER_SECRET_KEY=$(openssl rand -hex 20)

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

  wait_for etcd "healthy etcd" curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_PORT/health"

  start kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --secure-port "$API_PORT" --advertise-address 127.0.0.1 \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --cert-dir "$STATE_DIR/kube-apiserver" \
    --client-ca-file "$PKI/client-ca.crt" \
    --authorization-mode RBAC \
    --service-account-issuer "$OIDC_ISSUER" \
    --service-account-key-file "$PKI/sa.pub" \
    --service-account-signing-key-file "$PKI/sa.key" \
    --api-audiences "$OIDC_ISSUER,sts.amazonaws.com" \
    --service-cluster-ip-range 10.96.0.0/24 \
    --allow-privileged=true \
    --endpoint-reconciler-type none \
    --profiling=false
  # (--endpoint-reconciler-type none: the default reconciler would try to publish 127.0.0.1 as the
  # endpoint of the "kubernetes" Service, which validation rejects as loopback, and log it forever.)
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
  wait_for kube-controller-manager "ok /healthz" \
    curl -fsSk --max-time 2 "https://127.0.0.1:$KCM_PORT/healthz"
  # The controllers really work once the serviceaccount controller has filled in "default".
  wait_for kube-controller-manager "ServiceAccount default/default" \
    kube_curl /api/v1/namespaces/default/serviceaccounts/default

  # The env file is written last and atomically: its presence means a complete environment.
  (
    umask 077
    cat >"$ENV_FILE.tmp" <<EOF
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
export AO_VENV='$VENV'
export AO_CACHE_DIR='$CACHE_DIR'
EOF
    mv "$ENV_FILE.tmp" "$ENV_FILE"
  )
}

# --- main -----------------------------------------------------------------------------------------

for b in etcd kube-apiserver kube-controller-manager minio; do
  [[ -x "$BIN/$b" ]] || die "$BIN/$b is missing: run tests/env/build.sh first"
done
[[ -x "$VENV/bin/moto_server" && -x "$VENV/bin/python" ]] ||
  die "$VENV has no moto_server: run tests/env/build.sh python first"

# The controllers the tests rely on (names as in kube-controller-manager --help of v1.33).
# root-ca-certificate-publisher puts kube-root-ca.crt into every namespace, as on a real cluster.
KCM_CONTROLLERS="garbage-collector-controller,namespace-controller,serviceaccount-controller"
KCM_CONTROLLERS+=",serviceaccount-token-controller,root-ca-certificate-publisher-controller"

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
