#!/usr/bin/env bash
# Starts the local Kubernetes cluster the tests run against: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kwok (which fakes
# the GPU nodes' kubelets: pods bound to them go Running/Ready at once and
# nothing runs), and one real node (node.sh: containerd, runc, CNI bridge,
# kubelet, kube-proxy) whose pods really run.
#
# The real node, `backhaul-node`, is a CPU node (no nvidia.com/gpu) labelled
# topology.kubernetes.io/region=local (BACKHAUL_NODE_REGION) and
# backhaul.dev/node=real, and tainted backhaul.dev/real-node=true:NoSchedule,
# so that only pods that ask for it land there (toleration + node selector;
# a ModelDeployment region's nodeSelector and tolerations do both). Its pods
# live on the bridge backhaul0 (10.201.0.0/24); NodePort Services answer on
# 127.0.0.1. It needs root; BACKHAUL_NODE=0 (or running as another user)
# leaves it out, and then every server binds 127.0.0.1 only. With the node,
# the API server listens on the bridge address 10.201.0.1 instead, so that
# pods reach it through the `kubernetes` Service (no traffic leaves the
# machine: the bridge has no uplink).
#
# The fake GPU nodes, in three regions (all labelled type=kwok, annotated
# kwok.x-k8s.io/node=fake, no taints):
#
#   node              topology.kubernetes.io/region  nvidia.com/gpu.product   nvidia.com/gpu
#   gpu-us-east-0/1   us-east                        NVIDIA-H100-80GB-HBM3    8 each
#   gpu-eu-west-0/1   eu-west                        NVIDIA-H100-80GB-HBM3    8 each
#   gpu-ap-south-0    ap-south                       NVIDIA-A100-SXM4-80GB    8
#
# State (etcd data, certificates, kubeconfigs, logs, PIDs) lives under
# $BACKHAUL_CACHE/cluster (default ~/.cache/backhaul/cluster); down.sh stops
# everything and removes it. Progress goes to stderr; the last (and only) line
# on stdout is `export KUBECONFIG=<path>`.
#
# Idempotent: when the cluster is already up it only prints that line; when
# part of it died, it is stopped and started afresh.
#
# A second, separate control plane (one cluster per region, as a fleet runs):
#
#   BACKHAUL_CLUSTER_NAME=peer tests/cluster/up.sh     # prints export KUBECONFIG=.../peer/kubeconfig
#   BACKHAUL_CLUSTER_NAME=peer tests/cluster/down.sh
#
# Any name but `cluster` is a peer: its own etcd, kube-apiserver,
# controller-manager, scheduler and kwok with the same fake GPU nodes, its
# state (and kubeconfig) under $BACKHAUL_CACHE/<name>, its own lock, every port
# moved up by BACKHAUL_CLUSTER_PORT_OFFSET (default 100: API server 16543,
# etcd 16479/16480, controller-manager 16557, scheduler 16559), listening on
# 127.0.0.1 only, and never the real node: the node's bridge, containerd and
# CNI state are the machine's, and two kubelets on one machine would share one
# containerd and CNI. Starting or stopping a peer never touches the main
# cluster (another state directory, lock and set of PIDs).
#
# Environment: BACKHAUL_CACHE, BACKHAUL_NODE (1), BACKHAUL_CLUSTER_NAME
# (cluster), BACKHAUL_CLUSTER_PORT_OFFSET (0 for `cluster`, 100 for a peer),
# BACKHAUL_APISERVER_PORT (16443 + offset), BACKHAUL_ETCD_PORT (16379 + offset,
# and the next one for etcd's peers), BACKHAUL_CONTROLLER_MANAGER_PORT (16457 +
# offset), BACKHAUL_SCHEDULER_PORT (16459 + offset), BACKHAUL_CLUSTER_TIMEOUT
# (seconds to wait for readiness, 90).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
timeout=${BACKHAUL_CLUSTER_TIMEOUT:-90}

# Host tools (tool:Debian package), installed with apt-get only when missing.
missing=()
tools=(openssl:openssl curl:curl flock:util-linux setsid:util-linux base64:coreutils)
if node_enabled; then
  tools+=(containerd:containerd runc:runc /usr/lib/cni/bridge:containernetworking-plugins
    iptables:iptables nft:nftables conntrack:conntrack gcc:gcc /usr/lib/x86_64-linux-gnu/libc.a:libc6-dev
    python3:python3 ip:iproute2 pgrep:procps)
