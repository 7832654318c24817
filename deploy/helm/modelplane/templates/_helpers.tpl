{{/*
Names and labels shared by every template. The chart's own objects never carry
app.kubernetes.io/managed-by: modelplane: that label marks the workloads the service itself
creates, and the service lists labelled objects it has no document for as "unmanaged".
*/}}
{{- define "modelplane.name" -}}{{ .Release.Name }}{{- end -}}
{{- define "modelplane.labels" -}}
app.kubernetes.io/name: modelplane
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
{{- end -}}
{{- define "modelplane.selector" -}}
app.kubernetes.io/name: modelplane
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "modelplane.workloadNamespace" -}}{{ default .Release.Namespace .Values.workloadNamespace }}{{- end -}}
{{/* Cluster-scoped names carry the release namespace: two releases of the same name in
different namespaces must not share (or fight over) one ClusterRole. */}}
{{- define "modelplane.clusterName" -}}{{ printf "%s-%s" .Release.Namespace .Release.Name }}{{- end -}}
{{- define "modelplane.image" -}}{{ printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}{{- end -}}
