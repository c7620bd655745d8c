#!/usr/bin/env bash
# Builds the real components the integration tests run against, from pinned Go modules and PyPI:
# kube-apiserver and kube-controller-manager (Kubernetes), etcd, MinIO, a checker built from Argo
# Workflows' own packages, and moto (IAM/STS), ZenML and boto3 in a virtual environment. Everything
# is cached under $CACHE_DIR keyed by version: a second run is a no-op.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

build_tool() { # module-dir binary-name go-package [extra -ldflags]
  local module=$1 name=$2 package=$3 ldflags="-s -w ${4:-}" key out
  key=$(module_key "$module" "$ldflags")
  out="$CACHE_DIR/bin/$module-$key/$name"
  if [[ ! -x "$out" ]]; then
    log "building $name ($module, key $key); the first build takes several minutes"
    mkdir -p "$(dirname "$out")"
    (cd "$ENV_DIR/$module" && CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$out.tmp" "$package")
    mv "$out.tmp" "$out"
  fi
  ln -sfn "$out" "$CACHE_DIR/bin/$name"
}

# The version Kubernetes' own release build stamps into its binaries (hack/lib/version.sh), taken
# from the pinned module: unstamped they report v0.0.0-master, and helm refuses any chart with a
# kubeVersion constraint against such a cluster.
kubernetes_version_stamp() {
  local version major minor flags="" pkg
  version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3 }' "$ENV_DIR/k8s/go.mod")
  [[ "$version" =~ ^v([0-9]+)\.([0-9]+)\.[0-9]+$ ]] || { log "ERROR: no k8s.io/kubernetes version in k8s/go.mod"; exit 1; }
  major=${BASH_REMATCH[1]} minor=${BASH_REMATCH[2]}
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$flags"
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
    stamp=$(kubernetes_version_stamp)
    for component in kube-apiserver kube-controller-manager kube-scheduler kubelet; do
      build_tool k8s "$component" "k8s.io/kubernetes/cmd/$component" "$stamp"
    done
    build_tool minio minio github.com/minio/minio
    # Argo Workflows' own packages (v3 and v4 modules), for the consumer test of Stacks.
    build_tool argo-consumer argo-consumer .
    ;;&
  all|python) build_python_tools ;;&
  all|helm) "$ENV_DIR/build-helm.sh" >/dev/null ;;
esac
