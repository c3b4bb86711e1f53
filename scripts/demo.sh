#!/usr/bin/env bash
# make demo: the whole Backhaul path on this machine, in one command.
#
#   scripts/demo.sh          build, start everything, walk through a request and a failover,
#                            then leave it all running for you to poke at
#   scripts/demo.sh --once   the same, then stop everything (also: DEMO_KEEP=0)
#   scripts/demo.sh down     stop everything a previous run started (make demo-down)
#
# What runs where:
#   - the local Kubernetes cluster (tests/cluster/up.sh): the control plane, kwok's fake GPU
#     nodes, and one real node (containerd, kubelet, kube-proxy) whose pods really run;
#   - the images `make images` builds (operator, CPU inference), loaded into that node;
#   - the Helm chart, installed as a user installs it: the operator runs in its pod on the
#     real node, from the image built here, with the chart's ServiceAccount;
#   - examples/local-demo.yaml: SmolLM2-135M-Instruct in regions us-east and eu-west, each a
#     pod the operator makes on the real node (weights on a PersistentVolumeClaim), each
#     reached through a NodePort Service on 127.0.0.1;
#   - the routing Worker under wrangler dev (local mode, route table persisted under the
#     cache), on the node's bridge address 10.201.0.1 so that the operator's pod reaches it.
# The failover is a real one: the us-east pod's container is killed through the CRI.
#
# Idempotent: a second run stops what the first left running and starts afresh (the
# control plane, if already up, is reused). State and logs: $BACKHAUL_CACHE/demo.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$repo_root"

state=$BACKHAUL_CACHE/demo
pids=$state/pids
logs=$state/logs
namespace=backhaul-demo
release=backhaul-operator
release_namespace=backhaul-system
model=$BACKHAUL_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf
served=smollm2-135m
venv=$BACKHAUL_CACHE/venv-openai
openai_version=${DEMO_OPENAI_VERSION:-}
timeout=${DEMO_TIMEOUT:-120}
keep=${DEMO_KEEP:-1}

say() { printf '\033[1m%s\033[0m\n' "$*"; }
info() { printf '  %s\n' "$*"; }
die() {
  echo "demo: $*" >&2
  exit 1
}

# alive PID: running and not a zombie.
alive() {
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

# recorded NAME: the PID recorded for NAME if that process is still ours (its
# command line still mentions what we started), empty otherwise.
recorded() {
  local pid want
  pid=$(cut -d' ' -f1 "$pids/$1.pid" 2>/dev/null) || return 0
  want=$(cut -d' ' -f2- "$pids/$1.pid")
  [[ $pid =~ ^[0-9]+$ ]] || return 0
  alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$want" && echo "$pid"
  return 0
}

# stop NAME: TERM its process group (each piece runs in a session of its own, so
# wrangler's workerd goes with it), KILL after 15 s.
stop() {
  local name=$1 pid deadline
  pid=$(recorded "$name")
  if [ -n "$pid" ]; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 15))
    while alive "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if alive "$pid"; then kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; fi
    # Stragglers of the group (workerd under wrangler).
    pkill -KILL -s "$pid" 2>/dev/null || true
    echo "demo: stopped $name (pid $pid)" >&2
  fi
  rm -f "$pids/$name.pid"
}

# start NAME MATCH LOG CMD...: CMD in a new session, output to LOG, its PID
# recorded with MATCH (a substring of its command line).
start() {
  local name=$1 match=$2 log=$3
  shift 3
  setsid "$@" >"$log" 2>&1 </dev/null 9>&- &
  echo "$! $match" >"$pids/$name.pid"
}

down() {
  local kubeconfig=$BACKHAUL_CACHE/cluster/kubeconfig
  if [ -f "$kubeconfig" ] && kubectl --kubeconfig "$kubeconfig" --request-timeout=3s get --raw /readyz >/dev/null 2>&1; then
    # The operator (its pod) withdraws the routes while the Worker still runs.
    kubectl --kubeconfig "$kubeconfig" --request-timeout=10s delete modeldeployment -n "$namespace" --all \
      --timeout=30s >/dev/null 2>&1 || true
    helm --kubeconfig "$kubeconfig" uninstall "$release" -n "$release_namespace" --wait --timeout 60s >/dev/null 2>&1 || true
    kubectl --kubeconfig "$kubeconfig" delete namespace "$namespace" "$release_namespace" --wait=false >/dev/null 2>&1 || true
    kubectl --kubeconfig "$kubeconfig" delete pv backhaul-demo-models --wait=false >/dev/null 2>&1 || true
  fi
  for name in worker; do stop "$name"; done
  if [ -f "$state/cluster-started-by-demo" ]; then
    tests/cluster/down.sh || true
    rm -f "$state/cluster-started-by-demo"
  fi
}

