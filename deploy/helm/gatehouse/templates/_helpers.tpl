{{/* Names. */}}
{{- define "gatehouse.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gatehouse.fullname" -}}
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

{{- define "gatehouse.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gatehouse.labels" -}}
helm.sh/chart: {{ include "gatehouse.chart" . }}
{{ include "gatehouse.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "gatehouse.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gatehouse.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gatehouse.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gatehouse.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "gatehouse.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
An HCL string literal. toJson escapes quotes, backslashes and control characters the way HCL
reads them; "${" and "%{" are doubled so that HCL does not read them as templates.
*/}}
{{- define "gatehouse.hclString" -}}
{{- . | toString | replace "${" "$${" | replace "%{" "%%{" | toJson }}
{{- end }}

{{/* An HCL list of strings. */}}
{{- define "gatehouse.hclStrings" -}}
[{{ range $i, $s := . }}{{ if $i }}, {{ end }}{{ include "gatehouse.hclString" $s }}{{ end }}]
{{- end }}

{{/* A listener's limits block, from a map: numbers as numbers, anything else as a string. */}}
{{- define "gatehouse.hclLimits" -}}
{{- if . }}
  limits {
{{- range $k, $v := . }}
    {{ $k }} = {{ if or (kindIs "float64" $v) (kindIs "int" $v) (kindIs "int64" $v) }}{{ int64 $v }}{{ else }}{{ include "gatehouse.hclString" $v }}{{ end }}
{{- end }}
  }
{{- end }}
{{- end }}

{{/* TLS secrets per listener: the listener's own, else the chart-wide one; "" for none. */}}
{{- define "gatehouse.postgresTLSSecret" -}}
{{- default .Values.tls.existingSecret .Values.postgres.tls.existingSecret }}
{{- end }}
{{- define "gatehouse.kubernetesTLSSecret" -}}
{{- default .Values.tls.existingSecret .Values.kubernetes.tls.existingSecret }}
{{- end }}
{{- define "gatehouse.adminTLSSecret" -}}
{{- if not .Values.admin.insecurePlaintext }}
{{- default .Values.tls.existingSecret .Values.admin.tls.existingSecret }}
{{- end }}
{{- end }}

{{/* The probes' scheme: HTTPS when the admin listener has a certificate. */}}
{{- define "gatehouse.adminScheme" -}}
{{- if include "gatehouse.adminTLSSecret" . }}HTTPS{{ else }}HTTP{{ end }}
{{- end }}

{{/* The workload's kind: a StatefulSet keeps a volume per replica; a Deployment uses emptyDirs. */}}
{{- define "gatehouse.kind" -}}
{{- if .Values.persistence.enabled }}StatefulSet{{ else }}Deployment{{ end }}
{{- end }}

{{/*
Checks that mirror the gateway's own config validation, so that a release that could never start
fails at helm install/template instead, with the value to set.
*/}}
{{- define "gatehouse.validate" -}}
{{- if not (or .Values.postgres.enabled .Values.ssh.enabled .Values.kubernetes.enabled) }}
{{- fail "no protocol listener: enable at least one of postgres.enabled, ssh.enabled, kubernetes.enabled" }}
{{- end }}
{{- if and .Values.postgres.enabled (not (include "gatehouse.postgresTLSSecret" .)) }}
{{- fail "postgres: the listener needs TLS (the token is the password): set tls.existingSecret or postgres.tls.existingSecret to a kubernetes.io/tls Secret" }}
{{- end }}
{{- if and (not (include "gatehouse.adminTLSSecret" .)) (not .Values.admin.insecurePlaintext) }}
{{- fail "admin: the listener is not on loopback (the probes reach the pod's address), so it needs TLS: set tls.existingSecret or admin.tls.existingSecret, or admin.insecurePlaintext=true to accept plain HTTP" }}
{{- end }}
{{- $file := or .Values.bundle.file.existingConfigMap .Values.bundle.file.existingSecret }}
{{- if and .Values.bundle.url $file }}
{{- fail "bundle: set bundle.url or bundle.file (existingConfigMap or existingSecret), not both (set bundle.file.existingConfigMap=\"\" with a url)" }}
{{- end }}
{{- if not (or .Values.bundle.url $file) }}
{{- fail "bundle: set bundle.url, or bundle.file.existingConfigMap or bundle.file.existingSecret" }}
{{- end }}
{{- if and .Values.bundle.file.existingConfigMap .Values.bundle.file.existingSecret }}
{{- fail "bundle.file: set existingConfigMap or existingSecret, not both" }}
{{- end }}
{{- if and (not .Values.bundle.url) (or .Values.bundle.token.existingSecret .Values.bundle.ca.existingConfigMap) }}
{{- fail "bundle.token and bundle.ca apply to bundle.url only" }}
{{- end }}
{{- if not (or .Values.bundle.trustedKeys.existingConfigMap .Values.bundle.trustedKeys.existingSecret) }}
{{- fail "bundle.trustedKeys: name the existing ConfigMap or Secret holding the bundle signing public keys" }}
{{- end }}
{{- if and .Values.bundle.trustedKeys.existingConfigMap .Values.bundle.trustedKeys.existingSecret }}
{{- fail "bundle.trustedKeys: set existingConfigMap or existingSecret, not both" }}
{{- end }}
{{- if not .Values.bundle.trustedKeys.keys }}
{{- fail "bundle.trustedKeys.keys: list the key names (files) in the ConfigMap or Secret" }}
{{- end }}
{{- end }}
