{{/*
The Deployment of a Celery process (worker pools, scheduler). Called with
(dict "root" $ "component" "worker-heavy" "values" .Values.workerHeavy "args" (list ...)
      "storage" true "smtp" false "replicas" 1 "strategy" (dict ...) "grace" 300 "env" (list ...))
*/}}
{{- define "sous.processDeployment" -}}
{{- $root := .root }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "sous.componentName" . }}
  labels:
    {{- include "sous.componentLabels" . | nindent 4 }}
spec:
  {{- if not (kindIs "invalid" .replicas) }}
  replicas: {{ .replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "sous.componentSelectorLabels" . | nindent 6 }}
  strategy:
    {{- toYaml .strategy | nindent 4 }}
  template:
    metadata:
      labels:
        {{- include "sous.componentLabels" . | nindent 8 }}
        {{- with .values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        {{- include "sous.configChecksums" $root | nindent 8 }}
        {{- with .values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "sous.serviceAccountName" $root }}
      automountServiceAccountToken: false
      {{- with include "sous.imagePullSecrets" $root }}{{ . | trim | nindent 6 }}{{ end }}
      securityContext:
        {{- include "sous.podSecurityContext" $root | nindent 8 }}
      {{- /* SIGTERM starts Celery's warm shutdown: no new tasks, the running ones finish
      within this grace period. */}}
      terminationGracePeriodSeconds: {{ .grace }}
      {{- include "sous.scheduling" . | trim | nindent 6 }}
      containers:
        - name: {{ .component }}
          image: {{ include "sous.image" (dict "root" $root "image" .values.image) }}
          imagePullPolicy: {{ $root.Values.imagePullPolicy }}
          args:
            {{- toYaml .args | nindent 12 }}
          ports:
            - name: metrics
              containerPort: {{ $root.Values.metricsPort }}
              protocol: TCP
          envFrom:
            - configMapRef:
                name: {{ include "sous.fullname" $root }}
          env:
            {{- include "sous.env" . | trim | nindent 12 }}
            {{- /* /metrics and /healthz for Prometheus and the kubelet's probes. */}}
            - name: SOUS_METRICS_HOST
              value: "0.0.0.0"
            - name: SOUS_METRICS_PORT
              value: {{ $root.Values.metricsPort | quote }}
            {{- with .env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- include "sous.processProbes" . | nindent 10 }}
          resources:
            {{- toYaml .values.resources | nindent 12 }}
          securityContext:
            {{- include "sous.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            {{- include "sous.volumeMounts" . | nindent 12 }}
      volumes:
        {{- include "sous.volumes" . | nindent 8 }}
{{- end }}

