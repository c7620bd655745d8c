#!/usr/bin/env bash
# Tests the Helm chart charts/artifact-operator without a cluster: `helm lint --strict`, renders with
# the default and with non-default values (asserted by assert_chart.py), values that
# values.schema.json must reject, the CRD switch, and that deploy/ is up to date.
# Builds helm (tests/env/build-helm.sh) and installs PyYAML when they are missing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

HELM=$(find_helm)
ensure_pyyaml
NS=artifact-operator
RELEASE=artifact-operator
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# Runs a command that must succeed.
expect_ok() { # description command...
  local description=$1 out
  shift
  if out=$("$@" 2>&1); then pass "$description"; else fail "$description" "$out"; fi
}

# Runs a command that must fail with output matching a pattern (grep -E).
expect_error() { # description pattern command...
  local description=$1 pattern=$2 out
  shift 2
  if out=$("$@" 2>&1); then
    fail "$description" "succeeded but must fail"
  elif grep -Eq -- "$pattern" <<<"$out"; then
    pass "$description"
  else
    fail "$description" "failed without matching /$pattern/: $out"
  fi
}

# Renders a chart into $WORK/NAME.yaml; a failed render counts as a failed case.
render_chart() { # chart-dir name helm-template-args...
  local chart=$1 name=$2 out
  shift 2
  if out=$("$HELM" template "$RELEASE" "$chart" --namespace "$NS" "$@" 2>&1 >"$WORK/$name.yaml"); then
    pass "render $name"
  else
    fail "render $name" "$out"
  fi
}
render() { render_chart "$CHART_DIR" "$@"; } # name helm-template-args...

# One assertion of assert_chart.py on a rendered file.
check() { # description check rendered-name args...
  local description=$1 name=$3 out
  local what=$2
  shift 3
  if out=$(python3 "$CHART_TESTS_DIR/assert_chart.py" "$what" "$WORK/$name.yaml" "$@" 2>&1); then
    pass "$description"
  else
    fail "$description" "$out"
  fi
}

