#!/usr/bin/env bash
# Builds the real components the integration tests run against, from pinned Go modules and PyPI:
# kube-apiserver, kube-controller-manager, kube-scheduler and kubelet (Kubernetes), etcd, MinIO, a
# checker built from Argo Workflows' own packages, Argo's workflow-controller and argoexec (run on the
# node by tests/argo_node.rs), IRSA's amazon-eks-pod-identity-webhook (tests/irsa_node.rs), the
# distribution registry the node pulls images from (node-up.sh), and
# moto (IAM/STS), ZenML (client and server) and boto3 in a virtual environment, MLflow's server and
# client in another; and installs the
# Debian packages the node of node-up.sh needs (containerd, ...) and musl-tools for the static binary.
# Everything is cached under $CACHE_DIR keyed by version: a second run is a no-op.
# One part only: build.sh go|python|helm|node.
#
# From empty caches the whole takes about 25 minutes on two cores, most of it compiling Go. What
# waits on the network instead runs beside the compiler: the Debian packages come first (one apt
# transaction), then the Python environments are installed in the background, and the Go modules of
# every tool are downloaded ahead of the build that needs them.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

build_tool() { # module-dir binary-name go-package [extra -ldflags] [extra go build flags]
  local module=$1 name=$2 package=$3 ldflags="-s -w ${4:-}" flags=() key out
  read -ra flags <<<"${5:-}"
  key=$(module_key "$module" "$ldflags${flags[*]:+ ${flags[*]}}")
  out="$CACHE_DIR/bin/$module-$key/$name"
  if [[ ! -x "$out" ]]; then
    log "building $name ($module, key $key); the first build takes several minutes"
    mkdir -p "$(dirname "$out")"
    (cd "$ENV_DIR/$module" && CGO_ENABLED=0 go build -trimpath "${flags[@]}" -ldflags="$ldflags" -o "$out.tmp" "$package")
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

python_venv() { # requirements-file link-name what
  local requirements=$1 link=$2 what=$3 key venv
  key=$(cat "$ENV_DIR/$requirements" <(python3 --version) | sha256sum | cut -c1-16)
  venv="$CACHE_DIR/$link-$key"
  # The venv is built in place (a venv records its own path in its scripts, so it cannot be moved
  # after the fact) and marked complete only once pip has succeeded: a half-built one is redone.
  if [[ ! -f "$venv/.complete" ]]; then
    log "creating the Python environment ($requirements: $what) at $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$ENV_DIR/$requirements"
    touch "$venv/.complete"
  fi
  ln -sfn "$venv" "$CACHE_DIR/$link"
}

# Two environments: MLflow's pins (SQLAlchemy, Flask, pandas...) live apart from ZenML's.
build_python_tools() {
  python_venv requirements.txt venv "moto, boto3, s3fs, minio, zenml"
  python_venv requirements-mlflow.txt venv-mlflow "MLflow's tracking server and client"
}

# The node of node-up.sh runs on Debian packages: containerd and runc, the CNI plugins (bridge,
# host-local, loopback), socat for its relays to the control plane, catatonit for its pause image,
# a static busybox for the main containers of Argo's workflow pods (tests/argo_node.rs), iproute2
# for its bridge, iptables, which the CNI plugins call for masquerading and port
# mapping (both off on this node), and debootstrap, with which tests/env/zenml-image.sh builds the
# image of ZenML's pods; and musl-tools, whose musl-gcc compiles aws-lc-sys for the operator's static
# binary (tests/env/build-static.sh). Installed with apt only when a binary is missing, so a warm
# machine needs neither root nor the network here.
install_node_packages() {
  local wanted=(containerd:/usr/bin/containerd containerd:/usr/bin/containerd-shim-runc-v2
    containerd:/usr/bin/ctr runc:/usr/sbin/runc containernetworking-plugins:/usr/lib/cni/bridge
    containernetworking-plugins:/usr/lib/cni/host-local containernetworking-plugins:/usr/lib/cni/loopback
    socat:/usr/bin/socat catatonit:/usr/bin/catatonit busybox-static:/bin/busybox iproute2:/usr/sbin/ip
    iptables:/usr/sbin/iptables debootstrap:/usr/sbin/debootstrap musl-tools:/usr/bin/musl-gcc)
  local entry missing=()
  for entry in "${wanted[@]}"; do
    [[ -x "${entry#*:}" ]] || missing+=("${entry%%:*}")
  done
  ((${#missing[@]})) || return 0
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  command -v apt-get >/dev/null && [[ $EUID -eq 0 ]] ||
    { log "ERROR: the node needs the Debian packages ${missing[*]}: install them (as root, with apt-get)"; exit 1; }
  log "installing ${missing[*]} for the node (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The version Argo's release build stamps (its Makefile's -X ...v3.version), from the pinned module:
# the controller reports it, and it names the default executor image (which the tests replace).
argo_version_stamp() {
  local version
  version=$(awk '$1 == "github.com/argoproj/argo-workflows/v3" { print $2 }' "$ENV_DIR/argo/go.mod")
  [[ "$version" =~ ^v3\.[0-9]+\.[0-9]+$ ]] || { log "ERROR: no github.com/argoproj/argo-workflows/v3 version in argo/go.mod"; exit 1; }
  echo "-X github.com/argoproj/argo-workflows/v3.version=$version"
}

# Argo's repository has workflow/executor/osspecific/signal_linux.go as a symbolic link to
# signal_darwin.go, and Go module zips leave symbolic links out: argoexec from the module as served
# does not build for Linux (undefined: Setpgid). Go refuses build overlays of files in the module
# cache, so argoexec builds from a copy of the module with the link put back (the same file), through
# a copy of argo/go.mod that replaces the module by it; prints the go build flag (nothing when the
# module has the file).
argo_source() {
  local dir src modfile
  dir=$(cd "$ENV_DIR/argo" && go mod download github.com/argoproj/argo-workflows/v3 &&
    go list -m -f '{{.Dir}}' github.com/argoproj/argo-workflows/v3)
  [[ ! -e "$dir/workflow/executor/osspecific/signal_linux.go" && -f "$dir/workflow/executor/osspecific/signal_darwin.go" ]] ||
    return 0
  src="$CACHE_DIR/argo-src/$(basename "$dir")"
  if [[ ! -f "$src.complete" ]]; then
    [[ ! -e "$src" ]] || { chmod -R u+w "$src"; rm -rf "$src"; }
    mkdir -p "$(dirname "$src")"
    cp -r "$dir" "$src"
    chmod -R u+w "$src"
    ln -s signal_darwin.go "$src/workflow/executor/osspecific/signal_linux.go"
    touch "$src.complete"
  fi
  modfile="$CACHE_DIR/argo-src/argoexec.mod"
  cp "$ENV_DIR/argo/go.sum" "${modfile%.mod}.sum"
  { cat "$ENV_DIR/argo/go.mod"; echo "replace github.com/argoproj/argo-workflows/v3 => $src"; } >"$modfile"
  echo "-modfile=$modfile"
}

# Every Go tool this script builds: its module directory under tests/env, one binary it makes, and
# its main packages.
GO_TOOLS=(
  "etcd etcd go.etcd.io/etcd/server/v3"
  "k8s kubelet k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet"
  "minio minio github.com/minio/minio"
  "versitygw versitygw github.com/versity/versitygw/cmd/versitygw"
  "argo-consumer argo-consumer ."
  "argo argoexec github.com/argoproj/argo-workflows/v3/cmd/workflow-controller github.com/argoproj/argo-workflows/v3/cmd/argoexec"
  "pod-identity-webhook pod-identity-webhook github.com/aws/amazon-eks-pod-identity-webhook"
  "registry registry github.com/distribution/distribution/v3/cmd/registry"
  "helm helm helm.sh/helm/v3/cmd/helm"
)

# Downloads the modules of every tool's packages, in order, while the compiler works on the first:
# `go list -deps` loads (and so downloads) exactly what `go build` will, and Go's module cache takes
# concurrent downloads of one module. A tool whose binary this machine has built before is passed
# over (a changed pin then downloads at its build, as without this).
download_go_modules() {
  local tool module binary packages
  for tool in "${GO_TOOLS[@]}"; do
    read -r module binary packages <<<"$tool"
    [[ ! -e "$CACHE_DIR/bin/$binary" ]] || continue
    # shellcheck disable=SC2086 # the packages are words
    (cd "$ENV_DIR/$module" && CGO_ENABLED=0 go list -deps $packages >/dev/null) ||
      log "downloading the modules of $module failed; its build will try again"
  done
}

mkdir -p "$CACHE_DIR/bin"
what="${1:-all}"
background=()
# A failed build stops what runs in the background, whole: each job is a process group of its own.
trap 'for job in "${background[@]}"; do kill -- "-$job" 2>/dev/null || true; done' EXIT
if [[ $what == all ]]; then
  install_node_packages
  set -m
  build_python_tools &
  background+=($!)
  download_go_modules &
  background+=($!)
  set +m
fi
case "$what" in
  all|go)
    build_tool etcd etcd go.etcd.io/etcd/server/v3
    stamp=$(kubernetes_version_stamp)
    for component in kube-apiserver kube-controller-manager kube-scheduler kubelet; do
      build_tool k8s "$component" "k8s.io/kubernetes/cmd/$component" "$stamp"
    done
    build_tool minio minio github.com/minio/minio
    build_tool versitygw versitygw github.com/versity/versitygw/cmd/versitygw
    # Argo Workflows' own packages (v3 and v4 modules), for the consumer test of Stacks.
    build_tool argo-consumer argo-consumer .
    # Argo Workflows itself (v3 module, static as its images carry them), for workflows on the node.
    stamp=$(argo_version_stamp)
    build_tool argo workflow-controller github.com/argoproj/argo-workflows/v3/cmd/workflow-controller "$stamp"
    build_tool argo argoexec github.com/argoproj/argo-workflows/v3/cmd/argoexec "$stamp" "$(argo_source)"
    # IRSA's mutating webhook (amazon-eks-pod-identity-webhook), run by tests/irsa_node.rs.
    build_tool pod-identity-webhook pod-identity-webhook github.com/aws/amazon-eks-pod-identity-webhook
    # The CNCF distribution registry, which node-up.sh starts for the node's pods to pull from.
    build_tool registry registry github.com/distribution/distribution/v3/cmd/registry
    ;;&
  python) build_python_tools ;;&
  all|helm) "$ENV_DIR/build-helm.sh" >/dev/null ;;&
  node) install_node_packages ;;
esac
# The Python environments and the downloads started above: a failed install fails the build.
for job in "${background[@]}"; do wait "$job"; done
