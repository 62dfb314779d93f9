{{- define "sygnal.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sygnal.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "sygnal.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The sygnal.yaml the pods run: the user's config with the listeners the chart exposes. */}}
{{- define "sygnal.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $_ := set $config "http" (merge (dict "bind_addresses" (list "0.0.0.0") "port" 5000) (default (dict) $config.http)) -}}
{{- $metrics := default (dict) $config.metrics -}}
{{- $_ := set $metrics "prometheus" (dict "enabled" true "address" "0.0.0.0" "port" (int .Values.metrics.port)) -}}
{{- $_ := set $config "metrics" $metrics -}}
{{- if .Values.redis.url -}}
{{- $dedup := default (dict) $config.dedup -}}
{{- if not (hasKey $dedup "redis_url") -}}
{{- $_ := set $dedup "redis_url" .Values.redis.url -}}
{{- end -}}
{{- $_ := set $config "dedup" $dedup -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}
