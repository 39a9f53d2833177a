{{/*
Names, labels and the pieces every Sous pod shares.
*/}}

{{- define "sous.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-<chart>, or the release name alone when it already contains the chart name. */}}
{{- define "sous.fullname" -}}
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

{{- define "sous.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of one component's objects: sous.componentName (dict "root" $ "component" "api"). */}}
{{- define "sous.componentName" -}}
{{- printf "%s-%s" (include "sous.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sous.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sous.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sous.labels" -}}
helm.sh/chart: {{ include "sous.chart" . }}
{{ include "sous.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sous
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of one component: sous.componentLabels (dict "root" $ "component" "api"). */}}
{{- define "sous.componentLabels" -}}
{{ include "sous.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "sous.componentSelectorLabels" -}}
{{ include "sous.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "sous.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sous.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "sous.image" -}}
{{- $tag := .image.tag | default .root.Chart.AppVersion | toString }}
{{- if eq $tag "latest" }}
{{- fail (printf "%s: image tag \"latest\" is not reproducible; pin a version" .image.repository) }}
{{- end }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}

{{- define "sous.secretName" -}}
{{- default (printf "%s-connections" (include "sous.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{/* Whether the chart creates the connections Secret: only from values, never empty. */}}
{{- define "sous.createSecret" -}}
{{- $s := .Values.secrets }}
{{- if and (not $s.existingSecret) (or $s.brokerUrl $s.resultBackend $s.databaseUrl $s.smtpPassword $s.rabbitmqManagementUrl) }}true{{ end }}
{{- end }}

{{/* Stops the render when the pods would have no broker, result backend or database. */}}
{{- define "sous.checkSecrets" -}}
{{- $s := .Values.secrets }}
{{- if not $s.existingSecret }}
{{- if not (and $s.brokerUrl $s.resultBackend $s.databaseUrl) }}
{{- fail "set secrets.existingSecret, or secrets.brokerUrl, secrets.resultBackend and secrets.databaseUrl" }}
{{- end }}
{{- if and .Values.keda.enabled (not $s.rabbitmqManagementUrl) }}
{{- fail "keda.enabled needs secrets.rabbitmqManagementUrl (KEDA counts unacked messages through the management API)" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "sous.storageClaimName" -}}
{{- default (printf "%s-storage" (include "sous.fullname" .)) .Values.storage.existingClaim }}
{{- end }}

{{/*
The longest a transcode may run, in whole seconds: max(minimum, factor x longest input),
as the heavy worker computes it from the same SOUS_TRANSCODE_* settings.
*/}}
{{- define "sous.transcodeLimitSeconds" -}}
{{- $t := .Values.config.transcode }}
{{- maxf $t.minTimeLimitSeconds (mulf $t.timeFactor $t.maxDurationSeconds) | ceil | int }}
{{- end }}

{{- define "sous.publicUrl" -}}
{{- if .Values.config.publicUrl }}
{{- .Values.config.publicUrl }}
{{- else if and .Values.api.ingress.enabled .Values.api.ingress.hosts }}
{{- $host := first .Values.api.ingress.hosts }}
{{- $tls := false }}
{{- range .Values.api.ingress.tls }}
{{- if has $host .hosts }}{{ $tls = true }}{{ end }}
{{- end }}
{{- printf "%s://%s" (ternary "https" "http" $tls) $host }}
{{- end }}
{{- end }}

{{/* Pod-level security: non-root, the images' uid, seccomp. */}}
{{- define "sous.podSecurityContext" -}}
runAsNonRoot: true
{{- toYaml .Values.podSecurityContext | nindent 0 }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container-level security: read-only root, no privilege escalation, no capabilities. */}}
{{- define "sous.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Environment of every Sous container: the ConfigMap's settings, the connection secrets,
the downward API and OpenTelemetry. sous.env (dict "root" $ "component" "api" "smtp" false)
*/}}
{{- define "sous.env" -}}
{{- $root := .root }}
{{- $secret := include "sous.secretName" $root }}
- name: SOUS_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: SOUS_BROKER_URL
- name: SOUS_RESULT_BACKEND
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: SOUS_RESULT_BACKEND
- name: SOUS_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: SOUS_DATABASE_URL
- name: SOUS_RABBITMQ_MANAGEMENT_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: SOUS_RABBITMQ_MANAGEMENT_URL
      optional: true
{{- if .smtp }}
- name: SOUS_SMTP_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: SOUS_SMTP_PASSWORD
      optional: true
{{- end }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: OTEL_SERVICE_NAME
  value: sous-{{ .component }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: "service.namespace=sous,service.version={{ $root.Chart.AppVersion }},k8s.namespace.name=$(POD_NAMESPACE),k8s.pod.name=$(POD_NAME)"
{{- end }}

{{/* The volumes every Sous pod mounts: /tmp (the root filesystem is read-only) and storage. */}}
{{- define "sous.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .values.tmpSizeLimit }}
{{- if .storage }}
- name: storage
  persistentVolumeClaim:
    claimName: {{ include "sous.storageClaimName" .root }}
{{- end }}
{{- end }}

{{- define "sous.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .storage }}
- name: storage
  mountPath: {{ .root.Values.storage.mountPath }}
{{- end }}
{{- end }}

{{/* Checksums that roll the pods when their settings or secrets change. */}}
{{- define "sous.configChecksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- if include "sous.createSecret" . }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- end }}

{{/* Soft spread over zones and nodes. sous.topologySpread (dict "root" $ "component" "api") */}}
{{- define "sous.topologySpread" -}}
{{- $root := .root }}
{{- $component := .component }}
{{- range $root.Values.topologySpread.topologyKeys }}
- maxSkew: {{ $root.Values.topologySpread.maxSkew }}
  topologyKey: {{ . }}
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "sous.componentSelectorLabels" (dict "root" $root "component" $component) | nindent 6 }}
  matchLabelKeys:
    - pod-template-hash
{{- end }}
{{- end }}

{{/* Scheduling knobs of one component: nodeSelector, tolerations, affinity, spread. */}}
{{- define "sous.scheduling" -}}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .root.Values.topologySpread.enabled }}
topologySpreadConstraints:
  {{- include "sous.topologySpread" . | trim | nindent 2 }}
{{- end }}
{{- end }}

{{/* Probes of the workers and the scheduler: /healthz on the metrics port answers while
the process lives and never touches the broker, so a busy worker or a broker outage
does not restart anything. */}}
{{- define "sous.processProbes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: 5
  failureThreshold: 24
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: 20
  timeoutSeconds: 5
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
{{- end }}

{{- define "sous.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
