{{/*
Names and labels. Selector labels are only name and instance: selectors are
immutable, so nothing that changes with a release (the chart version) is in
them.
*/}}
{{- define "leasehold.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "leasehold.fullname" -}}
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

{{- define "leasehold.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "leasehold.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride }}
{{- end }}

{{- define "leasehold.selectorLabels" -}}
app.kubernetes.io/name: {{ include "leasehold.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "leasehold.labels" -}}
helm.sh/chart: {{ include "leasehold.chart" . }}
{{ include "leasehold.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: leasehold
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The example StatefulSet's name, also its pods' name prefix. */}}
{{- define "leasehold.statefulSetName" -}}
{{- include "leasehold.fullname" . }}
{{- end }}

{{/* The example's headless Service. */}}
{{- define "leasehold.headlessServiceName" -}}
{{- printf "%s-peers" (include "leasehold.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* A namespace for an optional monitoring object. */}}
{{- define "leasehold.monitoringNamespace" -}}
{{- default (include "leasehold.namespace" .root) .namespace }}
{{- end }}

{{/* The leasehold image reference: digest, else tag, else appVersion. */}}
{{- define "leasehold.image" -}}
{{- $image := .values.image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .appVersion $image.tag) }}
{{- end }}
{{- end }}
