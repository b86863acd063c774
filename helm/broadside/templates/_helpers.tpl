{{/*
Names and labels.
*/}}
{{- define "broadside.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "broadside.fullname" -}}
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

{{- define "broadside.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "broadside.selectorLabels" -}}
app.kubernetes.io/name: {{ include "broadside.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "broadside.labels" -}}
helm.sh/chart: {{ include "broadside.chart" . }}
{{ include "broadside.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | toString | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that pick the server pods (never the migration Job's pods). */}}
{{- define "broadside.serverSelectorLabels" -}}
{{ include "broadside.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "broadside.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "broadside.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "broadside.image" -}}
{{- printf "%s:%s" .Values.image.repository (toString (.Values.image.tag | default .Chart.AppVersion)) }}
{{- end }}

{{/*
Database.
"true" when the server would use SQLite: no URL and no existing Secret given,
or a URL with the sqlite: scheme. An existing Secret is taken to hold a
non-SQLite URL, since its content cannot be seen at render time.
*/}}
{{- define "broadside.usesSqlite" -}}
{{- $db := .Values.database -}}
{{- if $db.existingSecret -}}
{{- else if not $db.url -}}
true
{{- else if hasPrefix "sqlite:" (lower $db.url) -}}
true
{{- end -}}
{{- end }}

{{/* Name of the chart-created Secret. */}}
{{- define "broadside.secretName" -}}
{{- include "broadside.fullname" . }}
{{- end }}

{{/* Secret and key that hold the database URL; empty when none is set. */}}
{{- define "broadside.databaseSecretName" -}}
{{- if .Values.database.existingSecret -}}
{{- .Values.database.existingSecret -}}
{{- else if .Values.database.url -}}
{{- include "broadside.secretName" . -}}
{{- end -}}
{{- end }}

{{- define "broadside.databaseSecretKey" -}}
{{- if .Values.database.existingSecret -}}
{{- .Values.database.existingSecretKey -}}
{{- else -}}
database-url
{{- end -}}
{{- end }}

{{/* Secret that holds the Twilio credentials. */}}
{{- define "broadside.twilioSecretName" -}}
{{- default (include "broadside.secretName" .) .Values.twilio.existingSecret -}}
{{- end }}

{{/* "true" when the chart must create its Secret. */}}
{{- define "broadside.createSecret" -}}
{{- if and .Values.database.url (not .Values.database.existingSecret) -}}
true
{{- else if and (eq .Values.provider "twilio") (not .Values.twilio.existingSecret) -}}
true
{{- end -}}
{{- end }}

{{/* Fewest server pods the release is meant to run (decides the automatic PodDisruptionBudget). */}}
{{- define "broadside.minReplicas" -}}
{{- if .Values.autoscaling.enabled -}}
{{- .Values.autoscaling.minReplicas -}}
{{- else -}}
{{- .Values.replicaCount -}}
{{- end -}}
{{- end }}

{{- define "broadside.pdbEnabled" -}}
{{- $setting := .Values.podDisruptionBudget.enabled -}}
{{- if eq (toString $setting) "auto" -}}
{{- if gt (int (include "broadside.minReplicas" .)) 1 }}true{{ end -}}
{{- else if $setting -}}
true
{{- end -}}
{{- end }}

{{- define "broadside.terminationGracePeriodSeconds" -}}
{{- add (int .Values.preStopSleepSeconds) (int .Values.shutdownTimeoutSeconds) (int .Values.terminationGraceMarginSeconds) -}}
{{- end }}

{{/*
Checks that cannot be written in values.schema.json. Rendering stops with a
message when one fails. Included by every template that depends on them.
*/}}
{{- define "broadside.validate" -}}
{{- $db := .Values.database -}}
{{- if and $db.url $db.existingSecret -}}
{{- fail "broadside: set only one of database.url and database.existingSecret" -}}
{{- end -}}
{{- if include "broadside.usesSqlite" . -}}
{{- if or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled -}}
{{- fail "broadside: the database is SQLite, which allows a single process, so replicaCount must be 1 and autoscaling.enabled false. Set database.url to a postgres:// URL (or database.existingSecret) to run more replicas." -}}
{{- end -}}
{{- end -}}
{{- if eq .Values.provider "twilio" -}}
{{- $t := .Values.twilio -}}
{{- if and (not $t.existingSecret) (or (not $t.accountSid) (not $t.authToken)) -}}
{{- fail "broadside: provider is twilio but no credentials were given: set twilio.accountSid and twilio.authToken, or twilio.existingSecret" -}}
{{- end -}}
{{- if and $t.existingSecret (or $t.accountSid $t.authToken) -}}
{{- fail "broadside: set either twilio.existingSecret or twilio.accountSid/twilio.authToken, not both" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail "broadside: autoscaling.minReplicas is larger than autoscaling.maxReplicas" -}}
{{- end -}}
{{- end }}

{{/* Environment variables that carry secrets (shared by the server and the migration Job). */}}
{{- define "broadside.databaseEnv" -}}
{{- $secret := include "broadside.databaseSecretName" . -}}
{{- if $secret }}
- name: BROADSIDE_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ include "broadside.databaseSecretKey" . }}
{{- end }}
{{- end }}

{{/* Environment of the server container beyond the ConfigMap: secrets and extraEnv. */}}
{{- define "broadside.serverEnv" -}}
{{ include "broadside.databaseEnv" . }}
{{- if eq .Values.provider "twilio" }}
{{- $existing := .Values.twilio.existingSecret }}
- name: TWILIO_ACCOUNT_SID
  valueFrom:
    secretKeyRef:
      name: {{ include "broadside.twilioSecretName" . }}
      key: {{ ternary .Values.twilio.accountSidKey "twilio-account-sid" (not (empty $existing)) }}
- name: TWILIO_AUTH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "broadside.twilioSecretName" . }}
      key: {{ ternary .Values.twilio.authTokenKey "twilio-auth-token" (not (empty $existing)) }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
