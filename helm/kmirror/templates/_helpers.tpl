{{/* Names and labels shared by every object of the chart. */}}

{{- define "kmirror.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The objects' name: the release name, with the chart's name appended unless the release
name already contains it. 63 characters at most (a DNS label).
*/}}
{{- define "kmirror.fullname" -}}
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

{{- define "kmirror.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: never change between upgrades (a StatefulSet's selector is immutable). */}}
{{- define "kmirror.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kmirror.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kmirror.labels" -}}
helm.sh/chart: {{ include "kmirror.chart" . }}
{{ include "kmirror.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kmirror
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "kmirror.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kmirror.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kmirror.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* Where checkpoints and the job lock live: the mounted state volume. */}}
{{- define "kmirror.stateDir" -}}/var/lib/kmirror{{- end }}

{{/* The environment of both containers (the check and the mirror). */}}
{{- define "kmirror.env" -}}
# The routing file is a read-only ConfigMap: checkpoints default to the state volume.
- name: KMIRROR_CHECKPOINT_DIR
  value: {{ include "kmirror.stateDir" . }}
{{- range $k, $v := .Values.env }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "kmirror.envFrom" -}}
{{- if .Values.envFromSecret }}
envFrom:
  - secretRef:
      name: {{ .Values.envFromSecret }}
{{- end }}
{{- end }}

{{/*
The pod spec shared by the StatefulSet (a mirror that follows) and the Job (a one-shot
migration): only the restart policy and the state volume's source differ.
*/}}
{{- define "kmirror.podSpec" -}}
{{- $job := eq .Values.workload "job" -}}
{{- if and (not .Values.persistence.enabled) (not (regexMatch "(?m)^\\s*store\\s*=\\s*\"kafka\"" .Values.routes)) -}}
{{- fail "persistence.enabled=false needs the routing file to keep its checkpoints in the target cluster: [checkpoints] store = \"kafka\" (without it every restart would copy everything again)" -}}
{{- end -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
serviceAccountName: {{ include "kmirror.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automountToken }}
{{- if $job }}
# A finished migration stays finished: the Job (backoffLimit) decides about retries.
restartPolicy: Never
{{- end }}
terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
initContainers:
  # Refuse a bad routing file before the mirror starts (exit 3), visibly.
  - name: check
    image: {{ include "kmirror.image" . | quote }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    args: ["check", "-c", "/etc/kmirror/routes.toml", "--offline"]
    securityContext:
      {{- toYaml .Values.securityContext | nindent 6 }}
    env:
      {{- include "kmirror.env" . | nindent 6 }}
    {{- with include "kmirror.envFrom" . }}
    {{- . | nindent 4 }}
    {{- end }}
    resources:
      {{- toYaml .Values.resources | nindent 6 }}
    volumeMounts:
      - name: routes
        mountPath: /etc/kmirror
        readOnly: true
containers:
  - name: kmirror
    image: {{ include "kmirror.image" . | quote }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    args:
      - run
      - -c
      - /etc/kmirror/routes.toml
      {{- if .Values.http.enabled }}
      - --http
      - "0.0.0.0:{{ .Values.http.port }}"
      {{- end }}
      {{- if $job }}
      - --once
      {{- end }}
      {{- range .Values.runArgs }}
      - {{ . | quote }}
      {{- end }}
    securityContext:
      {{- toYaml .Values.securityContext | nindent 6 }}
    {{- if .Values.http.enabled }}
    ports:
      - name: http
        containerPort: {{ .Values.http.port }}
        protocol: TCP
    {{- with .Values.livenessProbe }}
    livenessProbe:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with .Values.readinessProbe }}
    readinessProbe:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- end }}
    env:
      {{- include "kmirror.env" . | nindent 6 }}
    {{- with include "kmirror.envFrom" . }}
    {{- . | nindent 4 }}
    {{- end }}
    resources:
      {{- toYaml .Values.resources | nindent 6 }}
    volumeMounts:
      - name: routes
        mountPath: /etc/kmirror
        readOnly: true
      - name: state
        mountPath: {{ include "kmirror.stateDir" . }}
      # The root filesystem is read-only; anything that wants a scratch file gets this.
      - name: tmp
        mountPath: /tmp
volumes:
  - name: routes
    configMap:
      name: {{ include "kmirror.fullname" . }}-routes
      {{- with .Values.routeFiles }}
      # Files the routing file names by relative path, placed beside it.
      items:
        - key: routes.toml
          path: routes.toml
        {{- range $i, $f := . }}
        - key: file-{{ $i }}
          path: {{ $f.path }}
        {{- end }}
      {{- end }}
  - name: tmp
    emptyDir:
      sizeLimit: 64Mi
  {{- if not .Values.persistence.enabled }}
  # No persistent volume: the checkpoints are in the target cluster.
  - name: state
    emptyDir:
      sizeLimit: 64Mi
  {{- else if $job }}
  - name: state
    persistentVolumeClaim:
      claimName: {{ .Values.persistence.existingClaim | default (printf "%s-state" (include "kmirror.fullname" .)) }}
  {{- end }}
{{- end }}
