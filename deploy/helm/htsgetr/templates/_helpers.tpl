{{- define "htsgetr.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "htsgetr.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "htsgetr.selectorLabels" -}}
app.kubernetes.io/name: {{ include "htsgetr.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "htsgetr.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "htsgetr.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "htsgetr.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "htsgetr.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "htsgetr.scheme" -}}
{{- if .Values.tls.enabled }}HTTPS{{ else }}HTTP{{ end }}
{{- end }}

{{/* Host headers ticket urls may name when no base url is set: the Service's cluster
     names (any port) and the ingress hosts. */}}
{{- define "htsgetr.allowedHosts" -}}
{{- $svc := include "htsgetr.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- $hosts := list (printf "%s:*" $svc) (printf "%s.%s:*" $svc $ns) (printf "%s.%s.svc:*" $svc $ns) (printf "%s.%s.svc.cluster.local:*" $svc $ns) "localhost:*" "127.0.0.1:*" -}}
{{- if .Values.ingress.enabled }}{{ range .Values.ingress.hosts }}{{ $hosts = append $hosts . }}{{ end }}{{ end -}}
{{- toJson $hosts -}}
{{- end }}

{{- define "htsgetr.baseUrl" -}}
{{- if .Values.baseUrl }}{{ .Values.baseUrl }}
{{- else if and .Values.ingress.enabled .Values.ingress.hosts }}https://{{ first .Values.ingress.hosts }}
{{- end }}
{{- end }}

{{/* The data server's accel with the nginx sidecar: nginx-direct when nginx checks url
     signatures itself. */}}
{{- define "htsgetr.accel" -}}
{{- if .Values.nginx.direct }}nginx-direct{{ else }}nginx{{ end }}
{{- end }}

{{/* HTSGET_DATA_URL_SECRET from secrets.dataUrlSecret (htsgetr, and the nginx config
     writer for nginx.direct: both must sign and check with the same secret). */}}
{{- define "htsgetr.dataUrlSecretEnv" -}}
{{- with .Values.secrets.dataUrlSecret }}
{{- if .name }}
- name: HTSGET_DATA_URL_SECRET
  valueFrom:
    secretKeyRef: {name: {{ .name | quote }}, key: {{ .key | quote }}}
{{- end }}
{{- end }}
{{- end }}
