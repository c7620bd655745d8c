#!/usr/bin/env bash
# Builds Helm from the Go module pinned in tests/env/helm (go.mod + go.sum), the same way build.sh
# builds the control plane: cached under $CACHE_DIR/bin/helm-<key>/helm, keyed by go.mod, go.sum,
# the Go toolchain and the link flags, with $CACHE_DIR/bin/helm a symlink to it. A second run is a
# no-op. Meant to be called from build.sh; runs on its own as well.
# Prints the path of the helm binary on stdout.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

module=helm
mod="$ENV_DIR/$module/go.mod"
version=$(awk '$1 == "helm.sh/helm/v3" { print $2 }' "$mod")
client_go=$(awk '$1 == "k8s.io/client-go" { print $2 }' "$mod") # v0.34.0 -> Kubernetes 1.34
k8s_minor=$(cut -d. -f2 <<<"$client_go")
# The same -X stamps as Helm's own Makefile: without them `helm version` says only "v3.19", and
# `helm template`/`helm lint` assume Kubernetes 1.20 (so a chart's kubeVersion check fails).
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
  ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
done
# lib.sh's key (go.mod, go.sum, Go toolchain), plus the link flags above.
key=$( (module_key "$module"; printf '%s\n' "$ldflags") | sha256sum | cut -c1-16)
out="$CACHE_DIR/bin/$module-$key/helm"
if [[ ! -x "$out" ]]; then
  log "building helm $version ($module, key $key); the first build takes several minutes"
  mkdir -p "$(dirname "$out")"
  (cd "$ENV_DIR/$module" && CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" \
    -o "$out.tmp" helm.sh/helm/v3/cmd/helm)
  mv "$out.tmp" "$out"
fi
mkdir -p "$CACHE_DIR/bin"
ln -sfn "$out" "$CACHE_DIR/bin/helm"
printf '%s\n' "$CACHE_DIR/bin/helm"
