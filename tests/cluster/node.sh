# The local cluster's one real node: containerd + runc (Debian's packages),
# CNI bridge networking (Debian's containernetworking-plugins), a kubelet and
# kube-proxy (iptables mode) built from the same k8s.io/kubernetes module as
# the control plane. Sourced by up.sh and down.sh after lib.sh; not run.
#
# What it makes on the machine, and what node_down removes again:
#   - the bridge $node_bridge ($node_host_ip/24, the pods' gateway and the
#     address the API server listens on) and routes sending the Service and
#     kwok ranges onto it, so no cluster address ever leaves by eth0;
#   - containerd (state under $node_dir and $node_run), its shims, the pods'
#     mounts and network namespaces;
#   - kubepods cgroups in every cgroup v1 hierarchy;
#   - iptables chains KUBE-* (kubelet, kube-proxy) and CNI-* (portmap);
#     nftables tables that iptables-nft created for them;
#   - sysctls the kubelet, kube-proxy and the bridge plugin set (saved in
#     $node_saved first, restored from it);
#   - the fixed paths the kubelet and CNI write whatever their flags say
#     (/var/lib/kubelet/device-plugins, /var/log/containers, /var/lib/cni,
#     /var/run/netns), removed when they did not exist before.
#
# Facts of this machine kind that shaped it (verified here): cgroups are v1
# in hybrid mode (kubelet: failCgroupV1 false, cgroupDriver cgroupfs, which
# containerd 1.6 cannot report); CAP_SYS_RESOURCE is missing (containerd:
# restrict_oom_score_adj, kubelet: --oom-score-adj=0); crun fails, runc
# works; no registry (images are built here and imported); no IPVS.

# Sysctls written by the kubelet (protectKernelDefaults: false), kube-proxy
# (route_localnet for NodePorts on 127.0.0.1, bridge-nf-call) and the CNI
# bridge plugin (ip_forward, as the pods' gateway).
node_sysctls=(
  net.ipv4.ip_forward
  net.ipv4.conf.all.route_localnet
  net.bridge.bridge-nf-call-iptables
  net.bridge.bridge-nf-call-ip6tables
  vm.overcommit_memory
  vm.panic_on_oom
  kernel.panic
  kernel.panic_on_oops
  kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes
)
# Paths the kubelet, containerd and CNI use whatever they are told.
node_fixed_paths=(/var/lib/kubelet /var/log/containers /var/lib/cni /var/run/netns)
# Ranges routed onto the bridge: Services (kube-proxy rewrites what it knows;
# the rest must not go out by the default route), kwok's fake pod and node
# addresses (kube-proxy writes rules to them too).
node_blackholed=(10.96.0.0/16 10.244.0.0/16 10.0.0.1/32)

node_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

node_crictl() { "$bin/crictl" --config /dev/null --runtime-endpoint "unix://$node_run/containerd.sock" --timeout 20s "$@"; }
node_ctr() { ctr --address "$node_run/containerd.sock" --namespace k8s.io "$@"; }
node_ctr_answers() { node_ctr version >/dev/null 2>&1; }

# node_enabled: whether this cluster gets the real node (root only: it makes
# network devices, cgroups and mounts). BACKHAUL_NODE=0 turns it off. Only
# the main cluster (BACKHAUL_CLUSTER_NAME unset or `cluster`) ever gets it:
# the node's bridge, containerd, CNI state and ports are the machine's, and
# two kubelets on one machine would share one containerd and CNI.
node_enabled() {
  [ "${cluster_name:-cluster}" = cluster ] && [ "${BACKHAUL_NODE:-1}" != 0 ] && [ "$(id -u)" = 0 ]
}

# --- saving and restoring the machine's state --------------------------------

