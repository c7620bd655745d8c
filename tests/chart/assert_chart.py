"""Assertions on a rendered chart, one named check per call (driven by test-chart.sh).

    python3 assert_chart.py CHECK RENDERED.yaml [ARG...]

Exits 0 when the check holds; otherwise prints what is wrong and exits 1.
"""

import sys

import yaml

RELEASE_NAMESPACE = "artifact-operator"
NAME = "artifact-operator"

# The operator's permissions in every namespace it watches (the design in the brief), as
# (apiGroup, resource) -> verbs. "patch" on artifactstores and stacks is for their finalizers.
WATCHED_NAMESPACE_RULES = {
    ("artifacts.dev", "artifactstores"): {"get", "list", "watch", "patch"},
    ("artifacts.dev", "stacks"): {"get", "list", "watch", "patch"},
    ("artifacts.dev", "artifactstores/status"): {"get", "patch"},
    ("artifacts.dev", "stacks/status"): {"get", "patch"},
    ("", "configmaps"): {"get", "list", "watch", "create", "update", "patch", "delete"},
    ("", "secrets"): {"get", "list", "watch"},
    ("", "serviceaccounts"): {"get", "list", "watch"},
    # A token of an IRSA store's ServiceAccount, to assume its role (aws.proveIrsaByAssumingRole).
    ("", "serviceaccounts/token"): {"create"},
    ("events.k8s.io", "events"): {"create", "patch"},
    # A Stack's in-pod check (verification.inPod): its Job, and the termination message of its pod.
    ("batch", "jobs"): {"get", "create", "delete"},
    ("", "pods"): {"list"},
}
NAMESPACED_ROLE_RULES = dict(WATCHED_NAMESPACE_RULES)
NAMESPACED_ROLE_RULES[("", "secrets")] = {"get", "list", "watch", "create", "update", "patch"}
# Dry-run creates stand in for reading the CRD, which a Role cannot grant.
NAMESPACED_ROLE_RULES[("artifacts.dev", "artifactstores")] = {"get", "list", "watch", "patch", "create"}
CLUSTER_ROLE_RULES = dict(WATCHED_NAMESPACE_RULES)
CLUSTER_ROLE_RULES[("", "namespaces")] = {"get"}
CLUSTER_ROLE_RULES[("apiextensions.k8s.io", "customresourcedefinitions")] = {"get"}
CRD_NAMES = {"artifactstores.artifacts.dev", "stacks.artifacts.dev"}
WRITE_VERBS = {"create", "patch", "update", "delete", "deletecollection", "*"}


class CheckFailed(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def objects(docs, kind, namespace=None):
    return [
        d for d in docs
        if d["kind"] == kind and (namespace is None or d["metadata"].get("namespace") == namespace)
    ]


def one(docs, kind, namespace=None, name=None):
    found = [d for d in objects(docs, kind, namespace) if name is None or d["metadata"]["name"] == name]
    expect(len(found) == 1, f"expected one {kind} (namespace {namespace}, name {name}), found {len(found)}")
    return found[0]


def deployment(docs):
    return one(docs, "Deployment", RELEASE_NAMESPACE)


def container(docs):
    containers = deployment(docs)["spec"]["template"]["spec"]["containers"]
    expect(len(containers) == 1, f"expected one container, found {len(containers)}")
    return containers[0]


def flatten_rules(rules):
    """(apiGroup, resource) -> verbs, plus resourceNames and nonResourceURLs seen."""
    flat, resource_names, non_resource = {}, {}, {}
    for rule in rules:
        if "nonResourceURLs" in rule:
            for url in rule["nonResourceURLs"]:
                non_resource.setdefault(url, set()).update(rule["verbs"])
            continue
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                flat.setdefault((group, resource), set()).update(rule["verbs"])
                if "resourceNames" in rule:
                    resource_names.setdefault((group, resource), set()).update(rule["resourceNames"])
    return flat, resource_names, non_resource


def same_rules(actual, expected, what):
    for key in sorted(set(actual) | set(expected)):
        expect(actual.get(key) == expected.get(key),
               f"{what}: {key[0] or 'core'}/{key[1]}: got {sorted(actual.get(key, []))}, "
               f"want {sorted(expected.get(key, []))}")


def check_role_binding(docs, namespace, role_kind, role_name):
    kind = "ClusterRoleBinding" if role_kind == "ClusterRole" else "RoleBinding"
    binding = one(docs, kind, namespace, role_name)
    expect(binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role_name},
           f"{kind} {role_name}: roleRef {binding['roleRef']}")
    sa = one(docs, "ServiceAccount", RELEASE_NAMESPACE)["metadata"]["name"]
    expect(binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": RELEASE_NAMESPACE}],
           f"{kind} {role_name}: subjects {binding['subjects']}")


