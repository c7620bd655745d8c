#!/usr/bin/env bash
# Builds the image ZenML's pods run in on the node (the "runner" image), without Docker, from
# Debian's and PyPI's packages:
#   layer 1: Debian bookworm (debootstrap --variant=minbase) with python3, python3-venv and
#            ca-certificates;
#   layer 2: /opt/venv, a virtual environment of that python3 with exactly the packages pinned in
#            tests/env/requirements-zenml-image.txt (ZenML 0.98.0, its kubernetes and s3
#            integrations' requirements), installed with --no-deps, then checked with `pip check`,
#            an import of zenml, kubernetes, s3fs and boto3, and `zenml version`.
# The image's PATH starts with /opt/venv/bin, so `python3`, `python` and `zenml` are the venv's.
# The result is an OCI image layout directory under $CACHE_DIR/zenml-image, named after a hash of
# its inputs (this script, tests/env/oci-image.py and ocilib.py, the requirements, the Debian suite
# and packages): a second run finds it and costs nothing. The Debian layer is cached on its own, so
# changed requirements redo only the venv. Needs root (debootstrap, chroot) and the network (Debian's
# mirror, $AO_DEBIAN_MIRROR to use another; PyPI, through the host's CA bundle).
#
#   tests/env/zenml-image.sh            prints the layout directory
#   tests/env/zenml-image.sh --push     also pushes it to the node's registry (AO_REGISTRY in the
#                                       node's env file, node-up.sh) as zenml-runner:TAG, TAG the
#                                       first 12 hex digits of the manifest's digest, and prints,
#                                       as the last line, the reference pods pull:
#                                       $AO_POD_REGISTRY/zenml-runner:TAG
#   tests/env/zenml-image.sh --relock   resolves the direct requirements below afresh in the image's
#                                       Python and rewrites requirements-zenml-image.txt
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SUITE=bookworm
DEBIAN_MIRROR="${AO_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_PACKAGES=python3,python3-venv,ca-certificates
REQUIREMENTS="$ENV_DIR/requirements-zenml-image.txt"
REPOSITORY=zenml-runner
# What --relock resolves: ZenML, its kubernetes integration's requirements (kubernetes>=21.7,<26,
# Jinja2) and its s3 integration's (s3fs, boto3, aws-profile-manager); s3fs and boto3 as the
# environment's own venv has them (requirements.txt).
DIRECT=(zenml==0.98.0 kubernetes==25.3.0 s3fs==2025.10.0 boto3==1.41.5 aws-profile-manager==0.7.3 Jinja2==3.1.6)
# Bump when the Debian layer's steps below change (its key has no hash of this script).
BASE_VERSION=1
WORK="$CACHE_DIR/zenml-image"
ARCH=$(dpkg --print-architecture)

mode=build
case "${1:-}" in
  "") ;;
  --push) mode=push ;;
  --relock) mode=relock ;;
  -h|--help) sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "$0"; exit 0 ;;
  *) die "unknown argument $1 (see --help)" ;;
esac

((EUID == 0)) || die "zenml-image.sh needs root (debootstrap, chroot)"
command -v debootstrap >/dev/null || die "debootstrap is missing: run tests/env/build.sh node (or apt-get install debootstrap)"

base_key=$(printf '%s\n' "$BASE_VERSION" "$SUITE" "$DEBIAN_PACKAGES" "$ARCH" | sha256sum | cut -c1-16)
image_key=$(cat "${BASH_SOURCE[0]}" "$ENV_DIR/oci-image.py" "$ENV_DIR/ocilib.py" "$REQUIREMENTS" <(echo "$base_key") | sha256sum | cut -c1-16)
BASE="$WORK/base-$base_key"       # base.tar: the Debian layer
LAYOUT="$WORK/image-$image_key"   # the image, an OCI layout directory (complete when it exists)
# The CA bundle pip trusts inside the chroot: the host's (which knows any proxy's CA), never copied
# into the image, whose own bundle is Debian's ca-certificates.
HOST_CA="${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}"
PIP_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/pip"

