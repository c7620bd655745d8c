#!/usr/bin/env bash
# The main job: builds (or reuses) the local environment, starts it, runs the operator against it
# with the CRDs installed, applies the MinIO example with real keys, and shows the ArtifactStore and
# the Stack turning Ready, and their ConfigMaps.
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
# Apply each object of the example, pointed at the local MinIO.
sed -e "s#http://minio.storage.svc:9000#$AO_S3_ENDPOINT#" -e 's#s3://ml-artifacts/#s3://limited-demo/#' deploy/examples/minio-keys.yaml |
  "$AO_VENV/bin/python" -c '
import json, sys, yaml
plural = {"ServiceAccount": "/api/v1/namespaces/NS/serviceaccounts/", "ArtifactStore": "/apis/artifacts.dev/v1alpha1/namespaces/NS/artifactstores/",
          "Stack": "/apis/artifacts.dev/v1alpha1/namespaces/NS/stacks/"}
for doc in yaml.safe_load_all(sys.stdin):
    print(plural[doc["kind"]] + doc["metadata"]["name"], json.dumps(doc))' |
  while read -r path object; do api PATCH "${path/NS/$ns}" "$object" >/dev/null; done
show() { # PATH: the object's Ready-type conditions on one line
  api GET "$1" | python3 -c 'import json,sys; s=json.load(sys.stdin).get("status",{}); print(" ".join(c["type"]+"="+c["status"]+"("+c["reason"]+")" for c in s.get("conditions",[])))'
}
for _ in $(seq 60); do
  store=$(show /apis/artifacts.dev/v1alpha1/namespaces/$ns/artifactstores/minio)
  stack=$(show /apis/artifacts.dev/v1alpha1/namespaces/$ns/stacks/minio)
  echo "ArtifactStore $ns/minio: $store"
  echo "Stack $ns/minio: $stack"
  [[ "$store" == Ready=True* && "$stack" == Ready=True* ]] && break
  sleep 1
done
for cm in minio-artifact-store minio-stack; do
  echo "--- ConfigMap $ns/$cm"
  api GET /api/v1/namespaces/$ns/configmaps/$cm | python3 -c 'import json,sys; [print(f"{k}: {v}") for k,v in sorted(json.load(sys.stdin)["data"].items())]'
done
echo "--- the operator keeps running; Ctrl-C to stop it, tests/env/down.sh to stop the environment"
[[ -n "${AO_DEV_EXIT:-}" ]] && exit 0
wait $operator
