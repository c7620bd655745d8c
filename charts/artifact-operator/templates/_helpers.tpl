{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "artifact-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the prefix of every resource the chart creates. */}}
{{- define "artifact-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "artifact-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "artifact-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "artifact-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "artifact-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: artifact-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "artifact-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "artifact-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "artifact-operator.leaseName" -}}
{{- default (include "artifact-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "artifact-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Validation of combinations of values that values.schema.json cannot express. Included by the
Deployment so that it runs on every install and render.
*/}}
{{- define "artifact-operator.validate" -}}
{{- if and .Values.rbac.namespaced (empty .Values.watchNamespaces) }}
{{- fail "rbac.namespaced: true requires watchNamespaces: a Role can only grant access inside the namespaces it is created in" }}
{{- end }}
{{- if and (not .Values.leaderElection.enabled) (gt (int .Values.replicas) 1) }}
{{- fail "replicas > 1 requires leaderElection.enabled: without it every pod would reconcile the same objects" }}
{{- end }}
{{- end }}

{{/*
Rules every watched namespace needs, shared by the ClusterRole (cluster mode) and the per-namespace
Role (namespaced mode). Argument: a dict with "secretWrite" (bool): whether Secret create/patch is
part of this rule set (cluster mode passes false: Secret writes are never granted cluster-wide), and
"proveIrsa" (bool): whether the operator may request ServiceAccount tokens to assume IRSA roles.
*/}}
{{- define "artifact-operator.namespaceRules" -}}
- apiGroups: ["artifacts.dev"]
  resources: ["artifactstores"]
  # patch: only to add and remove the operator's finalizer.
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["artifacts.dev"]
  resources: ["stacks"]
  # patch: only to add and remove the finalizer that clears its key of artifact-repositories.
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["artifacts.dev"]
  resources: ["artifactstores/status", "stacks/status"]
  verbs: ["get", "patch"]
- apiGroups: [""]
  resources: ["configmaps"]
  # create + update: the ConfigMaps it owns; patch: a Stack's key of artifact-repositories (by
  # server-side apply); delete: a Stack's kfp-launcher, or an artifact-repositories it created,
  # once no Stack needs it.
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: [""]
  resources: ["secrets"]
{{- if .secretWrite }}
  # get/list/watch: the Secrets ArtifactStores reference; create + update: the owned Secrets (AWS
  # env-var names for key auth, a Stack's CA bundle for Argo's caSecret).
  verbs: ["get", "list", "watch", "create", "update", "patch"]
{{- else }}
  # Read only: Secret create/patch is granted per namespace (rbac.secretWriteNamespaces).
  verbs: ["get", "list", "watch"]
{{- end }}
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "list", "watch"]
{{- if .proveIrsa }}
# A short-lived token (audience sts.amazonaws.com) of the ServiceAccount an IRSA store or Stack
# names, to assume its role and prove access as its pods will; never stored or logged.
- apiGroups: [""]
  resources: ["serviceaccounts/token"]
  verbs: ["create"]
{{- end }}
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# A Stack's in-pod check (verification.inPod): its Job, and its pod's termination message.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "create", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
{{- end }}