# GNU tar of a directory's content as a layer: sorted, numeric owners, real modification times (the
# .pyc files Debian and pip compiled record their sources' times, and stay valid only with them).
layer_tar() { # DIR OUTPUT PATH...
  local dir=$1 out=$2; shift 2
  tar --create --file="$out" --directory="$dir" --format=gnu --sort=name --numeric-owner \
    --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' --exclude='./run/*' \
    --exclude='./tmp/*' --exclude='./var/tmp/*' "$@"
}

build_base() {
  local tmp="$BASE.tmp" started
  started=$(now_us)
  rm -rf --one-file-system "$tmp"
  mkdir -p "$tmp"
  log "debootstrap $SUITE ($DEBIAN_PACKAGES) from $DEBIAN_MIRROR; takes a minute or two"
  # In a mount namespace of its own: whatever debootstrap mounts in the target (proc, sys, devices)
  # goes away with it, also when it fails.
  if ! unshare --mount --propagation private -- debootstrap --variant=minbase --include="$DEBIAN_PACKAGES" \
    "$SUITE" "$tmp/rootfs" "$DEBIAN_MIRROR" >"$tmp/debootstrap.log" 2>&1; then
    tail -n 30 "$tmp/debootstrap.log" >&2
    die "debootstrap failed; its log: $tmp/debootstrap.log"
  fi
  local root="$tmp/rootfs"
  # What only the build needed: downloaded packages, package lists, logs, the host's resolver.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* \
    "$root"/var/log/* "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old
  : >"$root/etc/resolv.conf"
  echo localhost >"$root/etc/hostname"
  layer_tar "$root" "$tmp/base.tar" .
  rm -rf --one-file-system "$root"
  rm -rf --one-file-system "$BASE"
  mv "$tmp" "$BASE"
  log "Debian layer built in $(elapsed "$started")s ($(du -h "$BASE/base.tar" | cut -f1))"
}

# in_chroot ROOT SCRIPT: runs SCRIPT with sh in the chroot ROOT, in a mount namespace of its own
# with /proc, /dev, the host's resolver and CA bundle and pip's cache mounted in (all gone when it
# exits, and none of them in the layers).
in_chroot() {
  local root=$1 script=$2
  mkdir -p "$PIP_CACHE" "$root/tmp/pip-cache"
  touch "$root/tmp/host-ca.crt" "$root/etc/resolv.conf"
  unshare --mount --propagation private -- bash -euo pipefail -c '
    root=$1 ca=$2 cache=$3 script=$4
    mount -t proc proc "$root/proc"
    mount --bind /dev "$root/dev"
    mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
    mount --bind "$ca" "$root/tmp/host-ca.crt"
    mount --bind "$cache" "$root/tmp/pip-cache"
    exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
      PIP_CERT=/tmp/host-ca.crt PIP_CACHE_DIR=/tmp/pip-cache PIP_DISABLE_PIP_VERSION_CHECK=1 \
      PIP_DEFAULT_TIMEOUT=180 PIP_NO_INPUT=1 ZENML_ANALYTICS_OPT_IN=false /bin/sh -euc "$script"
  ' in-chroot "$root" "$HOST_CA" "$PIP_CACHE" "$script"
}

# The venv in a fresh copy of the Debian layer under WORK/venv.tmp; leaves the rootfs there.
venv_rootfs() { # pip install arguments...
  local tmp="$WORK/venv.tmp"
  rm -rf --one-file-system "$tmp"
  mkdir -p "$tmp/rootfs"
  tar --extract --file="$BASE/base.tar" --directory="$tmp/rootfs" --numeric-owner
  cp "$REQUIREMENTS" "$tmp/rootfs/tmp/requirements.txt"
  in_chroot "$tmp/rootfs" "
    python3 -m venv /opt/venv
    /opt/venv/bin/pip install --quiet --no-warn-script-location $*
    /opt/venv/bin/pip check
    /opt/venv/bin/python -c 'import zenml, kubernetes, s3fs, boto3'
    /opt/venv/bin/zenml version
  "
}

build_image() {
  local started tmp="$WORK/venv.tmp" digest
  started=$(now_us)
  log "installing requirements-zenml-image.txt into the image's venv"
  venv_rootfs --no-deps --requirement /tmp/requirements.txt >&2
  layer_tar "$tmp/rootfs" "$tmp/venv.tar" ./opt
  rm -rf --one-file-system "$tmp/rootfs"
  digest=$(python3 "$ENV_DIR/oci-image.py" layout --output "$LAYOUT" --architecture "$ARCH" \
    --layer "$BASE/base.tar" --history "debootstrap --variant=minbase --include=$DEBIAN_PACKAGES $SUITE" \
    --layer "$tmp/venv.tar" --history "python3 -m venv /opt/venv; pip install --no-deps -r requirements-zenml-image.txt" \
    --env "PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --env "VIRTUAL_ENV=/opt/venv" --env "LANG=C.UTF-8" --env "PYTHONUNBUFFERED=1" \
    --cmd '["python3"]' --workdir / \
    --label "org.opencontainers.image.title=ZenML runner (tests/env/zenml-image.sh)")
  rm -rf --one-file-system "$tmp"
  log "image $digest built in $(elapsed "$started")s ($(du -sh "$LAYOUT" | cut -f1)): $LAYOUT"
}

relock() {
  local tmp="$WORK/venv.tmp" frozen
  venv_rootfs "${DIRECT[@]}" >&2
  # Every distribution but pip (the venv's own) from the metadata itself: pip freeze would leave
  # out setuptools (ZenML needs a newer one than the venv's) and argparse (aws-profile-manager
  # requires PyPI's, which the standard library's shadows).
  frozen=$(chroot "$tmp/rootfs" /opt/venv/bin/python -c '
import importlib.metadata as m
names = {d.metadata["Name"]: d.version for d in m.distributions()}
print("\n".join(f"{n}=={v}" for n, v in sorted(names.items(), key=lambda i: i[0].lower()) if n != "pip"))')
  rm -rf --one-file-system "$tmp"
  {
    echo "# The Python packages of the ZenML runner image (tests/env/zenml-image.sh), every one pinned and"
    echo "# installed with --no-deps: ZenML 0.98.0, its kubernetes integration's requirements (kubernetes,"
    echo "# Jinja2) and its s3 integration's (s3fs, boto3, aws-profile-manager; s3fs and boto3 as in"
    echo "# requirements.txt), then what they need (setuptools replaces the venv's own; argparse is"
    echo "# there for aws-profile-manager's metadata, the standard library's is the one imported). For"
    echo "# Debian bookworm's python3 (3.11); pip is the venv's own, from Debian's python3-venv."
    echo "# Regenerated by tests/env/zenml-image.sh --relock from the direct requirements it names."
    printf '%s\n' "${DIRECT[@]}"
    echo "# What those need:"
    local direct_names
    direct_names=$(printf '%s\n' "${DIRECT[@]}" | sed 's/==.*//' | tr 'A-Z_' 'a-z-')
    while read -r line; do
      name=$(echo "${line%%==*}" | tr 'A-Z_' 'a-z-')
      grep -qxF "$name" <<<"$direct_names" || echo "$line"
    done <<<"$frozen"
  } >"$REQUIREMENTS"
  log "rewrote $REQUIREMENTS ($(grep -vc '^#' "$REQUIREMENTS") packages)"
}

