#!/usr/bin/env bash
# make demo: the whole Backhaul path on this machine, in one command.
#
#   scripts/demo.sh          build, start everything, walk through a request and a failover,
#                            then leave it all running for you to poke at
#   scripts/demo.sh --once   the same, then stop everything (also: DEMO_KEEP=0)
#   scripts/demo.sh down     stop everything a previous run started (make demo-down)
#
# What runs where (all on 127.0.0.1):
#   - the local Kubernetes control plane (tests/cluster/up.sh; kwok fakes the GPU nodes,
#     so the regional pods go Ready without running anything);
#   - the Helm chart, installed with replicaCount=0 (its pod would be a kwok fake too), and
#     the real backhaul-operator binary run here, authenticated with a token of the chart's
#     own ServiceAccount, so it has exactly the chart's permissions;
#   - two backhaul-inference servers on SmolLM2-135M-Instruct, the public endpoints of the
#     regions us-east and eu-west;
#   - the routing Worker under wrangler dev (local mode, route table persisted under the cache);
#   - examples/local-demo.yaml, whose regions point at those two servers.
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
  # Delete the ModelDeployment while the operator still runs, so it withdraws
  # its routes and releases its finalizer.
  if [ -n "$(recorded operator)" ] && [ -f "$kubeconfig" ]; then
    kubectl --kubeconfig "$kubeconfig" --request-timeout=5s delete modeldeployment -n "$namespace" --all \
      --timeout=20s >/dev/null 2>&1 || true
  fi
  for name in operator worker region-us-east region-eu-west; do stop "$name"; done
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

# BACKHAUL_OPERATOR_BIN and BACKHAUL_INFERENCE_BIN (both) use binaries built elsewhere.
operator_bin=${BACKHAUL_OPERATOR_BIN:-$CARGO_TARGET_DIR/debug/backhaul-operator}
inference_bin=${BACKHAUL_INFERENCE_BIN:-$CARGO_TARGET_DIR/debug/backhaul-inference}
if [ -z "${BACKHAUL_OPERATOR_BIN:-}" ] || [ -z "${BACKHAUL_INFERENCE_BIN:-}" ]; then
  step "build backhaul-operator and backhaul-inference" \
    build_workspace
fi

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import openai' 2>/dev/null; then
  step "OpenAI Python client (PyPI) into $venv" bash -c \
    "python3 -m venv '$venv' && '$venv/bin/pip' install --quiet --disable-pip-version-check 'openai${openai_version:+==$openai_version}'"
fi

cluster_kubeconfig=$BACKHAUL_CACHE/cluster/kubeconfig
if ! { [ -f "$cluster_kubeconfig" ] && kubectl --kubeconfig "$cluster_kubeconfig" --request-timeout=3s get --raw /readyz >/dev/null 2>&1; }; then
  touch "$state/cluster-started-by-demo"
fi
kubeconfig_line=$(step "local control plane" tests/cluster/up.sh | tail -n 1)
eval "$kubeconfig_line"
export KUBECONFIG

secret=$(openssl rand -hex 32)
printf '%s' "$secret" >"$state/publish-secret"
chmod 600 "$state/publish-secret"
worker_port=$(free_port 8787)
us_port=$(free_port 18101)
eu_port=$(free_port 18102)
metrics_port=$(free_port 18180)
worker_url=http://127.0.0.1:$worker_port

step "CRDs (kubectl apply -f crds/)" kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
kubectl create namespace "$namespace" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
# replicaCount=0: in this cluster the chart's operator pod would be a kwok fake
# that runs nothing; the real binary runs here, under the chart's ServiceAccount.
step "Helm chart ($release in $release_namespace, replicaCount=0)" \
  helm upgrade --install "$release" charts/backhaul-operator -n "$release_namespace" --create-namespace \
  --skip-crds --set replicaCount=0 --set watchNamespace="$namespace" --set workerUrl="$worker_url" \
  --set publishSecret.value="$secret" --wait --timeout "${timeout}s" >/dev/null

# A kubeconfig with a token of the chart's ServiceAccount.
kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$state/ca.crt"
server=$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')
token=$(kubectl create token "$release" -n "$release_namespace" --duration=24h)
umask 077
printf '%s\n' "apiVersion: v1" "kind: Config" \
  "clusters: [{name: local, cluster: {server: \"$server\", certificate-authority: \"$state/ca.crt\"}}]" \
  "users: [{name: $release, user: {token: \"$token\"}}]" \
  "contexts: [{name: operator, context: {cluster: local, user: $release}}]" \
  "current-context: operator" >"$state/operator.kubeconfig"
umask 022

# The two regions' public endpoints.
for region in us-east eu-west; do
  port=$us_port
  [ "$region" = eu-west ] && port=$eu_port
  grpc_port=$(free_port)
  start "region-$region" "--http-addr 127.0.0.1:$port" "$logs/region-$region.log" \
    env RUST_LOG=info "$inference_bin" --model "$model" --served-name "$served" \
    --http-addr "127.0.0.1:$port" --grpc-addr "127.0.0.1:$grpc_port" --max-in-flight 4 --max-queue 8
done

