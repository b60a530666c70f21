{{/* Name of the chart, for labels. */}}
{{- define "mcpauth.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release-chart, unless the release name contains the chart name. */}}
{{- define "mcpauth.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mcpauth.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "mcpauth.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "mcpauth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mcpauth.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mcpauth.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mcpauth.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "mcpauth.secretName" -}}
{{- default (include "mcpauth.fullname" .) .Values.existingSecret -}}
{{- end -}}

{{- define "mcpauth.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Fails the render when a required value is missing or malformed. */}}
{{- define "mcpauth.validate" -}}
{{- $_ := required "publicURL is required: the external URL of the gateway (the OAuth callback is <publicURL>/v1/oauth/callback)" .Values.publicURL -}}
{{- if not .Values.existingSecret -}}
{{- $db := required "database.url is required (postgres://...), or set existingSecret" .Values.database.url -}}
{{- if not (hasPrefix "postgres" $db) -}}
{{- fail "database.url must be a postgres:// URL: replicas share one PostgreSQL" -}}
{{- end -}}
{{- $_ := required "redis.url is required (redis:// or rediss://), or set existingSecret" .Values.redis.url -}}
{{- $_ := required "masterKeys is required (mcpauthd new-master-key), or set existingSecret" .Values.masterKeys -}}
{{- $_ := required "callers is required (the callers file JSON), or set existingSecret" .Values.callers -}}
{{- end -}}
{{- if lt (int .Values.replicaCount) 1 -}}
{{- fail "replicaCount must be at least 1" -}}
{{- end -}}
{{- if and .Values.tls.clientCASecretName (not .Values.tls.secretName) -}}
{{- fail "tls.clientCASecretName needs tls.secretName: client certificates are verified on the gRPC port's TLS" -}}
{{- end -}}
{{- end -}}

{{/* Environment shared by the Deployment and the migration Job. */}}
{{- define "mcpauth.env" -}}
- name: MCPAUTH_DATABASE_URL
  valueFrom:
    secretKeyRef: {name: {{ include "mcpauth.secretName" . }}, key: database-url}
- name: MCPAUTH_REDIS_URL
  valueFrom:
    secretKeyRef: {name: {{ include "mcpauth.secretName" . }}, key: redis-url}
- name: MCPAUTH_MASTER_KEYS
  valueFrom:
    secretKeyRef: {name: {{ include "mcpauth.secretName" . }}, key: master-keys}
{{- end -}}

{{- define "mcpauth.scheme" -}}
{{- if .Values.tls.secretName -}}HTTPS{{- else -}}HTTP{{- end -}}
{{- end -}}
