{{/* Chart name, truncated to a valid label value. */}}
{{- define "modelpilot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-modelpilot, or the release name when it already contains the chart name. */}}
{{- define "modelpilot.fullname" -}}
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

{{- define "modelpilot.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "modelpilot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelpilot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "modelpilot.labels" -}}
helm.sh/chart: {{ include "modelpilot.chart" . }}
{{ include "modelpilot.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: modelpilot
{{- end }}

{{- define "modelpilot.serviceAccountName" -}}
{{- default (include "modelpilot.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "modelpilot.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "modelpilot.servingImage" -}}
{{- printf "%s:%s" .Values.servingImage.repository (default .Chart.AppVersion .Values.servingImage.tag) }}
{{- end }}

{{/* The namespaces watched in namespace scope (the release namespace when none are listed). */}}
{{- define "modelpilot.watchNamespaces" -}}
{{- if .Values.watchNamespaces }}
{{- join "," .Values.watchNamespaces }}
{{- else }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}

{{/* kopf peering name: shared by the replicas when there is more than one; empty runs standalone. */}}
{{- define "modelpilot.peering" -}}
{{- if gt (int .Values.replicas) 1 }}modelpilot{{ end }}
{{- end }}

{{/*
Namespaced permissions the operator needs wherever it watches ModelVersions and ABTests.
Used by the ClusterRole (scope: cluster) and by each namespace's Role (scope: namespace).
No wildcards, no pods, no pods/exec; Secrets are `get` only (the credentials Secret a
ModelVersion names; RBAC cannot restrict by a name chosen at run time).
*/}}
{{- define "modelpilot.namespacedRules" -}}
# ModelVersions and ABTests: read and watch; the operator writes only their status (no annotation, no spec).
- apiGroups: ["modelpilot.io"]
  resources: ["modelversions", "abtests"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["modelpilot.io"]
  resources: ["modelversions/status", "abtests/status"]
  verbs: ["patch", "update"]
# The serving Deployments (stable and canary) and their Services, server-side applied.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Their pods, read only: why a serving pod does not become ready (its termination message, a crash loop,
# an image that cannot be pulled) goes into the ModelVersion's Ready condition. No exec, no logs.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# Optional autoscaling and disruption budgets per ModelVersion.
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# ABTest routing through the Gateway API.
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Mirroring on NGINX Gateway Fabric (only rendered for a Gateway of an NGF class): one SnippetsFilter per
# mirrored Service, server-side applied, deleted when mirroring ends.
- apiGroups: ["gateway.nginx.org"]
  resources: ["snippetsfilters"]
  verbs: ["get", "create", "patch", "delete"]
# Events about ModelVersions and ABTests (the operator's and kopf's).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# MLflow credentials named by spec.registry.credentialsSecret: read one by name, never list or watch.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}

{{/* Cluster-scoped reads kopf needs in both scopes: CRD and namespace discovery. */}}
{{- define "modelpilot.frameworkRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}

{{/*
Cluster-wide reads in both scopes: the mirror style of a route's parent Gateway (its GatewayClass's
controllerName). A Gateway usually lives in a namespace of its own (e.g. gateway-system), outside the
watched ones, and GatewayClasses are cluster-scoped. Read by name only (get), cached by the operator.
*/}}
{{- define "modelpilot.gatewayReadRules" -}}
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["gateways", "gatewayclasses"]
  verbs: ["get"]
{{- end }}

{{- define "modelpilot.peeringVerbs" -}}
verbs: ["get", "list", "watch", "patch", "create"]
{{- end }}
