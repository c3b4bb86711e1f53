#!/usr/bin/env bash
# Tests the backhaul-operator Helm chart:
#
#   1. helm lint --strict, with the default values and with every option on;
#   2. helm template compared with the committed snapshots under
#      charts/backhaul-operator/tests/ (--update rewrites them);
#   3. what the templates render for particular values (secrets, RBAC scope,
#      NetworkPolicy ports, image tags, the PodMonitor and dashboard ConfigMap,
#      trace export's variables against telemetry/src/lib.rs);
#      the inference PodMonitor against operator/src/build.rs and the Grafana
#      dashboard's PromQL against the registered metrics (charts/check-monitoring.py);
#   4. bad values fail `helm template` with the schema's or the chart's message;
#   5. the chart's crds/ equals the repository's crds/, the chart's appVersion
#      the Cargo workspace's version; the Dockerfiles pass hadolint;
#   6. when $KUBECONFIG reaches a cluster (tests/cluster/up.sh): helm install
#      into fresh namespaces, the operator Deployment becomes Available, its
#      ServiceAccount can do exactly what the operator needs and no more, the
#      publisher key is a read-only file in the pod, an upgrade that changes
#      the key rolls the pods, and helm uninstall removes everything.
#
# Usage: charts/test-chart.sh [--update]
#   --update  only rewrite the snapshots and the chart's CRD copy (make generate), test nothing.
# Environment: BACKHAUL_CHART_TIMEOUT (seconds to wait for the Deployment, 120),
#   BACKHAUL_CHART_SKIP_CLUSTER=1 to skip step 6.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$repo_root"

chart=charts/backhaul-operator
tests=$chart/tests
timeout=${BACKHAUL_CHART_TIMEOUT:-120}
update=0
case "${1:-}" in
  --update) update=1 ;;
  "") ;;
  *) echo "usage: $0 [--update]" >&2; exit 2 ;;
esac

# helm and kubectl, built from the pinned Go modules (a no-op when built).
tests/cluster/build-tools.sh helm kubectl
helm=$BACKHAUL_CACHE/bin/helm
kubectl=$BACKHAUL_CACHE/bin/kubectl

