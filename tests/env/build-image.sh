#!/usr/bin/env bash
# Builds a container image for the node of tests/env/node-up.sh without Docker or a registry: an OCI
# image layout tarball written by tests/env/build-image.py (deterministic: same inputs, same digest).
# With --import it is loaded into the node's containerd, where pods find it as NAME:TAG. Nothing is
# ever pulled on this node, so pods must use a tag other than "latest" (whose default pull policy is
# Always) or imagePullPolicy IfNotPresent/Never.
#
#   tests/env/build-image.sh [--import] [--output TAR] [--build-arg NAME=VALUE]... BINARY NAME:TAG
#       The operator's image: the final stage of deploy/docker/Dockerfile around BINARY, a static
#       build such as target/musl/x86_64-unknown-linux-musl/release/artifact-operator.
#   tests/env/build-image.sh --pause [--import] [--output TAR] NAME:TAG
#       The node's sandbox image, catatonit in pause mode (node-up.sh builds its own with this).
#   tests/env/build-image.sh --argoexec|--workflow-controller [--import] [--output TAR] BINARY NAME:TAG
#       Argo Workflows' executor or controller image around BINARY, a static build of it (build.sh
#       go builds both): the binary in /bin and the entrypoint as Argo's own images have them.
#   tests/env/build-image.sh --busybox [--import] [--output TAR] NAME:TAG
#       A main-container image for workflow steps: Debian's static busybox (build.sh node) and its
#       applets.
#
# --import loads into the containerd at $AO_CONTAINERD_ADDRESS with $AO_CONTAINERD_SNAPSHOTTER, as
# the node's env file ($STATE_DIR/node/env) sets them; it is read when they are not set already.
# --containerd ADDRESS and --snapshotter NAME override both. The tarball goes to
# $STATE_DIR/images/ unless --output says otherwise; its path is the last line on stdout.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DOCKERFILE="$REPO_ROOT/deploy/docker/Dockerfile"
PAUSE_BINARY=/usr/bin/catatonit
BUSYBOX_BINARY=/bin/busybox

kind=operator import=0 output="" build_args=() positional=()
address="${AO_CONTAINERD_ADDRESS:-}" snapshotter="${AO_CONTAINERD_SNAPSHOTTER:-}"
while (($#)); do
  case $1 in
    --pause) kind=pause ;;
    --argoexec) kind=argoexec ;;
    --workflow-controller) kind=workflow-controller ;;
    --busybox) kind=busybox ;;
    --import) import=1 ;;
    --output) output=${2:?--output needs a path}; shift ;;
    --build-arg) build_args+=(--build-arg "${2:?--build-arg needs NAME=VALUE}"); shift ;;
    --containerd) address=${2:?--containerd needs an address}; shift ;;
    --snapshotter) snapshotter=${2:?--snapshotter needs a name}; shift ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "$0"; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) positional+=("$1") ;;
  esac
  shift
done
set -- "${positional[@]}"

if [[ "$kind" == pause ]]; then
  (($# == 1)) || die "usage: build-image.sh --pause [--import] [--output TAR] NAME:TAG"
  image=$1
  builder=(pause --binary "$PAUSE_BINARY")
elif [[ "$kind" == busybox ]]; then
  (($# == 1)) || die "usage: build-image.sh --busybox [--import] [--output TAR] NAME:TAG"
  [[ -x "$BUSYBOX_BINARY" ]] || die "$BUSYBOX_BINARY is missing: run tests/env/build.sh node (Debian's busybox-static)"
  image=$1
  builder=(busybox --binary "$BUSYBOX_BINARY")
elif [[ "$kind" == argoexec || "$kind" == workflow-controller ]]; then
  (($# == 2)) || die "usage: build-image.sh --$kind [--import] [--output TAR] BINARY NAME:TAG"
  [[ -f "$1" ]] || die "$1: no such binary"
  image=$2
  builder=("$kind" --binary "$1")
else
  (($# == 2)) || die "usage: build-image.sh [--import] [--output TAR] BINARY NAME:TAG"
  [[ -f "$1" ]] || die "$1: no such binary"
  image=$2
  builder=(operator --dockerfile "$DOCKERFILE" --binary "$1" "${build_args[@]}")
fi
output=${output:-"$STATE_DIR/images/${image//[\/:]/_}.tar"}

started=$(now_us)
read -r ref digest output < <(python3 "$ENV_DIR/build-image.py" "${builder[@]}" --image "$image" --output "$output")
[[ -n "${output:-}" && -f "$output" ]] || die "build-image.py failed for $image"
log "built $ref ($digest, $(du -h "$output" | cut -f1)) in $(elapsed "$started")s"

if ((import)); then
  if [[ -z "$address" || -z "$snapshotter" ]]; then
    node_env="$STATE_DIR/node/env"
    [[ -f "$node_env" ]] || die "--import: no node is running ($node_env is missing): start it with tests/env/node-up.sh"
    # shellcheck source=/dev/null
    address=${address:-$(source "$node_env" && echo "$AO_CONTAINERD_ADDRESS")}
    # shellcheck source=/dev/null
    snapshotter=${snapshotter:-$(source "$node_env" && echo "$AO_CONTAINERD_SNAPSHOTTER")}
  fi
  started=$(now_us)
  # Into the namespace the CRI plugin serves (k8s.io), unpacked for the CRI's snapshotter, so the
  # first pod does not pay for the unpacking. ctr's chatter is shown only when it fails.
  if ! out=$(ctr --address "$address" --namespace k8s.io images import --snapshotter "$snapshotter" "$output" 2>&1); then
    printf '%s
' "$out" >&2
    die "importing $output into the containerd at $address failed"
  fi
  [[ -n "$(ctr --address "$address" --namespace k8s.io images ls --quiet "name==$ref")" ]] ||
    die "containerd at $address has no image $ref after the import (was the tarball's annotation lost?)"
  log "imported $ref into the node's containerd in $(elapsed "$started")s"
fi
echo "$output"