case "${1:-}" in
  down | stop)
    down
    exit 0
    ;;
  --once) keep=0 ;;
  "" | up) ;;
  -h | --help)
    sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *) die "unknown argument '$1' (use: up, --once, down)" ;;
esac

# cluster_var NAME: a setting of the local cluster (tests/cluster/lib.sh),
# read in a shell of its own so that its names do not clobber ours.
cluster_var() { bash -c "source tests/cluster/lib.sh && echo \"\${$1}\""; }

# free_port [PREFERRED]: PREFERRED if nothing listens there, else a free port.
free_port() {
  python3 - "${1:-0}" <<'EOF'
import socket, sys
want = int(sys.argv[1])
for port in ([want] if want else []) + [0]:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    print(s.getsockname()[1])
    break
EOF
}

# wait_until SECONDS WHAT LOG CMD...: polls CMD every 0.2 s; fails naming WHAT
# and its log when SECONDS pass.
wait_until() {
  local limit=$1 what=$2 log=$3 deadline
  shift 3
  deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      echo "demo: $what not ready within ${limit}s; last lines of $log:" >&2
      tail -n 20 "$log" >&2 || true
      return 1
    fi
    sleep 0.2
  done
}

demo_started=$(date +%s)
mkdir -p "$pids" "$logs"
down 2>/dev/null
ran_ok=0
on_exit() {
  if [ "$ran_ok" = 0 ]; then
    echo "demo: FAILED; stopping what it started (logs stay in $logs)" >&2
    down
  elif [ "$keep" = 0 ]; then
    say "Stopping everything (--once)"
    down
  fi
}
trap on_exit EXIT
trap 'exit 130' INT TERM

[ -f "$model" ] || die "$model is missing: run make model"

[ "$(id -u)" = 0 ] || die "the demo's real node needs root (network devices, cgroups, mounts)"

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import openai' 2>/dev/null; then
  step "OpenAI Python client (PyPI) into $venv" bash -c \
    "python3 -m venv '$venv' && '$venv/bin/pip' install --quiet --disable-pip-version-check 'openai${openai_version:+==$openai_version}'"
fi

cluster_kubeconfig=$BACKHAUL_CACHE/cluster/kubeconfig
if ! { [ -f "$cluster_kubeconfig" ] && kubectl --kubeconfig "$cluster_kubeconfig" --request-timeout=3s get --raw /readyz >/dev/null 2>&1; }; then
  touch "$state/cluster-started-by-demo"
fi
kubeconfig_line=$(step "local cluster (control plane, kwok GPU nodes, one real node)" \
  env BACKHAUL_NODE=1 tests/cluster/up.sh | tail -n 1)
eval "$kubeconfig_line"
export KUBECONFIG
node_name=$(cluster_var node_name)
node_host_ip=$(cluster_var node_host_ip)
node_taint_key=$(cluster_var node_taint_key)
node_crictl() { "$BACKHAUL_CACHE/bin/crictl" --config /dev/null --runtime-endpoint "unix://$(cluster_var node_run)/containerd.sock" "$@"; }
kubectl get node "$node_name" >/dev/null 2>&1 || die "the cluster has no real node ($node_name): was it started with BACKHAUL_NODE=0?"
# Builds the workspace (a no-op when it is up to date) and the images from it.
step "images (make images), loaded into $node_name" scripts/images.sh --load operator inference >/dev/null

# The cluster's publisher key (docs/publication.md): an Ed25519 private key for the
# operator, its public key (with the cluster's scope) for the Worker.
key_id=local
key_file=$state/publish-key.pem
rm -f "$state/publish-secret" "$key_file"
(umask 077 && openssl genpkey -algorithm ed25519 -out "$key_file")
chmod 600 "$key_file"
public_key=$(openssl pkey -in "$key_file" -pubout -outform DER | tail -c 32 | base64)
worker_port=$(free_port 8787)
# The operator's pod reaches the Worker on the node's bridge (the host's side of it).
worker_url=http://$node_host_ip:$worker_port