# ---- checks -----------------------------------------------------------------------------------

def kinds(docs, *expected):
    """The rendered kinds, as "Kind=count" arguments (kinds not listed must not appear)."""
    want = {k: int(n) for k, n in (a.split("=") for a in expected)}
    got = {}
    for d in docs:
        got[d["kind"]] = got.get(d["kind"], 0) + 1
    expect(got == want, f"kinds: got {got}, want {want}")
    for d in docs:
        namespaced = d["kind"] not in {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Namespace"}
        expect(namespaced == ("namespace" in d["metadata"]),
               f"{d['kind']} {d['metadata']['name']}: namespace set wrongly")


def restricted(docs):
    """The pod meets the Pod Security Standard "restricted" (and the brief's exact fields)."""
    pod = deployment(docs)["spec"]["template"]["spec"]
    psc = pod.get("securityContext", {})
    expect(psc.get("runAsNonRoot") is True, "pod runAsNonRoot is not true")
    expect(psc.get("runAsUser") == 65532, "pod runAsUser is not 65532")
    expect(psc.get("seccompProfile") == {"type": "RuntimeDefault"}, "pod seccompProfile is not RuntimeDefault")
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        expect(not pod.get(field), f"pod sets {field}")
    for volume in pod.get("volumes", []):
        allowed = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                   "projected", "secret"}
        expect(set(volume) - {"name"} <= allowed, f"volume {volume['name']} is of a type restricted forbids")
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c.get("securityContext", {})
        expect(sc.get("runAsNonRoot") is True, f"{c['name']}: runAsNonRoot is not true")
        expect(sc.get("runAsUser") == 65532, f"{c['name']}: runAsUser is not 65532")
        expect(sc.get("readOnlyRootFilesystem") is True, f"{c['name']}: readOnlyRootFilesystem is not true")
        expect(sc.get("allowPrivilegeEscalation") is False, f"{c['name']}: allowPrivilegeEscalation is not false")
        expect(not sc.get("privileged"), f"{c['name']}: privileged")
        expect(sc.get("capabilities") == {"drop": ["ALL"]}, f"{c['name']}: capabilities {sc.get('capabilities')}")
        expect(sc.get("seccompProfile") == {"type": "RuntimeDefault"}, f"{c['name']}: seccompProfile")
        for port in c.get("ports", []):
            expect("hostPort" not in port, f"{c['name']}: hostPort")


def probes(docs, port="8080"):
    c = container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    expect(ports == {"http": int(port)}, f"container ports {ports}")
    expect(c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}, f"liveness {c['livenessProbe']}")
    expect(c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}, f"readiness {c['readinessProbe']}")
    expect(f"--http-addr=0.0.0.0:{port}" in c["args"], f"--http-addr not on port {port}: {c['args']}")


def pod_namespace_env(docs):
    env = {e["name"]: e for e in container(docs)["env"]}
    expect("POD_NAMESPACE" in env, "no POD_NAMESPACE env")
    expect(env["POD_NAMESPACE"].get("valueFrom") == {"fieldRef": {"fieldPath": "metadata.namespace"}},
           f"POD_NAMESPACE is not from the downward API: {env['POD_NAMESPACE']}")


def args(docs, *expected):
    got = container(docs)["args"]
    expect(got == list(expected), f"args: got {got}, want {list(expected)}")


def env(docs, *expected):
    """NAME=value arguments that must be in the container's env, with literal values."""
    got = {e["name"]: e.get("value") for e in container(docs)["env"]}
    for item in expected:
        name, value = item.split("=", 1)
        expect(got.get(name) == value, f"env {name}: got {got.get(name)!r}, want {value!r}")


def no_env(docs, *names):
    got = {e["name"] for e in container(docs)["env"]}
    expect(not (got & set(names)), f"unexpected env {sorted(got & set(names))}")


def deployment_fields(docs, replicas, image, cpu_request, memory_request, cpu_limit, memory_limit):
    d = deployment(docs)
    expect(d["spec"]["replicas"] == int(replicas), f"replicas {d['spec']['replicas']}, want {replicas}")
    c = container(docs)
    expect(c["image"] == image, f"image {c['image']}, want {image}")
    want = {"requests": {"cpu": cpu_request, "memory": memory_request},
            "limits": {"cpu": cpu_limit, "memory": memory_limit}}
    got = {k: {r: str(v) for r, v in c["resources"].get(k, {}).items()} for k in ("requests", "limits")}
    expect(got == want, f"resources {got}, want {want}")
    pod_labels = d["spec"]["template"]["metadata"]["labels"]
    selector = d["spec"]["selector"]["matchLabels"]
    expect(selector.items() <= pod_labels.items(), "the Deployment's selector does not match its pods")


