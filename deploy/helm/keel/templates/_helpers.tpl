{{- define "keel.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "keel.headless" -}}
{{- printf "%s-headless" (include "keel.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "keel.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "keel.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "keel.secretName" -}}
{{- default (printf "%s-cluster-secret" (include "keel.fullname" .)) .Values.clusterSecret.existingSecret -}}
{{- end -}}

{{- define "keel.serviceAccount" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "keel.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* id@host:port of every node's Raft listener, node id = ordinal + 1. */}}
{{/* The pods forming the controller quorum at the first start (at most every pod). */}}
{{- define "keel.voters" -}}
{{- min (int .Values.replicas) (int .Values.controllerVoters) -}}
{{- end -}}

{{- define "keel.peers" -}}
{{- $full := include "keel.fullname" . -}}
{{- $headless := include "keel.headless" . -}}
{{- $ns := .Release.Namespace -}}
{{- $port := .Values.ports.raft -}}
{{- $peers := list -}}
{{- range $i := until (int (include "keel.voters" .)) -}}
{{- $peers = append $peers (printf "%d@%s-%d.%s.%s.svc.cluster.local:%d" (add $i 1) $full $i $headless $ns (int $port)) -}}
{{- end -}}
{{- join "," $peers -}}
{{- end -}}

{{- define "keel.httpScheme" -}}
{{- if and .Values.tls.enabled .Values.tls.http -}}HTTPS{{- else -}}HTTP{{- end -}}
{{- end -}}