push_image() {
  local node_env="$STATE_DIR/node/env" registry pod_registry ca reference
  [[ -f "$node_env" ]] || die "--push: no node is running ($node_env is missing): start it with tests/env/node-up.sh"
  # shellcheck source=/dev/null
  registry=$(source "$node_env" && echo "${AO_REGISTRY:-}")
  # shellcheck source=/dev/null
  pod_registry=$(source "$node_env" && echo "${AO_POD_REGISTRY:-}")
  # shellcheck source=/dev/null
  ca=$(source "$node_env" && echo "${AO_REGISTRY_CA_FILE:-}")
  [[ -n "$registry" && -n "$pod_registry" ]] || die "the node's env file names no registry: restart the node (node-down.sh, node-up.sh)"
  local started
  started=$(now_us)
  reference=$(python3 "$ENV_DIR/oci-image.py" push --layout "$LAYOUT" --registry "$registry" --cafile "$ca" \
    --repository "$REPOSITORY")
  log "pushed in $(elapsed "$started")s"
  echo "$pod_registry/${reference#"$registry"/}"
}

mkdir -p "$WORK"
# One build at a time (tests may ask for the image at once); the others wait and find it built.
exec 8>"$WORK/.lock"
flock -w 1800 8 || die "timed out waiting for another zenml-image.sh (lock $WORK/.lock)"

[[ -f "$BASE/base.tar" ]] || build_base
if [[ "$mode" == relock ]]; then
  relock
  exit 0
fi
[[ -d "$LAYOUT" ]] || build_image
echo "$LAYOUT"
[[ "$mode" != push ]] || push_image
