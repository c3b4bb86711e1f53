# Sourced by scripts/images.sh: a Docker engine to build with. Uses the one
# $DOCKER_HOST (or the default socket) reaches; when none answers, starts
# Debian's dockerd (package docker.io, installed when missing) with all of
# its state under $BACKHAUL_CACHE/docker (kept: base images and build cache
# survive between runs) and /run/backhaul-docker, touching nothing else on
# the machine: no bridge, no iptables rules, no IP forwarding. Whoever
# sources this calls docker_engine_stop on exit; it stops only an engine it
# started, by PID.

docker_run_dir=/run/backhaul-docker
docker_started_pid=

docker_engine_start() {
  # Debian's client matches Debian's engine and has BuildKit built in;
  # newer clients without the buildx plugin refuse DOCKER_BUILDKIT=1.
  if [ -z "${DOCKER:-}" ]; then
    if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER=docker; fi
  fi
  if command -v "$DOCKER" >/dev/null && "$DOCKER" info >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "images: no Docker engine answers ('$DOCKER info' failed) and starting one needs root" >&2
    return 1
  fi
  if ! command -v dockerd >/dev/null || [ ! -x /usr/bin/docker ]; then
    echo "images: installing Debian's docker.io" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >&2
  fi
  DOCKER=/usr/bin/docker
  mkdir -p "$docker_run_dir" "$BACKHAUL_CACHE/docker"
  export DOCKER_HOST=unix://$docker_run_dir/docker.sock
  # A subshell that execs: $! is dockerd itself (see tests/cluster/lib.sh).
  (exec setsid dockerd \
    --data-root "$BACKHAUL_CACHE/docker" \
    --exec-root "$docker_run_dir/exec" \
    --host "$DOCKER_HOST" \
    --pidfile "$docker_run_dir/dockerd.pid" \
    --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
    --userland-proxy=false --log-level=warn \
    </dev/null >"$docker_run_dir/dockerd.log" 2>&1) &
  docker_started_pid=$!
  local deadline=$((SECONDS + 60))
  until "$DOCKER" info >/dev/null 2>&1; do
    if ! kill -0 "$docker_started_pid" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
      echo "images: dockerd did not start; its log:" >&2
      tail -n 20 "$docker_run_dir/dockerd.log" >&2 || true
      docker_engine_stop
      return 1
    fi
    sleep 0.2
  done
  echo "images: started dockerd ($docker_started_pid), state in $BACKHAUL_CACHE/docker" >&2
}

docker_engine_stop() {
  [ -n "$docker_started_pid" ] || return 0
  local pid=$docker_started_pid st
  docker_started_pid=
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 30))
  # Zombies count as gone: PID 1 here may never reap them.
  while st=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) && [ "$st" != Z ] && [ $SECONDS -lt $deadline ]; do
    sleep 0.2
  done
  if st=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) && [ "$st" != Z ]; then
    kill -KILL "$pid" 2>/dev/null || true
  fi
  # dockerd's own containerd goes with it, unless dockerd was killed.
  pkill -KILL -f "containerd --config $docker_run_dir/exec/containerd/containerd.toml" 2>/dev/null || true
  local mnt
  awk '{print $2}' /proc/mounts | { grep -E "^($docker_run_dir|$BACKHAUL_CACHE/docker)(/|$)" || true; } | sort -r |
    while read -r mnt; do umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true; done
  rm -rf "$docker_run_dir"
}