tmp=$(mktemp -d)
cleanups=()
cleanup() {
  local c
  for c in "${cleanups[@]}"; do eval "$c" || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# Two publisher keys (PKCS#8 PEM Ed25519, as openssl genpkey writes them):
# RFC 8032's test keys 1 and 2, published in the RFC, so never anyone's real key.
printf '%s\n' "-----BEGIN PRIVATE KEY-----" "MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g" \
  "-----END PRIVATE KEY-----" >"$tmp/key1.pem"
printf '%s\n' "-----BEGIN PRIVATE KEY-----" "MC4CAQAwBQYDK2VwBCIEIEzNCJso/5banbbDRuwRTg9bijGfNaumJNqM9u1PuKb7" \
  "-----END PRIVATE KEY-----" >"$tmp/key2.pem"
key1=$tmp/key1.pem
key2=$tmp/key2.pem
key1_b64=$(base64 -w0 "$key1")

passed=0
failed=0
failures=()
# check NAME CMD...: one test; its output is shown only when it fails.
check() {
  local name=$1
  shift
  if "$@" >"$tmp/out" 2>&1; then
    passed=$((passed + 1))
    echo "ok   $name" >&2
  else
    failed=$((failed + 1))
    failures+=("$name")
    echo "FAIL $name" >&2
    sed 's/^/     | /' "$tmp/out" >&2
  fi
}

# render [HELM ARGS...]: helm template for release "backhaul" in backhaul-system,
# for the local control plane's Kubernetes version (a Helm built without its
# release ldflags would assume v1.20).
kube_version=v1.37.0
render() { "$helm" template backhaul "$chart" --namespace backhaul-system --kube-version "$kube_version" "$@"; }

# yq EXPR: evaluates the Python expression EXPR over the YAML documents on
# stdin; `docs` is the list of objects, `obj(kind, name=None)` the one of that
# kind, `container` the operator container, `env` its environment as a
# dict of name -> value or valueFrom, `pod` the pod spec, `mounts` and `volumes`
# the container's volume mounts and the pod's volumes by name. Prints the result as JSON; fails when
# the expression raises or is False.
yq() {
  python3 -c '
import json, re, sys, yaml
docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
def obj(kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    if len(found) != 1:
        raise SystemExit("expected one %s %s, found %d" % (kind, name or "", len(found)))
    return found[0]
def has(kind):
    return any(d["kind"] == kind for d in docs)
deps = [d for d in docs if d["kind"] == "Deployment"]
container = deps[0]["spec"]["template"]["spec"]["containers"][0] if deps else None
env = {e["name"]: e.get("value", e.get("valueFrom")) for e in (container or {}).get("env", [])}
pod = deps[0]["spec"]["template"]["spec"] if deps else None
mounts = {m["name"]: m for m in (container or {}).get("volumeMounts", [])}
volumes = {v["name"]: v for v in (pod or {}).get("volumes", [])}
result = eval(sys.argv[1])
print(json.dumps(result, sort_keys=True))
if result is False:
    raise SystemExit("false: " + sys.argv[1])
' "$1"
}

export -f yq render
export helm chart kube_version key1 key2 key1_b64

# expect_render NAME "HELM ARGS" EXPR...: renders with the args, then every EXPR holds.
expect_render() {
  local name=$1 args=$2
  shift 2
  check "$name" bash -c '
    set -euo pipefail
    args=$1; shift
    # shellcheck disable=SC2086 # a word list by design
    out=$(render $args)
    for expr in "$@"; do printf "%s\n" "$out" | yq "$expr"; done' _ "$args" "$@"
}

# ---------------------------------------------------------------------------
# Generated files
# ---------------------------------------------------------------------------
snapshot_all_args=(-f "$tests/values-all.yaml")
if [ "$update" = 1 ]; then
  scripts/sync-chart-crds.sh
  render >"$tests/snapshot.yaml"
  render "${snapshot_all_args[@]}" >"$tests/snapshot-all.yaml"
  echo "test-chart: rewrote $tests/snapshot.yaml and $tests/snapshot-all.yaml" >&2
  exit 0
fi

echo "== static checks" >&2
check "helm lint --strict (default values)" "$helm" lint --strict --kube-version "$kube_version" "$chart"
check "helm lint --strict (every option on)" "$helm" lint --strict --kube-version "$kube_version" "$chart" "${snapshot_all_args[@]}"
check "default values render as in tests/snapshot.yaml (charts/test-chart.sh --update to accept)" \
  bash -c 'render | diff -u "$0" -' "$tests/snapshot.yaml"
check "values-all.yaml renders as in tests/snapshot-all.yaml (charts/test-chart.sh --update to accept)" \
  bash -c 'render "$@" | diff -u "$0" -' "$tests/snapshot-all.yaml" "${snapshot_all_args[@]}"
check "chart crds/ is a copy of crds/ (scripts/sync-chart-crds.sh to fix)" scripts/sync-chart-crds.sh --check
check "chart appVersion equals the Cargo workspace version" bash -c '
  app=$(awk -F": *" "\$1 == \"appVersion\" { gsub(/\"/, \"\", \$2); print \$2 }" "$0/Chart.yaml")
  crate=$(awk -F" *= *" "\$1 == \"version\" { gsub(/\"/, \"\", \$2); print \$2; exit }" Cargo.toml)
  echo "chart appVersion=$app workspace version=$crate"; [ -n "$app" ] && [ "$app" = "$crate" ]' "$chart"
check "Dockerfiles pass hadolint" scripts/hadolint.sh

echo "== rendering" >&2
expect_render "defaults: no publication, images tagged with appVersion, leader election on" "" \
  'not has("Secret") and "BACKHAUL_WORKER_URL" not in env and not [k for k in env if k.startswith("BACKHAUL_PUBLISH")]' \
  'not volumes and not mounts' \
  'container["image"] == "ghcr.io/backhaul-dev/backhaul-operator:0.1.0"' \
  'env["BACKHAUL_INFERENCE_IMAGE"] == "ghcr.io/backhaul-dev/backhaul-inference:0.1.0"' \
  'env["BACKHAUL_INFERENCE_IMAGE_CUDA"] == "ghcr.io/backhaul-dev/backhaul-inference:0.1.0-cuda"' \
  'env["BACKHAUL_LEADER_ELECTION"] == "true" and env["BACKHAUL_LEASE_NAME"] == "backhaul-backhaul-operator"' \
  'env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}' \
  'not has("NetworkPolicy") and not has("ServiceMonitor") and has("ClusterRoleBinding")' \
  'not has("PodMonitor") and not has("ConfigMap")'
expect_render "the container runs non-root, read-only, without capabilities" "" \
  'container["securityContext"]["readOnlyRootFilesystem"] is True and container["securityContext"]["runAsNonRoot"] is True' \
  'container["securityContext"]["capabilities"] == {"drop": ["ALL"]} and container["securityContext"]["allowPrivilegeEscalation"] is False' \
  'container["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}' \
  'obj("Deployment")["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 65532' \
  'container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"} and container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}' \
  'set(container["resources"]) == {"requests", "limits"}'
expect_render "publishKey.privateKeyPem: the chart creates the Secret, mounted read-only as the operator's key file" \
  "--set workerUrl=https://backhaul.example.workers.dev --set publishKey.id=us-east-2026 --set-file publishKey.privateKeyPem=$key1" \
  'obj("Secret", "backhaul-backhaul-operator-publish-key")["data"] == {"publish-key.pem": "'"$key1_b64"'"}' \
  'env["BACKHAUL_PUBLISH_KEY_FILE"] == "/etc/backhaul/publish-key/publish-key.pem" and env["BACKHAUL_PUBLISH_KEY_ID"] == "us-east-2026"' \
  'mounts["publish-key"] == {"name": "publish-key", "mountPath": "/etc/backhaul/publish-key", "readOnly": True}' \
  'volumes["publish-key"]["secret"] == {"secretName": "backhaul-backhaul-operator-publish-key", "items": [{"key": "publish-key.pem", "path": "publish-key.pem"}], "defaultMode": 0o440}' \
  'pod["securityContext"]["fsGroup"] == 65532' \
  'env["BACKHAUL_WORKER_URL"] == "https://backhaul.example.workers.dev"' \
  '"PRIVATE KEY" not in json.dumps(obj("Deployment")) and not [k for k in env if "SECRET" in k]' \
  '"checksum/publish-key" in obj("Deployment")["spec"]["template"]["metadata"]["annotations"]'
expect_render "publishKey.existingSecret: no Secret is created, the named one is mounted" \
  "--set workerUrl=https://w.example.com --set publishKey.id=k1 --set publishKey.existingSecret=mine --set publishKey.key=ed25519 --set-file publishKey.privateKeyPem=$key1" \
  'not has("Secret") and "checksum/publish-key" not in (obj("Deployment")["spec"]["template"]["metadata"].get("annotations") or {})' \
  'volumes["publish-key"]["secret"]["secretName"] == "mine" and volumes["publish-key"]["secret"]["items"] == [{"key": "ed25519", "path": "publish-key.pem"}]' \
  'env["BACKHAUL_PUBLISH_KEY_FILE"] == "/etc/backhaul/publish-key/publish-key.pem" and env["BACKHAUL_PUBLISH_KEY_ID"] == "k1"'
expect_render "a podSecurityContext without fsGroup: the key file is readable by the non-root operator (0444)" \
  "--set workerUrl=https://w.example.com --set publishKey.id=k1 --set publishKey.existingSecret=mine --set podSecurityContext.fsGroup=null" \
  '"fsGroup" not in pod["securityContext"] and volumes["publish-key"]["secret"]["defaultMode"] == 0o444'
expect_render "a publisher key without workerUrl: nothing of it is rendered" \
  "--set publishKey.id=k1 --set-file publishKey.privateKeyPem=$key1" \
  'not has("Secret") and not volumes and not [k for k in env if k.startswith("BACKHAUL_PUBLISH")]'
expect_render "the operator may create and watch Secrets (each ModelDeployment's upstream credential), and no more" "" \
  '[r["verbs"] for r in obj("ClusterRole")["rules"] if "secrets" in r["resources"]] == [["get", "list", "watch", "create"]]'
expect_render "regions, log settings and image tags reach the operator" \
  "--set regions={us-east,eu-west} --set logLevel=backhaul_operator=debug --set logFormat=text --set image.tag=dev --set inferenceImage.tag=1.2.3" \
  'env["BACKHAUL_REGIONS"] == "us-east,eu-west" and env["RUST_LOG"] == "backhaul_operator=debug" and env["BACKHAUL_LOG_FORMAT"] == "text"' \
  'container["image"].endswith(":dev") and env["BACKHAUL_INFERENCE_IMAGE"] == "ghcr.io/backhaul-dev/backhaul-inference:1.2.3"' \
  'env["BACKHAUL_INFERENCE_IMAGE_CUDA"] == "ghcr.io/backhaul-dev/backhaul-inference:1.2.3-cuda"'
expect_render "inferenceImage.cuda: the CUDA build's repository and tag override the derived ones" \
  "--set inferenceImage.repository=registry.example.com/cpu --set inferenceImage.cuda.repository=registry.example.com/gpu --set inferenceImage.cuda.tag=nightly" \
  'env["BACKHAUL_INFERENCE_IMAGE"] == "registry.example.com/cpu:0.1.0" and env["BACKHAUL_INFERENCE_IMAGE_CUDA"] == "registry.example.com/gpu:nightly"'
expect_render "inferenceImage.cuda.repository alone keeps the derived tag" \
  "--set inferenceImage.cuda.repository=registry.example.com/gpu" \
  'env["BACKHAUL_INFERENCE_IMAGE_CUDA"] == "registry.example.com/gpu:0.1.0-cuda"'
expect_render "watchNamespace: permissions bound in that namespace only" "--set watchNamespace=models" \
  'not has("ClusterRoleBinding") and obj("RoleBinding", "backhaul-backhaul-operator")["metadata"]["namespace"] == "models"' \
  'env["BACKHAUL_WATCH_NAMESPACE"] == "models"'
expect_render "hubEndpoint reaches the operator (for HF_ENDPOINT in pods); unset by default" "--set hubEndpoint=https://hf-mirror.internal" \
  'env["BACKHAUL_HUB_ENDPOINT"] == "https://hf-mirror.internal"'
expect_render "weight caches: the operator makes and deletes claims and fill Jobs and reads fill logs, and may not update them" "" \
  '"BACKHAUL_HUB_ENDPOINT" not in env' \
  '[r["verbs"] for r in obj("ClusterRole")["rules"] if r["resources"] in (["persistentvolumeclaims"], ["jobs"])] == [["get", "list", "watch", "create", "delete"]] * 2' \
  '[r["verbs"] for r in obj("ClusterRole")["rules"] if r["resources"] == ["pods/log"]] == [["get"]]'
expect_render "leaderElection off: no Lease permissions" "--set leaderElection.enabled=false" \
  'not has("Role") and env["BACKHAUL_LEADER_ELECTION"] == "false" and "BACKHAUL_LEASE_NAME" not in env'
expect_render "networkPolicy: ingress to metrics only; egress to DNS, API server and the Worker's port" \
  "--set networkPolicy.enabled=true --set workerUrl=http://worker.internal:8787 --set publishKey.id=k --set publishKey.existingSecret=k --set networkPolicy.apiServer.cidrs={10.0.0.1/32}" \
  'obj("NetworkPolicy")["spec"]["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}]' \
  '[r["ports"][0]["port"] for r in obj("NetworkPolicy")["spec"]["egress"]] == [53, 443, 8787]' \
  'obj("NetworkPolicy")["spec"]["egress"][1]["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]'
expect_render "networkPolicy: an https Worker without a port is reached on 443" \
  "--set networkPolicy.enabled=true --set workerUrl=https://w.example.com/base --set publishKey.id=k --set publishKey.existingSecret=k" \
  'obj("NetworkPolicy")["spec"]["egress"][2]["ports"] == [{"port": 443, "protocol": "TCP"}]'
expect_render "tracing: off by default, no OTEL_* variable and no collector egress" "--set networkPolicy.enabled=true" \
  'not [k for k in env if k.startswith("OTEL_")]' \
  '[r["ports"][0]["port"] for r in obj("NetworkPolicy")["spec"]["egress"]] == [53, 443]'
expect_render "tracing.otlp.sampleRatio without an endpoint: nothing is rendered" "--set tracing.otlp.sampleRatio=0.5" \
  'not [k for k in env if k.startswith("OTEL_")]'
# The names the operator's flags read (telemetry/src/lib.rs), not copies of them.
otel_names="dict(re.findall(r'pub const (ENDPOINT_ENV|SAMPLE_RATIO_ENV): &str = \"([A-Z_]+)\";', open('telemetry/src/lib.rs').read()))"
expect_render "tracing.otlp.endpoint: the operator gets the variables its --otlp-endpoint and --otlp-sample-ratio read" \
  "--set tracing.otlp.endpoint=http://otel-collector.observability.svc:4318 --set-json tracing.otlp.sampleRatio=0.25" \
  "(lambda n: sorted(n.values()) == [\"OTEL_EXPORTER_OTLP_ENDPOINT\", \"OTEL_TRACES_SAMPLER_ARG\"])($otel_names)" \
  "(lambda n: env[n[\"ENDPOINT_ENV\"]] == \"http://otel-collector.observability.svc:4318\" and env[n[\"SAMPLE_RATIO_ENV\"]] == \"0.25\")($otel_names)" \
  'sorted(k for k in env if k.startswith("OTEL_")) == ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER_ARG"]'
expect_render "tracing.otlp.sampleRatio: 1 by default" \
  "--set tracing.otlp.endpoint=https://otel.example.com" \
  'env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "https://otel.example.com" and env["OTEL_TRACES_SAMPLER_ARG"] == "1"'
expect_render "tracing.otlp.sampleRatio as --set gives it (a string)" \
  "--set tracing.otlp.endpoint=http://c:4318 --set tracing.otlp.sampleRatio=0.05" \
  'env["OTEL_TRACES_SAMPLER_ARG"] == "0.05"'
expect_render "networkPolicy with tracing: egress to the collector's port, to the peers given" \
  "--set networkPolicy.enabled=true --set tracing.otlp.endpoint=http://otel-collector.observability.svc:4318 --set networkPolicy.otlpCollector.to[0].namespaceSelector.matchLabels.team=obs" \
  '[r["ports"][0]["port"] for r in obj("NetworkPolicy")["spec"]["egress"]] == [53, 443, 4318]' \
  'obj("NetworkPolicy")["spec"]["egress"][2]["to"] == [{"namespaceSelector": {"matchLabels": {"team": "obs"}}}]'
expect_render "networkPolicy with tracing: an https collector without a port is reached on 443, from anywhere" \
  "--set networkPolicy.enabled=true --set tracing.otlp.endpoint=https://otel.example.com/otlp" \
  'obj("NetworkPolicy")["spec"]["egress"][2] == {"ports": [{"port": 443, "protocol": "TCP"}]}'
expect_render "serviceMonitor: scrapes the metrics port of the operator's Service" \
  "--set metrics.serviceMonitor.enabled=true --set metrics.serviceMonitor.labels.release=prom" \
  'obj("ServiceMonitor")["spec"]["endpoints"][0]["port"] == "metrics" and obj("ServiceMonitor")["metadata"]["labels"]["release"] == "prom"' \
  'all(obj("Service")["metadata"]["labels"].get(k) == v for k, v in obj("ServiceMonitor")["spec"]["selector"]["matchLabels"].items())'
expect_render "inferencePodMonitor: a PodMonitor on the inference pods' metrics port, in every namespace, its interval set" \
  "--set metrics.inferencePodMonitor.enabled=true --set metrics.inferencePodMonitor.interval=15s --set metrics.inferencePodMonitor.labels.release=prom" \
  'obj("PodMonitor", "backhaul-backhaul-operator-inference")["metadata"]["namespace"] == "backhaul-system" and obj("PodMonitor")["metadata"]["labels"]["release"] == "prom"' \
  'obj("PodMonitor")["spec"]["namespaceSelector"] == {"any": True}' \
  '[(e["port"], e["path"], e["interval"]) for e in obj("PodMonitor")["spec"]["podMetricsEndpoints"]] == [("metrics", "/metrics", "15s")]' \
  'not has("ServiceMonitor") and not has("ConfigMap")'
expect_render "inferencePodMonitor: only watchNamespace's pods when it is set" \
  "--set metrics.inferencePodMonitor.enabled=true --set watchNamespace=models" \
  'obj("PodMonitor")["spec"]["namespaceSelector"] == {"matchNames": ["models"]}'
expect_render "inferencePodMonitor.namespaces: only the pods of the namespaces listed" \
  "--set metrics.inferencePodMonitor.enabled=true --set watchNamespace=models --set metrics.inferencePodMonitor.namespaces={ml,research}" \
  'obj("PodMonitor")["spec"]["namespaceSelector"] == {"matchNames": ["ml", "research"]}'
expect_render "dashboards: a ConfigMap labelled for Grafana's sidecar, holding dashboards/backhaul.json byte for byte" \
  "--set dashboards.enabled=true" \
  'obj("ConfigMap", "backhaul-backhaul-operator-dashboards")["metadata"]["labels"]["grafana_dashboard"] == "1"' \
  'obj("ConfigMap")["metadata"]["namespace"] == "backhaul-system" and list(obj("ConfigMap")["data"]) == ["backhaul.json"]' \
  'obj("ConfigMap")["data"]["backhaul.json"] == open("charts/backhaul-operator/dashboards/backhaul.json").read()' \
  'json.loads(obj("ConfigMap")["data"]["backhaul.json"])["uid"] == "backhaul"' \
  'not has("PodMonitor") and not has("ServiceMonitor")'
expect_render "dashboards: the sidecar's label and value, the namespace and annotations are settable" \
  "--set dashboards.enabled=true --set dashboards.label=example.com/dashboard --set dashboards.labelValue=backhaul --set dashboards.namespace=monitoring --set dashboards.annotations.grafana_folder=Backhaul" \
  'obj("ConfigMap")["metadata"]["labels"]["example.com/dashboard"] == "backhaul" and "grafana_dashboard" not in obj("ConfigMap")["metadata"]["labels"]' \
  'obj("ConfigMap")["metadata"]["namespace"] == "monitoring" and obj("ConfigMap")["metadata"]["annotations"] == {"grafana_folder": "Backhaul"}'

echo "== monitoring against the sources" >&2
# The PodMonitor and ServiceMonitor rendered, for the checks of charts/check-monitoring.py.
monitoring_args=(--set metrics.inferencePodMonitor.enabled=true --set metrics.serviceMonitor.enabled=true)
check "the PodMonitor selects the pods operator/src/build.rs labels (and no others), on their metrics listener's port and path" \
  bash -c 'render "$@" | python3 charts/check-monitoring.py podmonitor -' _ "${monitoring_args[@]}"
check "the dashboard's PromQL names only metrics, labels and outcomes that inference/ and operator/src/metrics.rs register" \
  bash -c 'render "$@" | python3 charts/check-monitoring.py dashboard "$chart/dashboards/backhaul.json" -' _ "${monitoring_args[@]}"
check "those checks refuse a broken dashboard (unknown metric or label, quantile not by le, ...) and a broken PodMonitor (port, path, selector)" \
  bash -c 'render "$@" | python3 charts/check-monitoring.py selftest -' _ "${monitoring_args[@]}"

# bad NAME EXPECTED-REGEX HELM-ARGS...: helm template fails and says EXPECTED.
bad() {
  local name=$1 expected=$2
  shift 2
  check "rejected: $name" bash -c '
    expected=$1; shift
    if out=$("$@" 2>&1); then echo "helm template succeeded; expected an error matching: $expected"; exit 1; fi
    printf "%s\n" "$out"
    printf "%s\n" "$out" | grep -Eq -- "$expected"' _ "$expected" render "$@"
}
echo "== bad values" >&2
bad "replicaCount -1" "at '/replicaCount': minimum" --set replicaCount=-1
bad "replicaCount not a number" "at '/replicaCount': got string, want integer" --set-string replicaCount=two
bad "workerUrl not a URL" "at '/workerUrl': 'backhaul.example.com' does not match pattern" --set workerUrl=backhaul.example.com --set publishKey.id=k --set publishKey.existingSecret=k
bad "workerUrl with another scheme" "at '/workerUrl': 'ftp://w.example.com' does not match pattern" --set workerUrl=ftp://w.example.com --set publishKey.id=k --set publishKey.existingSecret=k
bad "unknown top-level key" "additional properties 'replicas' not allowed" --set replicas=2
bad "misspelt nested key" "at '/publishKey': additional properties 'existingsecret' not allowed" --set publishKey.existingsecret=x
bad "the removed publishSecret (HMAC) values" "additional properties 'publishSecret' not allowed" --set publishSecret.value=x
bad "logFormat xml" "at '/logFormat': value must be one of" --set logFormat=xml
bad "image.pullPolicy Sometimes" "at '/image/pullPolicy': value must be one of" --set image.pullPolicy=Sometimes
bad "region not a Kubernetes name" "at '/regions/0': 'US East' does not match pattern" --set "regions={US East}"
bad "workerUrl without a publisher key" "workerUrl is set but the publisher's private key is not: set publishKey.existingSecret .* or publishKey.privateKeyPem" --set workerUrl=https://w.example.com --set publishKey.id=k
bad "workerUrl and a key without its id" "workerUrl is set but publishKey.id is not" --set workerUrl=https://w.example.com --set-file "publishKey.privateKeyPem=$key1"
bad "publishKey.id with a character the Worker refuses" "at '/publishKey/id': 'us.east' does not match pattern" --set workerUrl=https://w.example.com --set publishKey.id=us.east --set publishKey.existingSecret=k
bad "publishKey.id over 64 characters" "at '/publishKey/id': '$(printf 'k%.0s' {1..65})' does not match pattern" --set "publishKey.id=$(printf 'k%.0s' {1..65})"
bad "publishKey.privateKeyPem a path, not the PEM (--set instead of --set-file)" "publishKey.privateKeyPem is not a PKCS#8 PEM private key .*--set-file publishKey.privateKeyPem=key.pem" --set workerUrl=https://w.example.com --set publishKey.id=k --set publishKey.privateKeyPem=key.pem
bad "two replicas without leader election" "replicaCount is 2 but leaderElection.enabled is false" --set replicaCount=2 --set leaderElection.enabled=false
bad "a digest inferenceImage.tag without inferenceImage.cuda.tag" "the CUDA build's tag cannot be derived from it: set inferenceImage.cuda.tag" --set "inferenceImage.tag=sha256:$(printf '0%.0s' {1..64})"
bad "inferenceImage.cuda misspelt" "at '/inferenceImage/cuda': additional properties 'tags' not allowed" --set inferenceImage.cuda.tags=x
bad "inferencePodMonitor.interval not a duration" "at '/metrics/inferencePodMonitor/interval': '30 seconds' does not match pattern" --set "metrics.inferencePodMonitor.interval=30 seconds"
bad "dashboards.label not a label key" "at '/dashboards/label': 'grafana dashboard' does not match pattern" --set "dashboards.label=grafana dashboard"
bad "dashboards misspelt" "at '/dashboards': additional properties 'enable' not allowed" --set dashboards.enable=true
bad "tracing.otlp.sampleRatio 1.5 (a number)" "at '/tracing/otlp/sampleRatio': maximum: got 1.5, want 1" --set tracing.otlp.endpoint=http://c:4318 --set-json tracing.otlp.sampleRatio=1.5
bad "tracing.otlp.sampleRatio 1.5 (a --set string)" "at '/tracing/otlp/sampleRatio': '1.5' does not match pattern" --set tracing.otlp.endpoint=http://c:4318 --set tracing.otlp.sampleRatio=1.5
bad "tracing.otlp.sampleRatio below 0" "at '/tracing/otlp/sampleRatio': minimum: got -0.1, want 0" --set-json tracing.otlp.sampleRatio=-0.1
bad "tracing.otlp.endpoint without a scheme" "at '/tracing/otlp/endpoint': 'otel-collector:4318' does not match pattern" --set tracing.otlp.endpoint=otel-collector:4318
bad "tracing.otlp.endpoint over gRPC" "at '/tracing/otlp/endpoint': 'grpc://otel-collector:4317' does not match pattern" --set tracing.otlp.endpoint=grpc://otel-collector:4317
bad "tracing.otlp misspelt" "at '/tracing/otlp': additional properties 'endpiont' not allowed" --set tracing.otlp.endpiont=http://c:4318

# ---------------------------------------------------------------------------
# Against the local control plane
# ---------------------------------------------------------------------------
cluster_reachable() { [ -n "${KUBECONFIG:-}" ] && "$kubectl" get --raw /readyz >/dev/null 2>&1; }
if [ "${BACKHAUL_CHART_SKIP_CLUSTER:-0}" = 1 ]; then
  echo "== cluster: skipped (BACKHAUL_CHART_SKIP_CLUSTER=1)" >&2
elif ! cluster_reachable; then
  echo "== cluster: skipped (no reachable cluster; KUBECONFIG='${KUBECONFIG:-}'; start one with tests/cluster/up.sh)" >&2
else
  echo "== cluster" >&2
  suffix=$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')
  ns=bh-chart-$suffix
  watched=bh-chart-models-$suffix
  other=bh-chart-other-$suffix
  rel=bh-chart-$suffix
  fullname=$rel-backhaul-operator
  sa=system:serviceaccount:$ns:$fullname
  for n in "$ns" "$watched" "$other"; do
    "$kubectl" create namespace "$n" >/dev/null
    cleanups+=("'$kubectl' delete namespace '$n' --wait=false >/dev/null 2>&1")
  done
  cleanups=("'$helm' uninstall '$rel' -n '$ns' >/dev/null 2>&1" "'$helm' uninstall '$rel-scoped' -n '$ns' >/dev/null 2>&1" "${cleanups[@]}")

  # The operator's identity needs no real image: kwok runs the pods' lifecycle
  # (Running and Ready as soon as they are bound to its fake nodes).
  install_args=(--set workerUrl=https://backhaul.example.workers.dev --set publishKey.id=chart-test
    --set-file "publishKey.privateKeyPem=$key1"
    --set replicaCount=2 --set "regions={us-east,eu-west}" --set networkPolicy.enabled=true)
  check "helm install into a fresh namespace" "$helm" install "$rel" "$chart" -n "$ns" "${install_args[@]}"
  check "the operator Deployment becomes Available with 2 ready replicas" bash -c '
    "$1" -n "$2" wait --for=condition=Available "deployment/$3" --timeout="$4s" &&
    [ "$("$1" -n "$2" get "deployment/$3" -o jsonpath="{.status.readyReplicas}")" = 2 ]' \
    _ "$kubectl" "$ns" "$fullname" "$timeout"
  check "the API server accepted the pod's security settings and its publisher key mount" bash -c '
    pod=$("$1" -n "$2" get pods -l app.kubernetes.io/instance="$3" -o json)
    printf "%s" "$pod" | python3 -c "
import json, sys
pod = json.load(sys.stdin)[\"items\"][0][\"spec\"]
c = pod[\"containers\"][0]
assert c[\"securityContext\"][\"readOnlyRootFilesystem\"] is True, c
assert c[\"securityContext\"][\"capabilities\"][\"drop\"] == [\"ALL\"], c
assert pod[\"securityContext\"][\"runAsNonRoot\"] is True, pod
env = {e[\"name\"]: e.get(\"value\") for e in c[\"env\"]}
assert env[\"BACKHAUL_PUBLISH_KEY_ID\"] == \"chart-test\", env
assert env[\"BACKHAUL_PUBLISH_KEY_FILE\"] == \"/etc/backhaul/publish-key/publish-key.pem\", env
mount = [m for m in c[\"volumeMounts\"] if m[\"name\"] == \"publish-key\"][0]
assert mount[\"readOnly\"] is True and mount[\"mountPath\"] == \"/etc/backhaul/publish-key\", mount
vol = [v for v in pod[\"volumes\"] if v[\"name\"] == \"publish-key\"][0][\"secret\"]
assert vol[\"items\"] == [{\"key\": \"publish-key.pem\", \"path\": \"publish-key.pem\"}] and vol[\"defaultMode\"] == 0o440, vol
print(mount, vol)
"
    "$1" -n "$2" get secret "$4-publish-key" -o jsonpath="{.data.publish-key\.pem}" | base64 -d | cmp - "$key1"' \
    _ "$kubectl" "$ns" "$rel" "$fullname"
  check "the CRD is installed from the chart" "$kubectl" get crd modeldeployments.backhaul.dev

  # can NAMESPACE VERB RESOURCE [--subresource=S]: the operator's ServiceAccount
  # may do it there; cannot: it may not.
  # Only a plain yes or no counts; an error (empty output) fails both.
  can_i() { "$kubectl" auth can-i "${@:2}" -n "$1" --as="$sa" 2>/dev/null || true; }
  can() { [ "$(can_i "$@")" = yes ]; }
  cannot() { [ "$(can_i "$@")" = no ]; }
  export -f can_i can cannot
  export kubectl sa
  md=modeldeployments.backhaul.dev
  rbac_yes=()
  for v in get list watch patch update; do rbac_yes+=("$v $md"); done
  for v in get patch update; do rbac_yes+=("$v $md --subresource=status"); done
  rbac_yes+=("update $md --subresource=finalizers")
  for r in deployments.apps services poddisruptionbudgets.policy; do
    for v in get list watch create patch update delete; do rbac_yes+=("$v $r"); done
  done
  for v in get list watch; do rbac_yes+=("$v pods"); done
  for v in get list watch create; do rbac_yes+=("$v secrets"); done
  for v in create patch; do rbac_yes+=("$v events" "$v events.events.k8s.io"); done
  rbac_no=("create $md" "delete $md" "delete $md --subresource=status"
    "update secrets" "patch secrets" "delete secrets" "create pods" "delete pods" "update pods"
    "get configmaps" "delete namespaces" "create namespaces" "list nodes" "delete nodes"
    "create clusterroles.rbac.authorization.k8s.io" "create rolebindings.rbac.authorization.k8s.io"
    "delete statefulsets.apps" "create serviceaccounts --subresource=token" "create pods --subresource=exec"
    "get leases.coordination.k8s.io" "create leases.coordination.k8s.io")
  # shellcheck disable=SC2086 # each entry is a word list
  check "the ServiceAccount can do all the operator needs, in any namespace" bash -c '
    for ns in "$0" default; do for p in "$@"; do can "$ns" $p || { echo "cannot $p in $ns"; exit 1; }; done; done' \
    "$other" "${rbac_yes[@]}"
  # shellcheck disable=SC2086
  check "the ServiceAccount can do nothing else (change Secrets, pods, namespaces, RBAC, other Leases)" bash -c '
    for p in "$@"; do cannot "$0" $p || { echo "can $p in $0 (or the check failed)"; exit 1; }; done' \
    "$other" "${rbac_no[@]}"
  check "leader election: its own Lease in the release namespace, and only that one" bash -c '
    l=leases.coordination.k8s.io
    can "$0" create $l && can "$0" get "$l/$1" && can "$0" update "$l/$1" && can "$0" patch "$l/$1" &&
    cannot "$0" get $l/some-other-lease && cannot "$0" delete "$l/$1" && cannot "$0" list $l &&
    cannot "$2" create $l' "$ns" "$fullname" "$other"

  check "helm upgrade with a new publisher key rolls the operator pods" bash -c '
    rel=$1 ns=$2 fullname=$3
    rev() { "$kubectl" -n "$ns" get "deployment/$fullname" -o jsonpath="{.metadata.annotations.deployment\.kubernetes\.io/revision}"; }
    before=$(rev)
    "$helm" upgrade "$rel" "$chart" -n "$ns" --reuse-values --set-file "publishKey.privateKeyPem=$key2" &&
    "$kubectl" -n "$ns" rollout status "deployment/$fullname" --timeout="$4s" &&
    after=$(rev) && echo "Deployment revision $before -> $after" && [ "$after" -gt "$before" ] &&
    "$kubectl" -n "$ns" get secret "$fullname-publish-key" -o jsonpath="{.data.publish-key\.pem}" | base64 -d | cmp - "$key2"' \
    _ "$rel" "$ns" "$fullname" "$timeout"

  scoped=$rel-scoped
  scoped_sa=$scoped-backhaul-operator
  check "helm install with watchNamespace: permissions in that namespace only" bash -c '
    scoped=$1 ns=$2 watched=$3 other=$4
    s=system:serviceaccount:$ns:$scoped-backhaul-operator
    "$helm" install "$scoped" "$chart" -n "$ns" --set watchNamespace="$watched" &&
    [ "$("$kubectl" auth can-i patch deployments.apps -n "$watched" --as="$s")" = yes ] &&
    [ "$("$kubectl" auth can-i watch modeldeployments.backhaul.dev -n "$watched" --as="$s")" = yes ] &&
    [ "$("$kubectl" auth can-i patch deployments.apps -n "$other" --as="$s")" = no ] &&
    [ "$("$kubectl" auth can-i list modeldeployments.backhaul.dev -A --as="$s")" = no ]' \
    _ "$scoped" "$ns" "$watched" "$other"

  # The real operator binary, authenticated as that release's ServiceAccount
  # (a token from the TokenRequest API), run on this machine: the kwok pods of
  # the chart's Deployment run nothing. It watches only $watched, so it never
  # touches another test's objects, and publishes nowhere (no Worker URL).
  operator_bin=$CARGO_TARGET_DIR/debug/backhaul-operator
  check "the operator binary builds (cargo build -p backhaul-operator)" \
    cargo build --quiet --workspace --locked --bins --tests
  if [ -x "$operator_bin" ]; then
    "$kubectl" config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$tmp/ca.crt"
    server=$("$kubectl" config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')
    token=$("$kubectl" create token "$scoped_sa" -n "$ns" --duration=15m)
    printf '%s\n' "apiVersion: v1" "kind: Config" \
      "clusters: [{name: c, cluster: {server: \"$server\", certificate-authority: \"$tmp/ca.crt\"}}]" \
      "users: [{name: u, user: {token: \"$token\"}}]" \
      "contexts: [{name: c, context: {cluster: c, user: u}}]" \
      "current-context: c" >"$tmp/operator.kubeconfig"
    metrics_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # The environment the chart gives the container, less the downward API.
    KUBECONFIG=$tmp/operator.kubeconfig POD_NAMESPACE=$ns POD_NAME=chart-test-operator \
      BACKHAUL_WATCH_NAMESPACE=$watched BACKHAUL_LEADER_ELECTION=true BACKHAUL_LEASE_NAME=$scoped_sa \
      BACKHAUL_METRICS_ADDR=127.0.0.1:$metrics_port BACKHAUL_LOG_FORMAT=text RUST_LOG=info \
      "$operator_bin" run >"$tmp/operator.log" 2>&1 &
    operator_pid=$!
    cleanups=("kill -TERM $operator_pid 2>/dev/null" "${cleanups[@]}")
    export metrics_port operator_pid tmp
    check "the operator, with only the chart's permissions, takes its Lease and becomes ready" bash -c '
      ns=$1 lease=$2 deadline=$((SECONDS + $3))
      until curl -fsS --max-time 2 "http://127.0.0.1:$metrics_port/readyz" >/dev/null 2>&1; do
        kill -0 "$operator_pid" 2>/dev/null || { echo "the operator exited:"; cat "$tmp/operator.log"; exit 1; }
        [ $SECONDS -lt $deadline ] || { echo "not ready in time:"; cat "$tmp/operator.log"; exit 1; }
        sleep 0.2
      done
      until [ "$("$kubectl" -n "$ns" get lease "$lease" -o jsonpath="{.spec.holderIdentity}" 2>/dev/null)" = chart-test-operator ]; do
        [ $SECONDS -lt $deadline ] || { echo "Lease $lease not held:"; cat "$tmp/operator.log"; exit 1; }
        sleep 0.2
      done' _ "$ns" "$scoped_sa" "$timeout"
    check "it runs examples/smollm2.yaml to Ready: objects per region, status written, nothing forbidden" bash -c '
      watched=$1
      sed "s/^  namespace: default$/  namespace: $watched/" examples/smollm2.yaml | "$kubectl" apply -f - &&
      "$kubectl" -n "$watched" wait --for=condition=Ready modeldeployment/smollm2 --timeout="$2s" &&
      for region in us-east eu-west ap-south; do
        # Children are named <name>-<region>-<hash> (operator/README.md): find them by their labels.
        objects=$("$kubectl" -n "$watched" get deployments,services -o name -l "backhaul.dev/model=smollm2,backhaul.dev/region=$region")
        [ "$(printf "%s\n" "$objects" | grep -c .)" = 2 ] || { echo "region $region: expected a Deployment and a Service, got: $objects"; exit 1; }
      done &&
      pdbs=$("$kubectl" -n "$watched" get poddisruptionbudgets -o name -l backhaul.dev/model=smollm2) &&
      [ "$pdbs" = "$("$kubectl" -n "$watched" get poddisruptionbudgets -o name -l backhaul.dev/model=smollm2,backhaul.dev/region=us-east)" ] &&
      [ "$(printf "%s\n" "$pdbs" | grep -c .)" = 1 ] &&
      if grep -Ei "forbidden" "$tmp/operator.log"; then exit 1; fi' _ "$watched" "$timeout"
    check "deleting the ModelDeployment completes (the operator releases its finalizer)" bash -c '
      "$kubectl" -n "$1" delete modeldeployment smollm2 --timeout="$2s" &&
      if grep -Ei "forbidden" "$tmp/operator.log"; then exit 1; fi' _ "$watched" "$timeout"
    # stop_operator: SIGTERM, then its exit status within 30 s (it is this
    # shell's child: a zombie until waited for).
    stop_operator() {
      local deadline=$((SECONDS + 30)) state rc=0
      kill -TERM "$operator_pid" || return 1
      while state=$(awk '{print $3}' "/proc/$operator_pid/stat" 2>/dev/null) && [ "$state" != Z ]; do
        [ $SECONDS -lt $deadline ] || { echo "still running 30 s after SIGTERM"; return 1; }
        sleep 0.2
      done
      wait "$operator_pid" || rc=$?
      tail -n 5 "$tmp/operator.log"
      echo "exit status $rc"
      [ "$rc" = 0 ]
    }
    check "the operator exits 0 within 30 s of SIGTERM" stop_operator
  fi

  check "helm uninstall removes both releases' objects, cluster-scoped ones included" bash -c '
    rel=$1 ns=$2
    "$helm" uninstall "$rel" -n "$ns" --wait --timeout "$3s" && "$helm" uninstall "$rel-scoped" -n "$ns" --wait --timeout "$3s" &&
    left=$("$kubectl" get deployments,services,secrets,serviceaccounts,roles,rolebindings,networkpolicies -A \
      -l "app.kubernetes.io/instance in ($rel,$rel-scoped)" -o name) &&
    cluster=$("$kubectl" get clusterroles,clusterrolebindings -l "app.kubernetes.io/instance in ($rel,$rel-scoped)" -o name) &&
    echo "left in namespaces: [$left]; cluster-scoped: [$cluster]" && [ -z "$left" ] && [ -z "$cluster" ]' \
    _ "$rel" "$ns" "$timeout"
fi

echo >&2
if [ "$failed" -gt 0 ]; then
  printf 'test-chart: failed: %s\n' "${failures[@]}" >&2
fi
echo "chart: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