# The Worker. Secrets come from an env file under the cache (--env-file makes
# wrangler ignore worker/.dev.vars, so nobody's own file is touched).
printf 'BACKHAUL_PUBLISH_SECRET="%s"\nBACKHAUL_API_KEYS=""\nTRUST_LOCATION_HEADER="true"\n' "$secret" >"$state/.dev.vars"
chmod 600 "$state/.dev.vars"
source scripts/node-env.sh
start worker "wrangler dev" "$logs/worker.log" bash -c "cd worker && exec npx wrangler dev --env local \
  --ip 127.0.0.1 --port $worker_port --inspector-port $(free_port) --persist-to '$state/wrangler-state' \
  --env-file '$state/.dev.vars' --show-interactive-dev-session=false --log-level info"

# The operator, with the chart's identity and settings.
start operator "backhaul-operator run" "$logs/operator.log" \
  env KUBECONFIG="$state/operator.kubeconfig" POD_NAMESPACE="$release_namespace" POD_NAME=demo-operator \
  BACKHAUL_WATCH_NAMESPACE="$namespace" BACKHAUL_LEADER_ELECTION=true BACKHAUL_LEASE_NAME="$release" \
  BACKHAUL_WORKER_URL="$worker_url" BACKHAUL_PUBLISH_SECRET_FILE="$state/publish-secret" \
  BACKHAUL_METRICS_ADDR="127.0.0.1:$metrics_port" RUST_LOG=info \
  "$operator_bin" run

step "Worker answers /health" wait_until "$timeout" "the Worker (wrangler dev)" "$logs/worker.log" \
  curl -fsS "$worker_url/health"
step "operator ready (holds its Lease)" wait_until "$timeout" "backhaul-operator" "$logs/operator.log" \
  curl -fsS "http://127.0.0.1:$metrics_port/readyz"

sed -e "s#127.0.0.1:18101#127.0.0.1:$us_port#" -e "s#127.0.0.1:18102#127.0.0.1:$eu_port#" examples/local-demo.yaml |
  kubectl apply -f - >/dev/null
published() {
  [ "$(kubectl -n "$namespace" get modeldeployment smollm2 \
    -o jsonpath='{.status.conditions[?(@.type=="Published")].status}')" = True ]
}
step "examples/local-demo.yaml applied; waiting until it is Published" \
  wait_until "$timeout" "ModelDeployment smollm2 Published" "$logs/operator.log" published

step "region us-east loads the model" wait_until "$timeout" "backhaul-inference (us-east)" \
  "$logs/region-us-east.log" curl -fsS "http://127.0.0.1:$us_port/ready"
step "region eu-west loads the model" wait_until "$timeout" "backhaul-inference (eu-west)" \
  "$logs/region-eu-west.log" curl -fsS "http://127.0.0.1:$eu_port/ready"

# signed_get PATH: a GET on the Worker's admin API (docs/publication.md).
signed_get() {
  local ts sig
  ts=$(date +%s)
  sig=$(printf '%s.GET.%s.' "$ts" "$1" | openssl dgst -sha256 -hmac "$secret" -hex | sed 's/^.* //')
  curl -fsS -H "x-backhaul-timestamp: $ts" -H "x-backhaul-signature: v1=$sig" "$worker_url$1"
}

echo
say "Everything is up (all on 127.0.0.1):"
kubectl -n "$namespace" get modeldeployment smollm2
echo
say "The Worker's route table (signed GET /admin/v1/routes):"
signed_get /admin/v1/routes | python3 -c '
import json, sys
for r in json.load(sys.stdin)["routes"]:
    print("  %s/%s %-8s -> %s  ready %s/%s  ttl %ss%s" % (r["namespace"], r["name"], r["region"], r["endpoint"], r["readyReplicas"], r["replicas"], r["ttlSeconds"], "  EXPIRED" if r.get("expired") else ""))'

client() { "$venv/bin/python" scripts/demo-client.py "$worker_url/v1" "$served" "$@"; }
prompt="In three sentences, explain why a request should be served by the nearest data centre."
echo
say "1. A heavy request (max_tokens 96 >= heavyMaxTokens 64) from New York (40.71,-74.01), nearer us-east:"
client "40.71,-74.01" "$prompt" 96
echo
say "2. us-east's server goes down (SIGTERM to pid $(recorded region-us-east)); the same request again:"
stop region-us-east 2>/dev/null
client "40.71,-74.01" "$prompt" 96
info "(the Worker found us-east refusing connections and failed over to eu-west before sending a byte)"

ran_ok=1
echo
say "Walkthrough done in $(($(date +%s) - demo_started))s."
if [ "$keep" = 0 ]; then exit 0; fi
cat <<EOF

Still running (stop everything with: make demo-down   or   scripts/demo.sh down):
  Worker (wrangler dev)   $worker_url            pid $(recorded worker)   log $logs/worker.log
  region eu-west          http://127.0.0.1:$eu_port  pid $(recorded region-eu-west)   log $logs/region-eu-west.log
  region us-east          stopped by the walkthrough (start it again with make demo)
  operator (local binary) metrics http://127.0.0.1:$metrics_port/metrics  pid $(recorded operator)   log $logs/operator.log
  control plane           $KUBECONFIG   logs $BACKHAUL_CACHE/cluster/logs

Try:
  export KUBECONFIG=$KUBECONFIG
  kubectl -n $namespace get md,deployments,pods
  curl -N $worker_url/v1/chat/completions -H 'content-type: application/json' \\
    -H 'x-backhaul-client-location: 51.5,-0.12' \\
    -d '{"model":"$served","stream":true,"max_tokens":80,"messages":[{"role":"user","content":"Hi"}]}' -D -
  $venv/bin/python scripts/demo-client.py $worker_url/v1 $served 51.5,-0.12 "Tell me a joke" 80
EOF