fi
for tool in "${tools[@]}"; do
  command -v "${tool%%:*}" >/dev/null || [ -e "${tool%%:*}" ] || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  else
    log "needs these packages installed: ${missing[*]}"
    exit 1
  fi
fi

# The binaries, built from the pinned Go modules (a no-op when up to date).
if node_enabled; then
  "$here/build-tools.sh" "${components[@]}" kubectl kubelet kube-proxy crictl
  apiserver_host=$node_host_ip
else
  "$here/build-tools.sh" "${components[@]}" kubectl
  apiserver_host=127.0.0.1
fi
kubectl=$bin/kubectl

take_lock

apiserver_url=https://$apiserver_host:$apiserver_port

readyz() {
  curl -fsS --max-time 2 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "$apiserver_url/readyz" 2>/dev/null | grep -qx ok
}

all_alive() {
  local name
  local want=("${components[@]}")
  if node_enabled; then want+=("${node_components[@]}"); fi
  for name in "${want[@]}"; do
    [ -n "$(live_pid "$name")" ] || return 1
  done
}

if [ -f "$kubeconfig" ] && all_alive && readyz; then
  log "already running ($apiserver_url); logs in $logs"
  echo "export KUBECONFIG=$kubeconfig"
  exit 0
fi

started=$(date +%s%3N)
stop_components
rm -rf "$state"
mkdir -p "$pids" "$logs" "$pki" "$state/kwok"
mkdir -m 700 "$state/etcd"

# Refuse ports someone else holds rather than fail obscurely later.
# (The API server's own port too when it binds 127.0.0.1: a peer given the
# main cluster's ports must fail here, before it starts anything.)
for port in "$etcd_port" "$etcd_peer_port" "$controller_manager_port" "$scheduler_port" \
  $([ "$apiserver_host" = 127.0.0.1 ] && echo "$apiserver_port") \
  $(node_enabled && echo "$kubelet_healthz_port $kube_proxy_healthz_port $kube_proxy_metrics_port"); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    log "port $port on 127.0.0.1 is in use by another process; set BACKHAUL_*_PORT (see $0)"
    exit 1
  fi
done

on_failure() {
  log "FAILED; logs are in $logs"
  stop_components
}
trap 'on_failure' ERR

if node_enabled; then
  # Before anything on the machine changes: what node_down restores.
  node_save_machine_state
  node_network_up
fi

# ---------------------------------------------------------------------------
# Certificates: one local CA signs everything; ECDSA P-256 keys throughout.
# ---------------------------------------------------------------------------
newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

newkey "$pki/ca.key"
openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=backhaul-local-ca" -days 3650 \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
  -out "$pki/ca.crt" 2>/dev/null

# sign NAME SUBJECT EXTENSIONS
sign() {
  newkey "$pki/$1.key"
  openssl req -new -key "$pki/$1.key" -subj "$2" 2>/dev/null |
    openssl x509 -req -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAserial "$pki/ca.srl" -CAcreateserial \
      -days 365 -extfile <(printf '%s\n' "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" "$3") \
      -out "$pki/$1.crt" 2>/dev/null
}

sign apiserver "/CN=kube-apiserver" "extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:$node_host_ip,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
sign admin "/O=system:masters/CN=backhaul-admin" "extendedKeyUsage=clientAuth"
sign controller-manager "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
sign scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
# The real node: the kubelet as system:node:<name> (the Node authorizer and
# NodeRestriction admission scope it to its own node), kube-proxy as
# system:kube-proxy, and the API server's client identity when it calls a
# kubelet (logs, exec, port-forward).
sign node "/O=system:nodes/CN=system:node:$node_name" "extendedKeyUsage=clientAuth"
sign node-proxy "/CN=system:kube-proxy" "extendedKeyUsage=clientAuth"
sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"
# The aggregation layer's front proxy has a CA of its own; without it the
# controller-manager and scheduler complain about a missing request-header CA.
newkey "$pki/front-proxy-ca.key"
openssl req -x509 -new -key "$pki/front-proxy-ca.key" -subj "/CN=backhaul-front-proxy-ca" -days 3650 \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
  -out "$pki/front-proxy-ca.crt" 2>/dev/null