def cluster_rbac(docs):
    role = one(docs, "ClusterRole", None, NAME)
    flat, names, non_resource = flatten_rules(role["rules"])
    same_rules(flat, CLUSTER_ROLE_RULES, "ClusterRole")
    expect(names == {("apiextensions.k8s.io", "customresourcedefinitions"): CRD_NAMES},
           f"ClusterRole resourceNames {names}")
    crd_rules = [r for r in role["rules"] if "customresourcedefinitions" in r.get("resources", [])]
    expect(all(set(r.get("resourceNames", [])) == CRD_NAMES for r in crd_rules),
           "a CRD rule is not limited to the operator's CRDs")
    expect(non_resource == {"/.well-known/openid-configuration": {"get"}}, f"nonResourceURLs {non_resource}")
    check_role_binding(docs, None, "ClusterRole", NAME)


def no_cluster_rbac(docs):
    for kind in ("ClusterRole", "ClusterRoleBinding"):
        found = [d["metadata"]["name"] for d in objects(docs, kind)]
        expect(not found, f"{kind} rendered in namespaced mode: {found}")


def no_cluster_secret_writes(docs):
    for role in objects(docs, "ClusterRole"):
        for rule in role["rules"]:
            if "nonResourceURLs" in rule:
                continue
            core = set(rule.get("apiGroups", [])) & {"", "*"}
            secrets = set(rule.get("resources", [])) & {"secrets", "*"}
            writes = set(rule["verbs"]) & WRITE_VERBS
            expect(not (core and secrets and writes),
                   f"ClusterRole {role['metadata']['name']} grants secrets {sorted(writes)}")


def no_token_requests(docs):
    for role in objects(docs, "ClusterRole") + objects(docs, "Role"):
        for rule in role["rules"]:
            expect("serviceaccounts/token" not in rule.get("resources", []),
                   f"{role['kind']} {role['metadata']['name']} grants ServiceAccount tokens")


