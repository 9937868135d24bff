{{- define "iotenant.name" -}}iotenant-operator{{- end -}}

{{- define "iotenant.labels" -}}
app.kubernetes.io/name: {{ include "iotenant.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: iotenant
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "iotenant.selectorLabels" -}}
app.kubernetes.io/name: {{ include "iotenant.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* A label map as key=value,key=value (sorted), for an IOTENANT_..._SELECTOR variable. */}}
{{- define "iotenant.labelList" -}}
{{- $pairs := list -}}
{{- range $key, $value := . -}}{{- $pairs = append $pairs (printf "%s=%s" $key $value) -}}{{- end -}}
{{- join "," $pairs -}}
{{- end -}}

{{- /* The troubleshooting guide the alerts' runbook_url point into: this release's docs unless set. */ -}}
{{- define "iotenant.runbookBaseUrl" -}}
{{- .Values.runbookBaseUrl | default (printf "https://github.com/iotenant/iotenant/blob/v%s/docs/operate.md" .Chart.AppVersion) -}}
{{- end -}}

{{/*
The one iotenant image (operator, ingest, api, simulators): repository:tag, or repository@sha256:...
when the tag is a digest; the tag defaults to the chart's appVersion.
*/}}
{{- define "iotenant.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if hasPrefix "@" $tag -}}
{{- printf "%s%s" .Values.image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end }}

{{- /* The names of .Values.imagePullSecrets, comma-separated (an operator setting, and a YAML flow list). */ -}}
{{- define "iotenant.pullSecretNames" -}}
{{- $names := list -}}
{{- range . -}}{{- $names = append $names .name -}}{{- end -}}
{{- join "," $names -}}
{{- end -}}
