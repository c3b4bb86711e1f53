# Shared by up.sh and down.sh: paths, ports and stopping what up.sh started.
# Sourced, not run.

cache=${BACKHAUL_CACHE:-$HOME/.cache/backhaul}
bin=$cache/bin

# Which control plane: `cluster` (the default) is the main one, the only one
# that may get the real node; any other name is a separate peer control plane
# (its own etcd, kube-apiserver, controller-manager, scheduler and kwok, never
# a real node), for tests of one cluster per region. The name is the state
# directory under $cache and the lock's name; a peer's ports default to the
# main ones plus BACKHAUL_CLUSTER_PORT_OFFSET (100 for a peer, 0 for the main
# cluster), so the two never collide.
cluster_name=${BACKHAUL_CLUSTER_NAME:-cluster}
if ! [[ $cluster_name =~ ^[a-z][a-z0-9-]{0,30}$ ]] || [[ $cluster_name == bin || $cluster_name == node ]]; then
  echo "cluster: BACKHAUL_CLUSTER_NAME=$cluster_name must be a lower-case name (letters, digits, -) other than bin or node" >&2
  exit 1
fi
if [ "$cluster_name" = cluster ]; then
  port_offset=${BACKHAUL_CLUSTER_PORT_OFFSET:-0}
else
  port_offset=${BACKHAUL_CLUSTER_PORT_OFFSET:-100}
fi
state=$cache/$cluster_name
pids=$state/pids
logs=$state/logs
pki=$state/pki
kubeconfig=$state/kubeconfig

apiserver_port=${BACKHAUL_APISERVER_PORT:-$((16443 + port_offset))}
etcd_port=${BACKHAUL_ETCD_PORT:-$((16379 + port_offset))}
etcd_peer_port=$((etcd_port + 1))
controller_manager_port=${BACKHAUL_CONTROLLER_MANAGER_PORT:-$((16457 + port_offset))}
scheduler_port=${BACKHAUL_SCHEDULER_PORT:-$((16459 + port_offset))}

# The real node (node.sh). Its bridge address is also where the API server
# listens when the node runs: pods reach it there, through the `kubernetes`
# Service.
node_name=backhaul-node
node_region=${BACKHAUL_NODE_REGION:-local}
node_bridge=backhaul0
node_cidr=10.201.0.0/24
node_host_ip=10.201.0.1
node_dir=$state/node
node_run=/run/backhaul-node
node_saved=$state/node-saved
node_taint_key=backhaul.dev/real-node
node_pause_image=registry.k8s.io/pause:3.10
kubelet_port=${BACKHAUL_KUBELET_PORT:-10250}
kubelet_healthz_port=${BACKHAUL_KUBELET_HEALTHZ_PORT:-10248}
kube_proxy_healthz_port=${BACKHAUL_KUBE_PROXY_HEALTHZ_PORT:-10256}
kube_proxy_metrics_port=${BACKHAUL_KUBE_PROXY_METRICS_PORT:-10249}

# Started in this order, stopped in the reverse one (the node's own
# components are stopped by node_down, before these).
components=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
node_components=(containerd kubelet kube-proxy)

log() { echo "$cluster_name: $*" >&2; }

# Holds $cache/.$cluster_name.lock (.cluster.lock for the main cluster) on
# fd 9 until the script exits, so that two callers (parallel test binaries,
# say) never start or stop the same control plane at once; a peer's lock is
# its own, so starting or stopping it never waits on the main cluster.
# Processes we start must not inherit fd 9 (see start_component).
take_lock() {
  mkdir -p "$cache"
  exec 9>"$cache/.$cluster_name.lock"
  flock 9
}

# The PID recorded for a component if that process is alive and still runs
# the binary it was started from (a recycled PID is not ours); empty
# otherwise.
live_pid() {
  local name=$1 pid exe want
  pid=$(cat "$pids/$name.pid" 2>/dev/null) || return 0
  [[ $pid =~ ^[0-9]+$ ]] || return 0
  want=$(cat "$pids/$name.exe" 2>/dev/null) || want=$(readlink -f "$bin/$name")
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 0
  # A binary rebuilt under it shows as "<path> (deleted)".
  [[ ${exe% (deleted)} == "$want" ]] && alive "$pid" && echo "$pid"
  return 0
}

# start_component NAME EXE ARGS...: detached (own session), stdin from
# /dev/null, output to its log, without our lock's fd 9, PID and binary
# recorded. `setsid` forks when it is a process group leader, so $! is not
# always the daemon: exec from a subshell, which never leads a group.
start_component() {
  local name=$1 exe=$2
  shift 2
  mkdir -p "$pids" "$logs"
  (exec setsid "$exe" "$@" </dev/null >"$logs/$name.log" 2>&1 9>&-) &
  echo $! >"$pids/$name.pid"
  readlink -f "$exe" >"$pids/$name.exe"
  log "started $name ($!)"
}

# Alive and not a zombie (a zombie's PID answers kill -0 until it is reaped,
# and in a container whose init does not reap, it never is).
alive() {
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

# stop_component NAME: TERM the recorded process, wait up to 10 s for it to
# go, then KILL. Removes the PID file. Safe when it does not run.
stop_component() {
  local name=$1 pid deadline
  pid=$(live_pid "$name")
  if [ -n "$pid" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while alive "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if alive "$pid"; then
      log "$name ($pid) ignored TERM for 10 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      while alive "$pid"; do sleep 0.1; done
    fi
    log "stopped $name ($pid)"
  fi
  rm -f "$pids/$name.pid" "$pids/$name.exe"
}

# Stops the node (if any) and then every control-plane process, newest
# first. Safe when nothing runs.
stop_components() {
  local i
  node_down
  for ((i = ${#components[@]} - 1; i >= 0; i--)); do
    stop_component "${components[i]}"
  done
}

# shellcheck source=node.sh
. "$(dirname "${BASH_SOURCE[0]}")/node.sh"