node_save_machine_state() {
  [ -f "$node_saved/done" ] && return 0
  mkdir -p "$node_saved"
  local key path
  for key in "${node_sysctls[@]}"; do
    path=/proc/sys/${key//.//}
    [ -f "$path" ] && printf '%s=%s\n' "$key" "$(cat "$path")"
  done >"$node_saved/sysctl"
  for path in "${node_fixed_paths[@]}"; do
    [ -e "$path" ] && echo "$path"
  done >"$node_saved/paths"
  if command -v nft >/dev/null; then
    nft list tables 2>/dev/null >"$node_saved/nft-tables" || true
  fi
  touch "$node_saved/done"
}

node_restore_sysctls() {
  [ -f "$node_saved/sysctl" ] || return 0
  local key value path
  while IFS='=' read -r key value; do
    path=/proc/sys/${key//.//}
    if [ -f "$path" ] && [ "$(cat "$path")" != "$value" ]; then
      echo "$value" >"$path" || log "could not restore $key=$value"
    fi
  done <"$node_saved/sysctl"
}

# Drops every KUBE-* and CNI-* chain and rule, keeping everything else.
node_remove_iptables() {
  local save restore
  for pair in iptables-save:iptables-restore ip6tables-save:ip6tables-restore; do
    save=${pair%%:*}
    restore=${pair#*:}
    command -v "$save" >/dev/null || continue
    if "$save" 2>/dev/null | grep -qE 'KUBE-|CNI-'; then
      "$save" 2>/dev/null | grep -vE 'KUBE-|CNI-' | "$restore" || log "$restore failed"
    fi
  done
  # iptables-nft made these tables for the rules above; drop them when they
  # were not there before.
  if command -v nft >/dev/null && [ -f "$node_saved/nft-tables" ]; then
    local table
    nft list tables 2>/dev/null | while read -r _ family name; do
      table="table $family $name"
      grep -qxF "$table" "$node_saved/nft-tables" || nft delete table "$family" "$name" 2>/dev/null || true
    done
  fi
}

node_remove_fixed_paths() {
  local path
  [ -f "$node_saved/paths" ] || return 0
  for path in "${node_fixed_paths[@]}"; do
    if [ -e "$path" ] && ! grep -qxF "$path" "$node_saved/paths"; then
      rm -rf "$path"
    fi
  done
}

# Unmounts everything under the node's directories, deepest first.
node_unmount_all() {
  local mnt
  awk '{print $2}' /proc/mounts | { grep -E "^($node_dir|$node_run|/var/run/netns|/run/netns)(/|$)" || true; } | sort -r |
    while read -r mnt; do
      umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || log "could not unmount $mnt"
    done
}

# Removes the kubepods cgroup trees (and the pods' cgroups under them) from
# every hierarchy, children first.
node_remove_cgroups() {
  local dir
  for dir in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [ -d "$dir" ] || continue
    find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [ -d "$dir" ] && log "cgroup $dir still has processes"
  done
  return 0
}

# --- network -------------------------------------------------------------------

node_network_up() {
  if ! ip link show "$node_bridge" >/dev/null 2>&1; then
    ip link add "$node_bridge" type bridge
  fi
  ip addr replace "$node_host_ip/24" dev "$node_bridge"
  ip link set "$node_bridge" up
  local range
  for range in "${node_blackholed[@]}"; do
    ip route replace "$range" dev "$node_bridge"
  done
}

node_network_down() {
  local range
  for range in "${node_blackholed[@]}"; do
    ip route del "$range" dev "$node_bridge" 2>/dev/null || true
  done
  # Pod ends of veth pairs go with their network namespaces; a host end
  # left behind (a pod killed with its shim) is ours if it is on the bridge.
  local link
  for link in $(ip -o link show master "$node_bridge" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link del "$link" 2>/dev/null || true
  done
  ip link del "$node_bridge" 2>/dev/null || true
}

# --- configuration files ---------------------------------------------------------

node_write_config() {
  mkdir -p "$node_dir/cni/net.d" "$node_dir/cni/ipam" "$node_dir/kubelet" "$node_dir/pod-logs" "$node_run"
  cat >"$node_dir/containerd.toml" <<EOF
version = 2
root = "$node_dir/containerd"
state = "$node_run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "$node_run/containerd.sock"

[ttrpc]
  address = "$node_run/containerd.sock.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$node_pause_image"
  # The kernel here withholds CAP_SYS_RESOURCE: runc may not lower a
  # container's oom_score_adj below containerd's own.
  restrict_oom_score_adj = true
  # Pods' network namespaces under /run/backhaul-node, not /var/run/netns.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$node_dir/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ""
EOF
  # ipMasq off: pods only talk to this machine; no NAT rules to leave behind.
  cat >"$node_dir/cni/net.d/10-backhaul.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "backhaul",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$node_bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$node_dir/cni/ipam",
        "ranges": [[{"subnet": "$node_cidr", "gateway": "$node_host_ip"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  cat >"$node_dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroups are v1 (hybrid) here, and containerd 1.6 cannot tell the driver.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$node_run/containerd.sock
address: $node_host_ip
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $kubelet_healthz_port
podLogsDir: $node_dir/pod-logs
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization:
  mode: Webhook
registerWithTaints:
- key: $node_taint_key
  value: "true"
  effect: NoSchedule
serializeImagePulls: false
# Mounted Secrets are refreshed at each pod sync: every 10 s here (1 min by
# default), so the rotation tests of the Worker's credential take seconds.
syncFrequency: 10s
failSwapOn: false
resolvConf: /etc/resolv.conf
maxPods: 64
# The machine's disk is shared with builds: evict only when it is really full.
evictionHard:
  memory.available: 200Mi
  nodefs.available: 2%
  nodefs.inodesFree: 2%
  imagefs.available: 2%
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
EOF
  cat >"$node_dir/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: $state/node-proxy.kubeconfig
hostnameOverride: $node_name
clusterCIDR: $node_cidr
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:$kube_proxy_healthz_port
metricsBindAddress: 127.0.0.1:$kube_proxy_metrics_port
# NodePorts answer on 127.0.0.1 (where the Worker under wrangler dev reaches
# a region) and on the bridge.
nodePortAddresses: ["127.0.0.0/8", "$node_cidr"]
iptables:
  localhostNodePorts: true
  syncPeriod: 10s
  minSyncPeriod: 0s
# Zero: leave the machine's conntrack sysctls alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
}

# --- processes -------------------------------------------------------------------

# node_import_images TAR...: images into containerd's k8s.io namespace,
# where the kubelet finds them (pods use imagePullPolicy IfNotPresent).
node_import_images() {
  local tar
  for tar in "$@"; do
    node_ctr images import --all-platforms --snapshotter overlayfs "$tar" >&2
  done
}

node_up() {
  node_write_config
  start_component containerd "$(command -v containerd)" --config "$node_dir/containerd.toml"
  wait_until "containerd" node_ctr_answers
  # The pod sandbox image, built here (no registry is reachable).
  local pause_tar=$state/pause.tar
  "$node_here/node/pause-image.sh" "$node_pause_image" "$pause_tar" >&2
  node_import_images "$pause_tar"
  rm -f "$pause_tar"

  start_component kubelet "$bin/kubelet" \
    --config="$node_dir/kubelet.yaml" \
    --kubeconfig="$state/node.kubeconfig" \
    --root-dir="$node_dir/kubelet" \
    --cert-dir="$node_dir/kubelet/pki" \
    --hostname-override="$node_name" \
    --node-ip="$node_host_ip" \
    --node-labels="topology.kubernetes.io/region=$node_region,topology.kubernetes.io/zone=$node_region-a,backhaul.dev/node=real" \
    --oom-score-adj=0 \
    --v=1
  start_component kube-proxy "$bin/kube-proxy" --config="$node_dir/kube-proxy.yaml" --v=1
}

node_is_ready() {
  [ "$("$kubectl" --kubeconfig="$state/admin.kubeconfig" get node "$node_name" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

# Stops the node and removes everything it made. Safe when nothing runs and
# after a half-finished start.
node_down() {
  # Nothing to undo unless a node was started (its saved state is written
  # before anything is changed).
  [ -f "$node_saved/done" ] || [ -n "$(live_pid containerd)$(live_pid kubelet)" ] || return 0
  stop_component kube-proxy
  stop_component kubelet
  if [ -n "$(live_pid containerd)" ]; then
    # Pods first: their shims outlive containerd, and removing a sandbox
    # tears down its mounts, network namespace and veth.
    node_crictl rmp --all --force >/dev/null 2>&1 || log "crictl rmp failed"
  fi
  stop_component containerd
  # Shims still running (a sandbox crictl could not remove) hold our mounts.
  local pid
  for pid in $(pgrep -f "containerd-shim-runc-v2 -namespace k8s.io -id .* -address $node_run/containerd.sock" || true); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  node_unmount_all
  node_remove_cgroups
  node_network_down
  node_remove_iptables
  node_restore_sysctls
  node_remove_fixed_paths
  rm -rf "$node_run" "$node_dir" "$node_saved"
}
