#!/usr/bin/env bash
# Copies the generated CRDs (crds/*.yaml, written by `artifact-operator crd`) into the chart
# (charts/artifact-operator/files/crds/), which renders them under crds.install. Files in the chart
# that no longer exist in crds/ are removed.
#   tests/chart/sync-crds.sh          copy
#   tests/chart/sync-crds.sh --check  only check that the chart's copies are up to date
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SRC="$ROOT/crds"
DST="$ROOT/charts/artifact-operator/files/crds"
check=false
case "${1:-}" in
  --check) check=true ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

shopt -s nullglob
sources=("$SRC"/*.yaml)
if ((${#sources[@]} == 0)); then
  echo "sync-crds: no CRDs in $SRC (generate them with \`artifact-operator crd\`)" >&2
  exit 1
fi

stale=0
for src in "${sources[@]}"; do
  dst="$DST/$(basename "$src")"
  if ! cmp -s "$src" "$dst"; then
    if $check; then echo "sync-crds: out of date: ${dst#"$ROOT"/}" >&2; stale=1
    else mkdir -p "$DST"; cp "$src" "$dst"; echo "sync-crds: copied ${src#"$ROOT"/}"; fi
  fi
done
for dst in "$DST"/*.yaml; do
  if [[ ! -e "$SRC/$(basename "$dst")" ]]; then
    if $check; then echo "sync-crds: not in crds/: ${dst#"$ROOT"/}" >&2; stale=1
    else rm "$dst"; echo "sync-crds: removed ${dst#"$ROOT"/}"; fi
  fi
done
if $check && ((stale)); then
  echo "sync-crds: run tests/chart/sync-crds.sh" >&2
  exit 1
fi
