{{/*
"leasehold.sidecar": the leasehold container, one list item, for the
initContainers list of a StatefulSet (native sidecar, restartPolicy: Always)
or, with sidecar.native=false, for its containers list. A database chart that
depends on this chart includes it with:

  initContainers:
    {{- include "leasehold.sidecar" (dict "root" $ "statefulSet" (include "mydb.fullname" .) "service" "mydb-headless" "replicas" .Values.replicaCount) | nindent 8 }}

Keys of the dict:
  root         the including chart's top context ($)                required
  statefulSet  the StatefulSet's name (the pods are NAME-0, NAME-1, …)  required
  service      its headless Service (publishNotReadyAddresses: true)  required
  replicas     the StatefulSet's replica count                        required
  namespace    default: the release namespace
  values       leasehold's values; default: .Values.leasehold of the
               including chart (a dependency's values), else .Values
*/}}
{{- define "leasehold.sidecar" -}}
{{- $ctx := include "leasehold.context" . | fromYaml }}
{{- $v := $ctx.values }}
{{- $s := $v.sidecar }}
{{- $ns := default .root.Release.Namespace .namespace }}
{{- $domain := printf "%s.%s.svc.%s" .service $ns $s.clusterDomain }}
{{- $clusterId := default .statefulSet $s.clusterId -}}
- name: leasehold
  image: {{ include "leasehold.image" (dict "values" $v "appVersion" $ctx.appVersion) }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if $s.native }}
  restartPolicy: Always
  {{- end }}
  command: ["/usr/local/bin/leasehold"]
  args:
    - run
    {{- if eq $v.backend.type "raft" }}
    {{- if eq (include "leasehold.membership" $) "managed" }}
    - --peers-file=/etc/leasehold/peers/peers
    {{- else }}
    - --peers={{ include "leasehold.peerList" . | fromYamlArray | join "," }}
    {{- end }}
    - --listen-peer=0.0.0.0:{{ $s.ports.peer }}
    {{- if $s.peerTLS.enabled }}
    - --peer-tls-cert=/etc/leasehold/peer-tls/tls.crt
    - --peer-tls-key=/etc/leasehold/peer-tls/tls.key
    - --peer-tls-ca=/etc/leasehold/peer-tls/ca.crt
    {{- end }}
    {{- else }}
    - --backend=etcd
    - --etcd-endpoints={{ join "," $v.backend.etcd.endpoints }}
    - --election={{ default $clusterId $v.backend.etcd.election }}
    {{- with $v.backend.etcd.tls.secretName }}
    - --etcd-ca=/etc/leasehold/etcd-tls/ca.crt
    {{- if $v.backend.etcd.tls.clientCertificate }}
    - --etcd-cert=/etc/leasehold/etcd-tls/tls.crt
    - --etcd-key=/etc/leasehold/etcd-tls/tls.key
    {{- end }}
    {{- end }}
    {{- with $v.backend.etcd.auth.user }}
    - --etcd-user={{ . }}
    - --etcd-password-file=/etc/leasehold/etcd-auth/password
    {{- end }}
    {{- end }}
    - --listen-api=127.0.0.1:{{ $s.ports.api }}
    - --listen-metrics=0.0.0.0:{{ $s.ports.metrics }}
    - --advertise=$(POD_NAME).{{ $domain }}:{{ $s.advertisePort }}
    - --data-dir={{ $s.dataDir }}
    - --cluster-id={{ $clusterId }}
    - --lease-ttl={{ $s.leaseTtl }}
    {{- with $s.heartbeatInterval }}
    - --heartbeat-interval={{ . }}
    {{- end }}
    - --max-clock-drift={{ $s.maxClockDrift }}
    - --priority={{ $s.priority }}
    {{- with $s.healthCheck.url }}
    - --health-check-url={{ . }}
    {{- end }}
    {{- with $s.healthCheck.exec }}
    - --health-check-exec={{ . }}
    {{- end }}
    - --log-format={{ $s.logFormat }}
    {{- range $s.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  env:
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: LEASEHOLD_NODE_ID
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    {{- if $s.apiToken.secretName }}
    # Read by the sidecar and by `leasehold step-down` run in this container.
    - name: LEASEHOLD_API_TOKEN_FILE
      value: /etc/leasehold/api-token/token
    {{- end }}
    {{- with $s.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    {{- if eq $v.backend.type "raft" }}
    - name: lh-peer
      containerPort: {{ $s.ports.peer }}
      protocol: TCP
    {{- end }}
    - name: lh-metrics
      containerPort: {{ $s.ports.metrics }}
      protocol: TCP
  {{- with $s.startupProbe }}
  {{- if .enabled }}
  startupProbe:
    httpGet:
      path: {{ .path }}
      port: lh-metrics
    periodSeconds: {{ .periodSeconds }}
    failureThreshold: {{ .failureThreshold }}
  {{- end }}
  {{- end }}
  {{- with $s.livenessProbe }}
  {{- if .enabled }}
  livenessProbe:
    httpGet:
      path: {{ .path }}
      port: lh-metrics
    periodSeconds: {{ .periodSeconds }}
    timeoutSeconds: {{ .timeoutSeconds }}
    failureThreshold: {{ .failureThreshold }}
  {{- end }}
  {{- end }}
  {{- with $s.readinessProbe }}
  {{- if .enabled }}
  readinessProbe:
    httpGet:
      path: {{ .path }}
      port: lh-metrics
    periodSeconds: {{ .periodSeconds }}
    timeoutSeconds: {{ .timeoutSeconds }}
    failureThreshold: {{ .failureThreshold }}
  {{- end }}
  {{- end }}
  {{- with $s.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $s.securityContext | nindent 4 }}
  volumeMounts:
    - name: {{ $v.persistence.volumeName }}
      mountPath: {{ $s.dataDir }}
      {{- with $v.persistence.subPath }}
      subPath: {{ . }}
      {{- end }}
    {{- if $s.apiToken.secretName }}
    - name: leasehold-api-token
      mountPath: /etc/leasehold/api-token
      readOnly: true
    {{- end }}
    {{- if and (eq $v.backend.type "raft") $s.peerTLS.enabled }}
    - name: leasehold-peer-tls
      mountPath: /etc/leasehold/peer-tls
      readOnly: true
    {{- end }}
    {{- if and (eq $v.backend.type "raft") (eq (include "leasehold.membership" $) "managed") }}
    # A directory, not a subPath: the kubelet updates it in place.
    - name: leasehold-peers
      mountPath: /etc/leasehold/peers
      readOnly: true
    {{- end }}
    {{- if eq $v.backend.type "etcd" }}
    {{- if $v.backend.etcd.tls.secretName }}
    - name: leasehold-etcd-tls
      mountPath: /etc/leasehold/etcd-tls
      readOnly: true
    {{- end }}
    {{- if $v.backend.etcd.auth.user }}
    - name: leasehold-etcd-auth
      mountPath: /etc/leasehold/etcd-auth
      readOnly: true
    {{- end }}
    {{- end }}
    {{- with $s.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/*
"leasehold.volumes": the pod volumes the sidecar needs: the desired set's
ConfigMap of a managed group, and its Secrets, for the pod's volumes list.
Same dict as "leasehold.sidecar" ("root", "statefulSet", optionally
"values").
*/}}
{{- define "leasehold.volumes" -}}
{{- $v := (include "leasehold.context" . | fromYaml).values }}
{{- if $v.sidecar.apiToken.secretName }}
- name: leasehold-api-token
  secret:
    secretName: {{ $v.sidecar.apiToken.secretName }}
    items:
      - key: {{ $v.sidecar.apiToken.key }}
        path: token
{{- end }}
{{- if and (eq $v.backend.type "raft") $v.sidecar.peerTLS.enabled }}
- name: leasehold-peer-tls
  secret:
    secretName: {{ $v.sidecar.peerTLS.secretName }}
{{- end }}
{{- if and (eq $v.backend.type "raft") (eq (include "leasehold.membership" $) "managed") }}
- name: leasehold-peers
  configMap:
    name: {{ include "leasehold.peersConfigMapName" . }}
{{- end }}
{{- if eq $v.backend.type "etcd" }}
{{- with $v.backend.etcd.tls.secretName }}
- name: leasehold-etcd-tls
  secret:
    secretName: {{ . }}
{{- end }}
{{- if $v.backend.etcd.auth.user }}
- name: leasehold-etcd-auth
  secret:
    secretName: {{ $v.backend.etcd.auth.passwordSecret.name }}
    items:
      - key: {{ $v.backend.etcd.auth.passwordSecret.key }}
        path: password
{{- end }}
{{- end }}
{{- end }}

{{/*
"leasehold.peerList": every replica's NAME-i=HOST:PORT, a YAML list. Same
dict as "leasehold.sidecar".
*/}}
{{- define "leasehold.peerList" -}}
{{- $v := (include "leasehold.context" . | fromYaml).values }}
{{- $s := $v.sidecar }}
{{- $ns := default .root.Release.Namespace .namespace }}
{{- $domain := printf "%s.%s.svc.%s" .service $ns $s.clusterDomain }}
{{- $peers := list }}
{{- range $i := until (int .replicas) }}
{{- $peers = append $peers (printf "%s-%d=%s-%d.%s:%d" $.statefulSet $i $.statefulSet $i $domain (int $s.ports.peer)) }}
{{- end }}
{{- toYaml $peers }}
{{- end }}

{{- define "leasehold.peersConfigMapName" -}}
{{- printf "%s-leasehold-peers" (required "leasehold: pass \"statefulSet\" in the dict (the desired set's ConfigMap is named after it)" .statefulSet) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
"leasehold.membership": managed or static. sidecar.membership if set;
otherwise static when the StatefulSet already exists and runs the sidecar
with --peers (a release made before managed membership: its state files
belong to a static group), else managed. Same dict as "leasehold.sidecar".
*/}}
{{- define "leasehold.membership" -}}
{{- $v := (include "leasehold.context" . | fromYaml).values }}
{{- $m := $v.sidecar.membership }}
{{- if not $m }}
{{- $m = "managed" }}
{{- if .statefulSet }}
{{- $sts := lookup "apps/v1" "StatefulSet" (default .root.Release.Namespace .namespace) .statefulSet }}
{{- if $sts }}
{{- $spec := $sts.spec.template.spec }}
{{- range (concat ($spec.initContainers | default list) ($spec.containers | default list)) }}
{{- if eq .name "leasehold" }}
{{- range (.args | default list) }}
{{- if hasPrefix "--peers=" . }}
{{- $m = "static" }}
{{- end }}
{{- end }}
{{- range (.env | default list) }}
{{- if eq .name "LEASEHOLD_PEERS" }}
{{- $m = "static" }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- $m -}}
{{- end }}

{{/*
"leasehold.peersConfigMap": the desired set of a managed group (sidecar.
membership=managed): a ConfigMap with one file, peers, that the sidecars
read with --peers-file from a directory mount, so that a new replica count
reaches running pods without a restart. It has a generation only if
sidecar.peersGeneration is set. Same dict as "leasehold.sidecar";
renders nothing for a static group or the etcd backend.
*/}}
{{- define "leasehold.peersConfigMap" -}}
{{- $v := (include "leasehold.context" . | fromYaml).values }}
{{- if and (eq $v.backend.type "raft") (eq (include "leasehold.membership" $) "managed") }}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "leasehold.peersConfigMapName" . }}
  namespace: {{ default .root.Release.Namespace .namespace }}
data:
  peers: |
    # The desired voters of {{ .statefulSet }}: one per replica.
    {{- with $v.sidecar.peersGeneration }}
    generation {{ printf "%d" (int64 .) }}
    {{- end }}
    {{- range (include "leasehold.peerList" . | fromYamlArray) }}
    {{ . }}
    {{- end }}
{{- end }}
{{- end }}

{{/*
"leasehold.volumeClaimTemplate": the data volume's claim, one list item for
a StatefulSet's volumeClaimTemplates, so the term and the promise survive
rescheduling. Same dict as "leasehold.volumes".
*/}}
{{- define "leasehold.volumeClaimTemplate" -}}
{{- $p := (include "leasehold.context" . | fromYaml).values.persistence -}}
- apiVersion: v1
  kind: PersistentVolumeClaim
  metadata:
    name: {{ $p.volumeName }}
  spec:
    accessModes:
      {{- toYaml $p.accessModes | nindent 6 }}
    {{- with $p.storageClassName }}
    storageClassName: {{ . }}
    {{- end }}
    resources:
      requests:
        storage: {{ $p.size }}
{{- end }}

{{/*
The values and app version the templates above work from: leasehold's own
when rendered by this chart, the dependency's when included by another.
*/}}
{{- define "leasehold.context" -}}
{{- $values := .values }}
{{- $appVersion := .root.Chart.AppVersion }}
{{- if not $values }}
{{- if hasKey .root.Values "leasehold" }}
{{- $values = index .root.Values "leasehold" }}
{{- $appVersion = (index .root.Subcharts "leasehold").Chart.AppVersion }}
{{- else }}
{{- $values = .root.Values }}
{{- end }}
{{- end }}
values:
  {{- toYaml $values | nindent 2 }}
appVersion: {{ $appVersion | quote }}
{{- end }}
