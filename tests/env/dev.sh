#!/usr/bin/env bash
# The main job: builds (or reuses) the local environment, starts it, runs the operator against it
# with the CRDs installed, applies the MinIO example with real keys, and shows it turning Ready.
# The operator keeps running in the foreground; Ctrl-C stops it (tests/env/down.sh stops the rest).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
tests/env/build.sh
envfile=$(tests/env/up.sh | tail -n 1)
# shellcheck disable=SC1090
source "$envfile"
cargo build --quiet --locked
bin=target/debug/artifact-operator
ns=artifact-demo

# The operator's own AWS identity: MinIO's root user (moto answers IAM and STS).
export AWS_ACCESS_KEY_ID="$AO_S3_ROOT_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$AO_S3_ROOT_SECRET_KEY" AWS_REGION="$AO_S3_REGION"
export AWS_ENDPOINT_URL_IAM="$AO_MOTO_ENDPOINT" AWS_ENDPOINT_URL_STS="$AO_MOTO_ENDPOINT" AWS_EC2_METADATA_DISABLED=true
"$bin" run --install-crds --log-format text --http-addr 127.0.0.1:0 --resync-interval 1m &
operator=$!
trap 'kill $operator 2>/dev/null || true' EXIT

api() { # METHOD PATH [BODY]: the apiserver with the admin kubeconfig's client certificate
  curl -sS --fail-with-body --cacert "$STATE_DIR/pki/ca.crt" --cert "$STATE_DIR/pki/admin.crt" --key "$STATE_DIR/pki/admin.key" \
    -X "$1" -H 'Content-Type: application/apply-patch+yaml' "$AO_KUBE_API$2?fieldManager=dev&force=true" ${3:+--data-binary "$3"}
}
until api GET /apis/artifacts.dev/v1alpha1 >/dev/null 2>&1; do sleep 1; done
api PATCH /api/v1/namespaces/$ns "{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"$ns\"}}" >/dev/null
# The limited MinIO user's keys, under ZenML's key names. The values go only into the Secret.
python3 - "$AO_S3_USER_ACCESS_KEY" "$AO_S3_USER_SECRET_KEY" > "$STATE_DIR/demo-secret.json" <<'PY'
import json, sys
print(json.dumps({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "minio-keys"},
                  "stringData": {"aws_access_key_id": sys.argv[1], "aws_secret_access_key": sys.argv[2]}}))
PY
api PATCH /api/v1/namespaces/$ns/secrets/minio-keys "@$STATE_DIR/demo-secret.json" >/dev/null
rm -f "$STATE_DIR/demo-secret.json"
store=$(sed -e "s#http://minio.storage.svc:9000#$AO_S3_ENDPOINT#" -e 's#s3://ml-artifacts/#s3://limited-demo/#' deploy/examples/minio-keys.yaml)
api PATCH /apis/artifacts.dev/v1alpha1/namespaces/$ns/artifactstores/minio "$store" >/dev/null
for _ in $(seq 60); do
  status=$(api GET /apis/artifacts.dev/v1alpha1/namespaces/$ns/artifactstores/minio | python3 -c 'import json,sys; s=json.load(sys.stdin).get("status",{}); print(" ".join(c["type"]+"="+c["status"]+"("+c["reason"]+")" for c in s.get("conditions",[])))')
  echo "ArtifactStore $ns/minio: $status"
  [[ "$status" == Ready=True* ]] && break
  sleep 1
done
echo "--- ConfigMap $ns/minio-artifact-store"
api GET /api/v1/namespaces/$ns/configmaps/minio-artifact-store | python3 -c 'import json,sys; [print(f"{k}: {v}") for k,v in sorted(json.load(sys.stdin)["data"].items())]'
echo "--- the operator keeps running; Ctrl-C to stop it, tests/env/down.sh to stop the environment"
[[ -n "${AO_DEV_EXIT:-}" ]] && exit 0
wait $operator