step "CRDs (kubectl apply -f crds/)" kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
kubectl create namespace "$namespace" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
# The Worker. Its settings come from an env file under the cache (--env-file makes
# wrangler ignore worker/.dev.vars, so nobody's own file is touched): the one
# publisher key, allowed every namespace and region; no client keys, and the
# open API that needs (the Worker refuses clients when it has no keys unless
# ALLOW_ANONYMOUS is "true"); the client's location taken from a header.
# BACKHAUL_PUBLISHERS is single-quoted: its JSON holds double quotes.
{
  printf "BACKHAUL_PUBLISHERS='%s'\n" \
    "[{\"id\":\"$key_id\",\"publicKey\":\"$public_key\",\"group\":\"local\",\"namespaces\":[\"*\"],\"regions\":[\"*\"]}]"
  printf '%s\n' 'BACKHAUL_API_KEYS=""' 'ALLOW_ANONYMOUS="true"' 'TRUST_LOCATION_HEADER="true"'
} >"$state/.dev.vars"
chmod 600 "$state/.dev.vars"
source scripts/node-env.sh
start worker "wrangler dev" "$logs/worker.log" bash -c "cd worker && exec npx wrangler dev --env local \
  --ip $node_host_ip --port $worker_port --inspector-port $(free_port) --persist-to '$state/wrangler-state' \
  --env-file '$state/.dev.vars' --show-interactive-dev-session=false --log-level info"

step "Worker answers /health" wait_until "$timeout" "the Worker (wrangler dev)" "$logs/worker.log" \
  curl -fsS "$worker_url/health"

# The chart as a user installs it; its pod goes to the real node (the only
# one that runs anything), from the image loaded there.
step "Helm chart ($release in $release_namespace): the operator's pod Ready" \
  helm upgrade --install "$release" charts/backhaul-operator -n "$release_namespace" --create-namespace \
  --skip-crds --set watchNamespace="$namespace" --set workerUrl="$worker_url" \
  --set publishKey.id="$key_id" --set-file publishKey.privateKeyPem="$key_file" --set logFormat=text \
  --set-string "nodeSelector.backhaul\.dev/node=real" \
  --set "tolerations[0].key=$node_taint_key" --set "tolerations[0].operator=Exists" \
  --set "tolerations[0].effect=NoSchedule" \
  --wait --timeout "${timeout}s" >/dev/null
operator_logs() { kubectl -n "$release_namespace" logs "deployment/$release" --tail=20 2>&1; }

sed -e "s#/var/lib/backhaul-models#$BACKHAUL_CACHE/models#" examples/local-demo.yaml | kubectl apply -f - >/dev/null
published() {
  [ "$(kubectl -n "$namespace" get modeldeployment smollm2 \
    -o jsonpath='{.status.conditions[?(@.type=="Published")].status}')" = True ]
}
applied_at=$(date +%s%3N)
if ! step "examples/local-demo.yaml applied: pods start on $node_name, pass their probes, routes published" \
  wait_until "$timeout" "ModelDeployment smollm2 Published" /dev/null published; then
  kubectl -n "$namespace" get md,pods -o wide >&2 || true
  operator_logs >&2
  exit 1
fi
info "$(awk -v ms=$(($(date +%s%3N) - applied_at)) 'BEGIN { printf "apply -> Published in %.1f s", ms / 1000 }')"

# signed_get PATH: a GET on the Worker's admin API, signed with the cluster's key
# (docs/publication.md: Ed25519 over "backhaul-v2.{keyId}.{ts}.{METHOD}.{path}." + body).
signed_get() {
  local ts sig
  ts=$(date +%s)
  printf 'backhaul-v2.%s.%s.GET.%s.' "$key_id" "$ts" "$1" >"$state/signed-get.msg"
  sig=$(openssl pkeyutl -sign -inkey "$key_file" -rawin -in "$state/signed-get.msg" | base64 -w0)
  curl -fsS -H "x-backhaul-key-id: $key_id" -H "x-backhaul-timestamp: $ts" \
    -H "x-backhaul-signature: ed25519=$sig" "$worker_url$1"
}