def no_wildcards(docs):
    for role in objects(docs, "ClusterRole") + objects(docs, "Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "nonResourceURLs"):
                expect("*" not in rule.get(field, []), f"{role['kind']} {role['metadata']['name']}: * in {field}")


def namespaced_rbac(docs, *namespaces):
    roles = objects(docs, "Role")
    watched = [r for r in roles if r["metadata"]["namespace"] != RELEASE_NAMESPACE]
    expect(sorted(r["metadata"]["namespace"] for r in watched) == sorted(namespaces),
           f"Roles outside the release namespace: {[r['metadata']['namespace'] for r in watched]}, "
           f"want one in each of {list(namespaces)}")
    for namespace in namespaces:
        role = one(docs, "Role", namespace, NAME)
        flat, names, non_resource = flatten_rules(role["rules"])
        same_rules(flat, NAMESPACED_ROLE_RULES, f"Role {namespace}/{NAME}")
        expect(not names and not non_resource, f"Role {namespace}: resourceNames or nonResourceURLs")
        check_role_binding(docs, namespace, "Role", NAME)


def secret_writer_roles(docs, *namespaces):
    name = f"{NAME}-secret-writer"
    found = sorted(r["metadata"]["namespace"] for r in objects(docs, "Role") if r["metadata"]["name"] == name)
    expect(found == sorted(namespaces), f"secret-writer Roles in {found}, want {sorted(namespaces)}")
    for namespace in namespaces:
        flat, _, _ = flatten_rules(one(docs, "Role", namespace, name)["rules"])
        same_rules(flat, {("", "secrets"): {"create", "update", "patch"}}, f"Role {namespace}/{name}")
        check_role_binding(docs, namespace, "Role", name)


def lease_role(docs):
    name = f"{NAME}-leader-election"
    role = one(docs, "Role", RELEASE_NAMESPACE, name)
    flat, names, _ = flatten_rules(role["rules"])
    same_rules(flat, {("coordination.k8s.io", "leases"): {"get", "create", "update"}}, "lease Role")
    expect(names == {("coordination.k8s.io", "leases"): {NAME}}, f"lease resourceNames {names}")
    for rule in role["rules"]:
        if set(rule["verbs"]) & {"get", "update"}:
            expect(rule.get("resourceNames") == [NAME], "get/update on leases is not limited to the lease")
    check_role_binding(docs, RELEASE_NAMESPACE, "Role", name)
    expect(f"--lease-name={NAME}" in container(docs)["args"], "--lease-name does not match the Role")


def no_lease_role(docs):
    found = [r["metadata"]["name"] for r in objects(docs, "Role") if "leases" in str(r["rules"])]
    expect(not found, f"lease Role rendered: {found}")


def role_arn(docs, arn=""):
    sa = one(docs, "ServiceAccount", RELEASE_NAMESPACE)
    annotations = sa["metadata"].get("annotations") or {}
    if arn:
        expect(annotations.get("eks.amazonaws.com/role-arn") == arn, f"ServiceAccount annotations {annotations}")
    else:
        expect("eks.amazonaws.com/role-arn" not in annotations, f"role-arn annotation by default: {annotations}")
    pod = deployment(docs)["spec"]["template"]["spec"]
    expect(pod["serviceAccountName"] == sa["metadata"]["name"], "the pod does not use the ServiceAccount")


def metrics_service(docs):
    service = one(docs, "Service", RELEASE_NAMESPACE)
    ports = service["spec"]["ports"]
    expect(len(ports) == 1 and ports[0]["name"] == "http" and ports[0]["targetPort"] == "http", f"ports {ports}")
    labels = deployment(docs)["spec"]["template"]["metadata"]["labels"]
    expect(service["spec"]["selector"].items() <= labels.items(), "the Service does not select the pods")


def service_monitor(docs, interval, label):
    sm = one(docs, "ServiceMonitor", RELEASE_NAMESPACE)
    expect(sm["apiVersion"] == "monitoring.coreos.com/v1", f"apiVersion {sm['apiVersion']}")
    endpoints = sm["spec"]["endpoints"]
    expect(len(endpoints) == 1, f"endpoints {endpoints}")
    expect(endpoints[0]["port"] == "http" and endpoints[0]["path"] == "/metrics", f"endpoint {endpoints[0]}")
    expect(endpoints[0]["interval"] == interval, f"interval {endpoints[0]['interval']}")
    key, value = label.split("=")
    expect(sm["metadata"]["labels"].get(key) == value, f"labels {sm['metadata']['labels']}")
    service = one(docs, "Service", RELEASE_NAMESPACE)
    expect(sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items(),
           "the ServiceMonitor does not select the metrics Service")
    expect(sm["spec"]["namespaceSelector"] == {"matchNames": [RELEASE_NAMESPACE]}, "namespaceSelector")


def crds(docs, fixture, keep):
    """The chart renders CRD files as they are, plus labels and (keep=true) the keep annotation."""
    with open(fixture) as f:
        source = yaml.safe_load(f)
    crd = one(docs, "CustomResourceDefinition", None, source["metadata"]["name"])
    expect(crd["spec"] == source["spec"], "the CRD's spec differs from the file")
    annotations = crd["metadata"].get("annotations") or {}
    for k, v in (source["metadata"].get("annotations") or {}).items():
        expect(annotations.get(k) == v, f"annotation {k} of the file was lost")
    if keep == "true":
        expect(annotations.get("helm.sh/resource-policy") == "keep", f"no keep annotation: {annotations}")
    else:
        expect("helm.sh/resource-policy" not in annotations, f"keep annotation with crds.keep=false")
    expect(crd["metadata"]["labels"].get("app.kubernetes.io/name") == NAME, "CRD labels")


def manifest_order(docs, crd_count):
    """deploy/artifact-operator.yaml: the CRDs, then the Namespace, then the rest."""
    kinds_in_order = [d["kind"] for d in docs]
    n = int(crd_count)
    expect(kinds_in_order[:n] == ["CustomResourceDefinition"] * n, f"first kinds {kinds_in_order[:n + 1]}")
    expect(kinds_in_order[n:n + 1] == ["Namespace"], f"no Namespace right after the CRDs: {kinds_in_order}")
    expect("CustomResourceDefinition" not in kinds_in_order[n:], "a CRD after the Namespace")
    namespace = docs[n]
    expect(namespace["metadata"]["name"] == RELEASE_NAMESPACE, "Namespace name")
    expect(namespace["metadata"]["labels"].get("pod-security.kubernetes.io/enforce") == "restricted",
           "Namespace does not enforce restricted")
    for d in docs[n + 1:]:
        if "namespace" in d["metadata"] and d["kind"] not in {"Role", "RoleBinding"}:
            expect(d["metadata"]["namespace"] == RELEASE_NAMESPACE, f"{d['kind']} in {d['metadata']['namespace']}")


CHECKS = {f.__name__: f for f in (
    kinds, restricted, probes, pod_namespace_env, args, env, no_env, deployment_fields, cluster_rbac,
    no_cluster_rbac, no_cluster_secret_writes, no_token_requests, no_wildcards, namespaced_rbac, secret_writer_roles,
    lease_role, no_lease_role, role_arn, metrics_service, service_monitor, crds, manifest_order,
)}


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in CHECKS:
        print(f"usage: {sys.argv[0]} {{{'|'.join(CHECKS)}}} RENDERED.yaml [ARG...]", file=sys.stderr)
        return 2
    try:
        CHECKS[sys.argv[1]](load(sys.argv[2]), *sys.argv[3:])
    except CheckFailed as e:
        print(e)
        return 1
    except (KeyError, IndexError, TypeError, AttributeError) as e:
        print(f"unexpected shape: {type(e).__name__}: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