VALUES_NS="$CHART_TESTS_DIR/fixtures/values-namespaced.yaml"
shopt -s nullglob
chart_crds=("$CHART_DIR"/files/crds/*.yaml)
n_crds=${#chart_crds[@]}
crd_kinds=() # the CRDs every render holds once crds/ exists
((n_crds == 0)) || crd_kinds=("CustomResourceDefinition=$n_crds")

# ---- lint --------------------------------------------------------------------------------------
expect_ok "helm lint --strict (default values)" "$HELM" lint --strict "$CHART_DIR"
expect_ok "helm lint --strict (namespaced values)" "$HELM" lint --strict "$CHART_DIR" -f "$VALUES_NS"
expect_ok "values.schema.json is strict at every level" python3 - "$CHART_DIR/values.schema.json" <<'PY'
import json, sys
schema = json.load(open(sys.argv[1]))
def walk(node, path):
    if isinstance(node, dict):
        types = node.get("type")
        if types == "object" or (isinstance(types, list) and "object" in types):
            extra = node.get("additionalProperties")
            # Fixed shapes close with false; maps (labels, annotations) type every value instead.
            assert extra is False or (isinstance(extra, dict) and "type" in extra), \
                f"{path or '/'}: object without additionalProperties: false"
            if extra is False:
                assert node.get("properties"), f"{path}: closed object without properties"
        for key, value in node.items():
            walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            walk(value, f"{path}/{i}")
walk(schema, "")
PY

# ---- default values ----------------------------------------------------------------------------
render default
check "default: kinds (cluster mode, no ServiceMonitor)" kinds default \
  ServiceAccount=1 ClusterRole=1 ClusterRoleBinding=1 Role=1 RoleBinding=1 Service=1 Deployment=1 \
  "${crd_kinds[@]}"
check "default: restricted securityContext" restricted default
check "default: probes /healthz and /readyz on the http port 8080" probes default 8080
check "default: POD_NAMESPACE from the downward API" pod_namespace_env default
check "default: args" args default run --resync-interval=10m --concurrency=16 --unhealthy-after=2m \
  --aws-requests-per-second=10 --aws-burst=20 --s3-requests-per-second=1000 --s3-burst=2000 \
  --log-level=info --log-format=json \
  --http-addr=0.0.0.0:8080 --check-image=artifact-operator:0.1.0 --lease-name=artifact-operator
check "default: leader election on" env default AO_LEADER_ELECTION=true
check "default: no AWS endpoint or region overrides" no_env default AWS_REGION AWS_ENDPOINT_URL_IAM AWS_ENDPOINT_URL_STS
check "default: 2 replicas, image, resources" deployment_fields default 2 artifact-operator:0.1.0 50m 64Mi 500m 256Mi
check "default: ClusterRole is exactly the operator's permissions" cluster_rbac default
check "default: no Secret writes in any ClusterRole" no_cluster_secret_writes default
check "default: no Secret-writer Roles (rbac.secretWriteNamespaces empty)" secret_writer_roles default
check "default: no wildcards in RBAC" no_wildcards default
check "default: lease Role in the release namespace" lease_role default
check "default: no role-arn annotation" role_arn default
check "default: metrics Service selects the pods" metrics_service default

# ---- non-default values: namespaced mode -------------------------------------------------------
render namespaced -f "$VALUES_NS"
check "namespaced: kinds (no ClusterRole, ServiceMonitor on)" kinds namespaced \
  ServiceAccount=1 Role=3 RoleBinding=3 Service=1 Deployment=1 ServiceMonitor=1 \
  "${crd_kinds[@]}"
check "namespaced: no ClusterRole or ClusterRoleBinding" no_cluster_rbac namespaced
check "namespaced: a Role+RoleBinding per watched namespace, exact rules" namespaced_rbac namespaced ml-team-a ml-team-b
check "namespaced: no wildcards in RBAC" no_wildcards namespaced
check "namespaced: lease Role in the release namespace" lease_role namespaced
check "namespaced: role-arn annotation" role_arn namespaced arn:aws:iam::123456789012:role/artifact-operator
check "namespaced: ServiceMonitor" service_monitor namespaced 15s release=prometheus
check "namespaced: restricted securityContext" restricted namespaced
check "namespaced: 1 replica, image, custom resources" deployment_fields namespaced 1 \
  registry.example.com/platform/artifact-operator:0.1.0-rc1 200m 256Mi 1 512Mi
check "namespaced: args" args namespaced run --namespaces=ml-team-a,ml-team-b --resync-interval=5m \
  --concurrency=8 --unhealthy-after=5m --aws-requests-per-second=5 --aws-burst=10 --s3-requests-per-second=40 --s3-burst=80 \
  --log-level=debug --log-format=text \
  --http-addr=0.0.0.0:8080 --eks-cluster-name=ml-cluster \
  --check-image=registry.example.com/platform/artifact-operator:0.1.0-rc1 --lease-name=artifact-operator
check "namespaced: AWS env and extraEnv" env namespaced AWS_REGION=eu-west-1 \
  AWS_ENDPOINT_URL_IAM=http://127.0.0.1:5000 AWS_ENDPOINT_URL_STS=http://127.0.0.1:5000 \
  AWS_STS_REGIONAL_ENDPOINTS=regional

# ---- other combinations ------------------------------------------------------------------------
render secret-writers --set 'rbac.secretWriteNamespaces={ml-team-a,ml-team-b}' --set 'watchNamespaces={ml-team-a,ml-team-b}'
check "cluster mode + secretWriteNamespaces: Secret create/patch only through Roles" \
  secret_writer_roles secret-writers ml-team-a ml-team-b
check "cluster mode + secretWriteNamespaces: ClusterRole unchanged" cluster_rbac secret-writers
check "cluster mode + secretWriteNamespaces: no Secret writes in any ClusterRole" no_cluster_secret_writes secret-writers
render no-irsa-proof --set aws.proveIrsaByAssumingRole=false
check "aws.proveIrsaByAssumingRole=false: no ServiceAccount tokens in any role" no_token_requests no-irsa-proof

render no-leader-election --set replicas=1 --set leaderElection.enabled=false --set httpPort=9090
check "leader election off: no lease Role" no_lease_role no-leader-election
check "leader election off: AO_LEADER_ELECTION=false" env no-leader-election AO_LEADER_ELECTION=false
check "httpPort 9090: probes and args follow" probes no-leader-election 9090
render digest --set image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
check "image.digest replaces the tag" deployment_fields digest 2 \
  artifact-operator@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef 50m 64Mi 500m 256Mi

# ---- CRDs (rendered from files/crds/*.yaml; a fixture CRD in a copy of the chart) -------------
cp -r "$CHART_DIR" "$WORK/chart"
cp "$CHART_TESTS_DIR/fixtures/crd-example.artifacts.dev.yaml" "$WORK/chart/files/crds/"
FIXTURE_CRD="$CHART_TESTS_DIR/fixtures/crd-example.artifacts.dev.yaml"
crd_render() { render_chart "$WORK/chart" "$@"; } # name helm-template-args...
crd_render crds-default
check "crds.install: the CRD file rendered intact, with helm.sh/resource-policy: keep" crds crds-default "$FIXTURE_CRD" true
crd_render crds-no-keep --set crds.keep=false
check "crds.keep=false: no keep annotation" crds crds-no-keep "$FIXTURE_CRD" false
crd_render crds-off --set crds.install=false
check "crds.install=false: no CRDs" kinds crds-off \
  ServiceAccount=1 ClusterRole=1 ClusterRoleBinding=1 Role=1 RoleBinding=1 Service=1 Deployment=1

# ---- values the chart must reject --------------------------------------------------------------
expect_error "rejects --set replicas=foo (schema)" "at '/replicas': got string, want integer" \
  "$HELM" template "$RELEASE" "$CHART_DIR" --set replicas=foo
expect_error "rejects an unknown top-level key (schema)" "additional properties 'replica' not allowed" \
  "$HELM" template "$RELEASE" "$CHART_DIR" --set replica=3
expect_error "rejects an unknown nested key (schema)" "additional properties 'tga' not allowed" \
  "$HELM" template "$RELEASE" "$CHART_DIR" --set image.tga=1.0
expect_error "rejects log.format=xml (schema)" "/log/format" \
  "$HELM" template "$RELEASE" "$CHART_DIR" --set log.format=xml
expect_error "rejects a malformed serviceAccount.roleArn (schema)" "/serviceAccount/roleArn" \
  "$HELM" template "$RELEASE" "$CHART_DIR" --set serviceAccount.roleArn=my-role
expect_error "rejects an invalid aws.eksClusterName (schema)" "/aws/eksClusterName" \
  "$HELM" template "$RELEASE" "$CHART_DIR" --set 'aws.eksClusterName=ml cluster'
expect_error "rejects a privileged httpPort (schema)" "/httpPort" \
  "$HELM" template "$RELEASE" "$CHART_DIR" --set httpPort=80
expect_error "rejects an invalid namespace name (schema)" "/watchNamespaces" \
  "$HELM" template "$RELEASE" "$CHART_DIR" --set 'watchNamespaces={Team_A}'
expect_error "rejects rbac.namespaced without watchNamespaces" "requires watchNamespaces" \
  "$HELM" template "$RELEASE" "$CHART_DIR" --set rbac.namespaced=true
expect_error "rejects replicas 2 without leader election" "requires leaderElection.enabled" \
  "$HELM" template "$RELEASE" "$CHART_DIR" --set leaderElection.enabled=false --set replicas=2
expect_error "helm lint --strict fails on an unknown key too" "additional properties 'foo' not allowed" \
  "$HELM" lint --strict "$CHART_DIR" --set foo=bar

# ---- generated files are up to date ------------------------------------------------------------
if [[ -d "$REPO_ROOT/crds" ]]; then
  expect_ok "chart's files/crds match crds/ (sync-crds.sh --check)" bash "$CHART_TESTS_DIR/sync-crds.sh" --check
else
  # Until `artifact-operator crd` has written crds/, the chart must not carry stale copies.
  if ((n_crds == 0)); then pass "no crds/ yet and no CRD copies in the chart"
  else fail "no crds/ yet and no CRD copies in the chart" "found ${chart_crds[*]}"; fi
fi
expect_ok "deploy/ is up to date (render.sh --check)" bash "$CHART_TESTS_DIR/render.sh" --check
cp "$REPO_ROOT/deploy/artifact-operator.yaml" "$WORK/deploy.yaml"
check "deploy/artifact-operator.yaml: CRDs, then the Namespace, then the rest" manifest_order deploy "$n_crds"
check "deploy/artifact-operator.yaml: restricted securityContext" restricted deploy

finish