echo
say "Everything is up:"
kubectl -n "$namespace" get modeldeployment smollm2
echo
kubectl get pods -n "$release_namespace" -o wide
kubectl get pods -n "$namespace" -o wide
echo
say "The Worker's route table (signed GET /admin/v1/routes):"
signed_get /admin/v1/routes | python3 -c '
import json, sys
for r in json.load(sys.stdin)["routes"]:
    print("  %s/%s %-8s -> %s  ready %s/%s  ttl %ss  key %s  owner %s  token sha256 %s%s" % (r["namespace"], r["name"], r["region"], r["endpoint"], r["readyReplicas"], r["replicas"], r["ttlSeconds"], r.get("keyId"), r.get("owner"), r.get("upstreamTokenSha256"), "  EXPIRED" if r.get("expired") else ""))'

client() { "$venv/bin/python" scripts/demo-client.py "$worker_url/v1" "$served" "$@"; }
prompt="In three sentences, explain why a request should be served by the nearest data centre."
echo
say "1. A heavy request (max_tokens 96 >= heavyMaxTokens 64) from New York (40.71,-74.01), nearer us-east:"
client "40.71,-74.01" "$prompt" 96
echo
us_pod=$(kubectl -n "$namespace" get pods -l backhaul.dev/model=smollm2,backhaul.dev/region=us-east \
  -o jsonpath='{.items[0].metadata.name}')
us_container=$(kubectl -n "$namespace" get pod "$us_pod" -o jsonpath='{.status.containerStatuses[0].containerID}')
say "2. us-east's container crashes (SIGKILL through the CRI: crictl stop --timeout 0 ${us_container#containerd://}); the same request again:"
killed_at=$(date +%s)
node_crictl stop --timeout 0 "${us_container#containerd://}" >/dev/null
client "40.71,-74.01" "$prompt" 96
info "(attempts 1: the operator had already withdrawn us-east's route when its pod lost readiness;"
info " attempts 2: the Worker found us-east refusing connections and failed over before sending a byte)"
back() { [ "$(kubectl -n "$namespace" get pod "$us_pod" -o jsonpath='{.status.containerStatuses[0].ready}')" = true ]; }
if wait_until "$timeout" "us-east's restarted container" /dev/null back; then
  info "the kubelet restarted the container; us-east Ready again after $(($(date +%s) - killed_at)) s (restarts: $(kubectl -n "$namespace" get pod "$us_pod" -o jsonpath='{.status.containerStatuses[0].restartCount}'))"
fi

ran_ok=1
echo
say "Walkthrough done in $(($(date +%s) - demo_started))s."
if [ "$keep" = 0 ]; then exit 0; fi
cat <<EOF

Still running (stop everything with: make demo-down   or   scripts/demo.sh down):
  Worker (wrangler dev)   $worker_url   pid $(recorded worker)   log $logs/worker.log
                          settings $state/.dev.vars   publisher key $key_file (id $key_id)
  regions                 us-east http://127.0.0.1:30101, eu-west http://127.0.0.1:30102 (NodePorts;
                          they answer only the Worker's token, Secret $namespace/smollm2-upstream-auth)
  operator                kubectl -n $release_namespace logs deploy/$release
  cluster                 $KUBECONFIG   logs $BACKHAUL_CACHE/cluster/logs

Try:
  export KUBECONFIG=$KUBECONFIG
  kubectl -n $namespace get md,deployments,pods -o wide
  curl -N $worker_url/v1/chat/completions -H 'content-type: application/json' \\
    -H 'x-backhaul-client-location: 51.5,-0.12' \\
    -d '{"model":"$served","stream":true,"max_tokens":80,"messages":[{"role":"user","content":"Hi"}]}' -D -
  $venv/bin/python scripts/demo-client.py $worker_url/v1 $served 51.5,-0.12 "Tell me a joke" 80
  curl -i http://127.0.0.1:30101/v1/models      # 401: a region refuses anyone without the Worker's token
  curl -H "Authorization: Bearer \$(kubectl -n $namespace get secret smollm2-upstream-auth \
    -o jsonpath='{.data.tokens}' | base64 -d | head -n 1)" http://127.0.0.1:30101/v1/models
EOF
