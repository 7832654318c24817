{{- define "modelplane.name" -}}{{ .Release.Name }}{{- end -}}
{{- define "modelplane.labels" -}}
app.kubernetes.io/name: modelplane
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}
{{- define "modelplane.selector" -}}
app.kubernetes.io/name: modelplane
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "modelplane.workloadNamespace" -}}{{ default .Release.Namespace .Values.workloadNamespace }}{{- end -}}
