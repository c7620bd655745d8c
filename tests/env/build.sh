#!/usr/bin/env bash
# Builds the real components the integration tests run against, from pinned Go modules and PyPI:
# kube-apiserver and kube-controller-manager (Kubernetes), etcd, MinIO, a checker built from Argo
# Workflows' own packages, and moto (IAM/STS), ZenML and boto3 in a virtual environment. Everything
# is cached under $CACHE_DIR keyed by version: a second run is a no-op.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

build_tool() { # module-dir binary-name go-package
  local module=$1 name=$2 package=$3 key out
  key=$(module_key "$module")
  out="$CACHE_DIR/bin/$module-$key/$name"
  if [[ ! -x "$out" ]]; then
    log "building $name ($module, key $key); the first build takes several minutes"
    mkdir -p "$(dirname "$out")"
    (cd "$ENV_DIR/$module" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$out.tmp" "$package")
    mv "$out.tmp" "$out"
  fi
  ln -sfn "$out" "$CACHE_DIR/bin/$name"
}

build_python_tools() {
  local key venv
  key=$(cat "$ENV_DIR/requirements.txt" <(python3 --version) | sha256sum | cut -c1-16)
  venv="$CACHE_DIR/venv-$key"
  # The venv is built in place (a venv records its own path in its scripts, so it cannot be moved
  # after the fact) and marked complete only once pip has succeeded: a half-built one is redone.
  if [[ ! -f "$venv/.complete" ]]; then
    log "creating the Python environment (requirements.txt: moto, boto3, s3fs, minio) at $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$ENV_DIR/requirements.txt"
    touch "$venv/.complete"
  fi
  ln -sfn "$venv" "$CACHE_DIR/venv"
}

mkdir -p "$CACHE_DIR/bin"
what="${1:-all}"
case "$what" in
  all|go)
    build_tool etcd etcd go.etcd.io/etcd/server/v3
    build_tool k8s kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
    build_tool k8s kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
    build_tool minio minio github.com/minio/minio
    # Argo Workflows' own packages (v3 and v4 modules), for the consumer test of Stacks.
    build_tool argo-consumer argo-consumer .
    ;;&
  all|python) build_python_tools ;;&
  all|helm) "$ENV_DIR/build-helm.sh" >/dev/null ;;
esac
