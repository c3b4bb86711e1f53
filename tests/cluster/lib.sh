# Shared by up.sh and down.sh: paths, ports and stopping what up.sh started.
# Sourced, not run.

cache=${BACKHAUL_CACHE:-$HOME/.cache/backhaul}
bin=$cache/bin
state=$cache/cluster
pids=$state/pids
logs=$state/logs
pki=$state/pki
kubeconfig=$state/kubeconfig

apiserver_port=${BACKHAUL_APISERVER_PORT:-16443}
etcd_port=${BACKHAUL_ETCD_PORT:-16379}
etcd_peer_port=$((etcd_port + 1))
controller_manager_port=${BACKHAUL_CONTROLLER_MANAGER_PORT:-16457}
scheduler_port=${BACKHAUL_SCHEDULER_PORT:-16459}

# Started in this order, stopped in the reverse one.
components=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

log() { echo "cluster: $*" >&2; }

# Holds $cache/.cluster.lock on fd 9 until the script exits, so that two
# callers (parallel test binaries, say) never start or stop at once.
# Processes we start must not inherit fd 9 (see start_component).
take_lock() {
  mkdir -p "$cache"
  exec 9>"$cache/.cluster.lock"
  flock 9
}

# The PID recorded for a component if that process is alive and still runs
# our binary (a recycled PID is not ours); empty otherwise.
live_pid() {
  local name=$1 pid exe
  pid=$(cat "$pids/$name.pid" 2>/dev/null) || return 0
  [[ $pid =~ ^[0-9]+$ ]] || return 0
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 0
  # A binary rebuilt under it shows as "<path> (deleted)".
  [[ ${exe% (deleted)} == "$(readlink -f "$bin/$name")" ]] && echo "$pid"
  return 0
}

# Alive and not a zombie (a zombie's PID answers kill -0 until it is reaped,
# and in a container whose init does not reap, it never is).
alive() {
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

# TERM every recorded process (newest first), wait up to 10 s for each to go,
# then KILL. Removes the PID files. Safe when nothing runs.
stop_components() {
  local i name pid deadline
  for ((i = ${#components[@]} - 1; i >= 0; i--)); do
    name=${components[i]}
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
    rm -f "$pids/$name.pid"
  done
}
