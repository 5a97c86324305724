{{/* gateway.hcl, rendered from the values. */}}
{{- define "gatehouse.gatewayHCL" -}}
# gateway.hcl, rendered by the gatehouse Helm chart (release {{ .Release.Name }}).
# Every setting: gatehouse gateway --help. Secrets appear only as references (env:NAME, file:/path).

data_dir = "/var/lib/gatehouse"
{{- if .Values.postgres.enabled }}

postgres {
  listen   = "0.0.0.0:{{ .Values.postgres.port }}"
  tls_cert = "/etc/gatehouse/tls/postgres/tls.crt"
  tls_key  = "/etc/gatehouse/tls/postgres/tls.key"
{{- include "gatehouse.hclLimits" .Values.postgres.limits }}
}
{{- end }}
{{- if .Values.ssh.enabled }}

ssh {
  listen = "0.0.0.0:{{ .Values.ssh.port }}"
{{- if .Values.ssh.hostKey.existingSecret }}
  host_key = {{ include "gatehouse.hclString" (printf "/etc/gatehouse/ssh/%s" .Values.ssh.hostKey.key) }}
{{- end }}
  record_shell_input = {{ .Values.ssh.recordShellInput }}
{{- if not (kindIs "invalid" .Values.ssh.recordLimit) }}
  record_limit = {{ int64 .Values.ssh.recordLimit }}
{{- end }}
{{- include "gatehouse.hclLimits" .Values.ssh.limits }}
}
{{- end }}
{{- if .Values.kubernetes.enabled }}

kubernetes {
  listen = "0.0.0.0:{{ .Values.kubernetes.port }}"
{{- if include "gatehouse.kubernetesTLSSecret" . }}
  tls_cert = "/etc/gatehouse/tls/kubernetes/tls.crt"
  tls_key  = "/etc/gatehouse/tls/kubernetes/tls.key"
{{- end }}
{{- if not (kindIs "invalid" .Values.kubernetes.recordLimit) }}
  record_limit = {{ int64 .Values.kubernetes.recordLimit }}
{{- end }}
{{- include "gatehouse.hclLimits" .Values.kubernetes.limits }}
}
{{- end }}

bundle {
{{- if .Values.bundle.url }}
  url = {{ include "gatehouse.hclString" .Values.bundle.url }}
{{- if .Values.bundle.ca.existingConfigMap }}
  ca_file = {{ include "gatehouse.hclString" (printf "/etc/gatehouse/bundle-ca/%s" .Values.bundle.ca.key) }}
{{- end }}
{{- if .Values.bundle.token.existingSecret }}
  token = {{ include "gatehouse.hclString" (printf "file:/etc/gatehouse/bundle-token/%s" .Values.bundle.token.key) }}
{{- end }}
{{- else }}
  file = {{ include "gatehouse.hclString" (printf "/etc/gatehouse/bundle/%s" .Values.bundle.file.key) }}
{{- end }}
{{- $keys := list }}
{{- range .Values.bundle.trustedKeys.keys }}
{{- $keys = append $keys (printf "/etc/gatehouse/trusted-keys/%s" .) }}
{{- end }}
  trusted_keys  = {{ include "gatehouse.hclStrings" $keys }}
  poll_interval = {{ include "gatehouse.hclString" .Values.bundle.pollInterval }}
}

admin {
  listen = "0.0.0.0:{{ .Values.admin.port }}"
{{- if include "gatehouse.adminTLSSecret" . }}
  tls_cert = "/etc/gatehouse/tls/admin/tls.crt"
  tls_key  = "/etc/gatehouse/tls/admin/tls.key"
{{- else }}
  insecure_plaintext = true
{{- end }}
{{- if .Values.admin.adminGroups }}
  admin_groups = {{ include "gatehouse.hclStrings" .Values.admin.adminGroups }}
{{- end }}
{{- if not (kindIs "invalid" .Values.admin.readyDiskFree) }}
  ready_disk_free = {{ int64 .Values.admin.readyDiskFree }}
{{- end }}
{{- if .Values.admin.maxBundleAge }}
  max_bundle_age = {{ include "gatehouse.hclString" .Values.admin.maxBundleAge }}
{{- end }}
}
{{- if .Values.state.existingSecret }}

state {
  postgres = "env:GATEHOUSE_STATE_DSN"
{{- if .Values.state.rowKey }}
  key      = "env:GATEHOUSE_STATE_KEY"
{{- end }}
}
{{- end }}

log {
  level  = {{ include "gatehouse.hclString" .Values.log.level }}
  format = {{ include "gatehouse.hclString" .Values.log.format }}
}
{{- if .Values.clockSkew }}

auth {
  clock_skew = {{ include "gatehouse.hclString" .Values.clockSkew }}
}
{{- end }}
{{- if .Values.extraConfig }}

{{ .Values.extraConfig }}
{{- end }}
{{- end }}
