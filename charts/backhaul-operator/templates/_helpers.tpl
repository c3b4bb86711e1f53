{{/* Chart name, 63 characters at most. */}}
{{- define "backhaul-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects: the release name, followed by the chart
name unless the release name already contains it. 63 characters at most (the
DNS label limit some names are subject to).
*/}}
{{- define "backhaul-operator.fullname" -}}
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

{{- define "backhaul-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "backhaul-operator.labels" -}}
helm.sh/chart: {{ include "backhaul-operator.chart" . }}
{{ include "backhaul-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: backhaul
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the operator's pods; never change them (Deployment selectors are immutable). */}}
{{- define "backhaul-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "backhaul-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "backhaul-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "backhaul-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "backhaul-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The inference server's CPU build, for pods without GPUs. */}}
{{- define "backhaul-operator.inferenceImage" -}}
{{- printf "%s:%s" .Values.inferenceImage.repository (default .Chart.AppVersion .Values.inferenceImage.tag) }}
{{- end }}

{{/* The inference server's CUDA build, for pods with GPUs: by default the CPU build's repository and tag, the tag followed by -cuda. */}}
{{- define "backhaul-operator.inferenceImageCuda" -}}
{{- $cuda := .Values.inferenceImage.cuda }}
{{- $tag := $cuda.tag }}
{{- if not $tag }}
{{- $cpu := default .Chart.AppVersion .Values.inferenceImage.tag }}
{{- if contains "sha256:" $cpu }}
{{- fail "inferenceImage.tag is a digest, so the CUDA build's tag cannot be derived from it: set inferenceImage.cuda.tag" }}
{{- end }}
{{- $tag = printf "%s-cuda" $cpu }}
{{- end }}
{{- printf "%s:%s" (default .Values.inferenceImage.repository $cuda.repository) $tag }}
{{- end }}

{{- define "backhaul-operator.leaseName" -}}
{{- default (include "backhaul-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* The Secret holding the publisher's private key: the named one, else the chart's when it is given inline; empty otherwise. */}}
{{- define "backhaul-operator.publishKeySecretName" -}}
{{- if .Values.publishKey.existingSecret }}
{{- .Values.publishKey.existingSecret }}
{{- else if .Values.publishKey.privateKeyPem }}
{{- printf "%s-publish-key" (include "backhaul-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Whether the chart makes the publisher key's Secret (publication on, the key given inline): "true" or empty. */}}
{{- define "backhaul-operator.publishKeyChartSecret" -}}
{{- if and .Values.workerUrl .Values.publishKey.privateKeyPem (not .Values.publishKey.existingSecret) }}true{{ end }}
{{- end }}

{{/* Where the publisher key is mounted in the operator's container, and the file the operator reads. */}}
{{- define "backhaul-operator.publishKeyDir" -}}
/etc/backhaul/publish-key
{{- end }}
{{- define "backhaul-operator.publishKeyFile" -}}
{{- printf "%s/publish-key.pem" (include "backhaul-operator.publishKeyDir" .) }}
{{- end }}

{{/* The TCP port of an http(s) URL (the context): explicit in it, else the scheme's. */}}
{{- define "backhaul-operator.urlPort" -}}
{{- $url := urlParse . }}
{{- $port := regexFind ":[0-9]+$" $url.host | trimPrefix ":" }}
{{- if $port }}
{{- $port }}
{{- else if eq $url.scheme "http" }}
{{- 80 }}
{{- else }}
{{- 443 }}
{{- end }}
{{- end }}

{{/* The Worker's TCP port. */}}
{{- define "backhaul-operator.workerPort" -}}
{{- include "backhaul-operator.urlPort" .Values.workerUrl }}
{{- end }}

{{/*
Settings that cannot be expressed in values.schema.json, checked here so that
`helm install` and `helm template` fail with a message saying what to change.
*/}}
{{- define "backhaul-operator.validate" -}}
{{- if .Values.workerUrl }}
{{- if not (include "backhaul-operator.publishKeySecretName" .) }}
{{- fail "workerUrl is set but the publisher's private key is not: set publishKey.existingSecret (a Secret in the release namespace holding a PKCS#8 PEM Ed25519 key under publishKey.key) or publishKey.privateKeyPem (--set-file publishKey.privateKeyPem=key.pem, made with openssl genpkey -algorithm ed25519)" }}
{{- end }}
{{- if not .Values.publishKey.id }}
{{- fail "workerUrl is set but publishKey.id is not: set it to the id of this cluster's entry in the Worker's BACKHAUL_PUBLISHERS ([A-Za-z0-9_-], at most 64 characters)" }}
{{- end }}
{{- end }}
{{- with .Values.publishKey.privateKeyPem }}
{{- if and (not $.Values.publishKey.existingSecret) (not (regexMatch "^\\s*-----BEGIN PRIVATE KEY-----\\s[A-Za-z0-9+/=\\s]+-----END PRIVATE KEY-----\\s*$" .)) }}
{{- fail "publishKey.privateKeyPem is not a PKCS#8 PEM private key (-----BEGIN PRIVATE KEY----- ... -----END PRIVATE KEY-----): pass the key file's contents with --set-file publishKey.privateKeyPem=key.pem (openssl genpkey -algorithm ed25519 -out key.pem)" }}
{{- end }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail (printf "replicaCount is %d but leaderElection.enabled is false: several replicas without leader election would reconcile the same objects at once" (int .Values.replicaCount)) }}
{{- end }}
{{- end }}
