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