newkey "$pki/front-proxy-client.key"
openssl req -new -key "$pki/front-proxy-client.key" -subj "/CN=front-proxy-client" 2>/dev/null |
  openssl x509 -req -CA "$pki/front-proxy-ca.crt" -CAkey "$pki/front-proxy-ca.key" \
    -CAserial "$pki/front-proxy-ca.srl" -CAcreateserial -days 365 \
    -extfile <(printf '%s\n' "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=clientAuth") \
    -out "$pki/front-proxy-client.crt" 2>/dev/null
# Service-account token signing key pair.
newkey "$pki/sa.key"
openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null

# write_kubeconfig FILE CLIENT
write_kubeconfig() {
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: backhaul
  cluster:
    server: $apiserver_url
    certificate-authority-data: $(base64 -w0 <"$pki/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 <"$pki/$2.crt")
    client-key-data: $(base64 -w0 <"$pki/$2.key")
contexts:
- name: backhaul
  context:
    cluster: backhaul
    user: $2
current-context: backhaul
EOF
  chmod 600 "$1"
}
write_kubeconfig "$state/controller-manager.kubeconfig" controller-manager
write_kubeconfig "$state/scheduler.kubeconfig" scheduler
# kwok acts for every node; it gets the admin identity, as kwokctl does.
write_kubeconfig "$state/admin.kubeconfig" admin
write_kubeconfig "$state/node.kubeconfig" node
write_kubeconfig "$state/node-proxy.kubeconfig" node-proxy

# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------
# Seconds since this script began starting things, to the millisecond.
since_start() {
  local ms=$(($(date +%s%3N) - started))
  echo "$((ms / 1000)).$(printf '%03d' $((ms % 1000)))"
}

# wait_until WHAT COMMAND...: polls COMMAND every 0.2 s until it succeeds or
# the overall deadline passes; fails early if a component has died.
deadline=$(($(date +%s) + timeout))
wait_until() {
  local what=$1 name
  shift
  until "$@"; do
    for name in "${components[@]}" "${node_components[@]}"; do
      if [ -f "$pids/$name.pid" ] && [ -z "$(live_pid "$name")" ]; then
        log "$name exited while waiting for $what; last lines of $logs/$name.log:"
        tail -n 20 "$logs/$name.log" >&2 || true
        return 1
      fi
    done
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "timed out after ${timeout}s waiting for $what"
      return 1
    fi
    sleep 0.2
  done
  log "$what: ok at +$(since_start)s"
}

start_component etcd "$bin/etcd" \
  --name=backhaul \
  --data-dir="$state/etcd" \
  --listen-client-urls="http://127.0.0.1:$etcd_port" \
  --advertise-client-urls="http://127.0.0.1:$etcd_port" \
  --listen-peer-urls="http://127.0.0.1:$etcd_peer_port" \
  --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer_port" \
  --initial-cluster="backhaul=http://127.0.0.1:$etcd_peer_port" \
  --unsafe-no-fsync \
  --log-level=warn

etcd_healthy() { curl -fsS --max-time 2 "http://127.0.0.1:$etcd_port/health" 2>/dev/null | grep -q '"health":"true"'; }
wait_until "etcd" etcd_healthy

start_component kube-apiserver "$bin/kube-apiserver" \
  --bind-address="$apiserver_host" \
  --advertise-address="$apiserver_host" \
  --secure-port="$apiserver_port" \
  --etcd-servers="http://127.0.0.1:$etcd_port" \
  --service-cluster-ip-range=10.96.0.0/16 \
  --endpoint-reconciler-type="$(node_enabled && echo lease || echo none)" \
  --kubelet-preferred-address-types=InternalIP \
  --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
  --authorization-mode=Node,RBAC \
  --enable-admission-plugins=NodeRestriction \
  --allow-privileged=true \
  --client-ca-file="$pki/ca.crt" \
  --tls-cert-file="$pki/apiserver.crt" \
  --tls-private-key-file="$pki/apiserver.key" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$pki/sa.pub" \
  --service-account-signing-key-file="$pki/sa.key" \
  --requestheader-client-ca-file="$pki/front-proxy-ca.crt" \
  --requestheader-allowed-names=front-proxy-client \
  --requestheader-username-headers=X-Remote-User \
  --requestheader-group-headers=X-Remote-Group \
  --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --proxy-client-cert-file="$pki/front-proxy-client.crt" \
  --proxy-client-key-file="$pki/front-proxy-client.key" \
  --profiling=false

wait_until "kube-apiserver /readyz" readyz

# Client rate limit 200/s (default 20): at the default, creating the
# ReplicaSets and Pods of 3,000 Deployments (about five requests each) takes
# the controller-manager 12 minutes, and the scale benchmark would measure
# that instead of the operator.
start_component kube-controller-manager "$bin/kube-controller-manager" \
  --kubeconfig="$state/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$state/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$state/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 \
  --secure-port="$controller_manager_port" \
  --cert-dir="$state/controller-manager" \
  --leader-elect=false \
  --controllers='*' \
  --use-service-account-credentials=true \
  --service-account-private-key-file="$pki/sa.key" \
  --root-ca-file="$pki/ca.crt" \
  --cluster-signing-cert-file="$pki/ca.crt" \
  --cluster-signing-key-file="$pki/ca.key" \
  --kube-api-qps=200 \
  --kube-api-burst=400 \
  --profiling=false

start_component kube-scheduler "$bin/kube-scheduler" \
  --kubeconfig="$state/scheduler.kubeconfig" \
  --authentication-kubeconfig="$state/scheduler.kubeconfig" \
  --authorization-kubeconfig="$state/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 \
  --secure-port="$scheduler_port" \
  --cert-dir="$state/scheduler" \
  --leader-elect=false \
  --profiling=false

# kwok reads its Stage configuration (how fake nodes and pods change state)
# from kwok-stages.yaml; KWOK_WORKDIR keeps it away from ~/.kwok.
KWOK_WORKDIR=$state/kwok start_component kwok "$bin/kwok" \
  --kubeconfig="$state/admin.kubeconfig" \
  --config="$here/kwok-stages.yaml" \
  --manage-all-nodes=false \
  --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
  --node-lease-duration-seconds=40 \
  --cidr=10.244.0.0/16 \
  --node-ip=10.0.0.1

# Fake GPU nodes: region:count:product.
nodes=()
for spec in us-east:2:NVIDIA-H100-80GB-HBM3 eu-west:2:NVIDIA-H100-80GB-HBM3 ap-south:1:NVIDIA-A100-SXM4-80GB; do
  IFS=: read -r region count product <<<"$spec"
  for ((i = 0; i < count; i++)); do
    name=gpu-$region-$i
    nodes+=("$name")
    cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: $name
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/hostname: $name
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    topology.kubernetes.io/region: $region
    topology.kubernetes.io/zone: $region-a
    nvidia.com/gpu.present: "true"
    nvidia.com/gpu.product: $product
    nvidia.com/gpu.count: "8"
status:
  capacity: &resources
    cpu: "96"
    memory: 1536Gi
    ephemeral-storage: 2Ti
    pods: "110"
    nvidia.com/gpu: "8"
  allocatable: *resources
EOF
  done
done >"$state/nodes.yaml"
"$kubectl" --kubeconfig="$state/admin.kubeconfig" apply -f "$state/nodes.yaml" >"$logs/nodes.log" 2>&1

controller_manager_healthy() { curl -fsSk --max-time 2 "https://127.0.0.1:$controller_manager_port/healthz" 2>/dev/null | grep -qx ok; }
scheduler_healthy() { curl -fsSk --max-time 2 "https://127.0.0.1:$scheduler_port/healthz" 2>/dev/null | grep -qx ok; }
nodes_ready() {
  local ready
  ready=$("$kubectl" --kubeconfig="$state/admin.kubeconfig" get nodes -l type=kwok \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null | grep -c '^True$') || true
  [ "$ready" = "${#nodes[@]}" ]
}
# The service-account controllers are up once the default namespace has its
# ServiceAccount; pods cannot be admitted into a namespace before that.
default_service_account() { "$kubectl" --kubeconfig="$state/admin.kubeconfig" get serviceaccount default -n default >/dev/null 2>&1; }

wait_until "kube-controller-manager /healthz" controller_manager_healthy
wait_until "kube-scheduler /healthz" scheduler_healthy
wait_until "${#nodes[@]} nodes Ready" nodes_ready
wait_until "the default ServiceAccount" default_service_account

if node_enabled; then
  node_up
  wait_until "node $node_name Ready" node_is_ready
fi

# The kubeconfig appears only now, once everything is ready: whoever finds it
# may use the cluster.
cp "$state/admin.kubeconfig" "$kubeconfig.tmp"
mv "$kubeconfig.tmp" "$kubeconfig"
trap - ERR
log "ready in $(since_start)s at $apiserver_url; logs in $logs"
echo "export KUBECONFIG=$kubeconfig"
