#!/usr/bin/env bash
# make test: every test. Rust tests run against the real local cluster
# (started here and stopped on exit, unless one was already running; with
# its real node when run as root), the end-to-end suite runs the regions as
# real pods on that node, a short soak runs load and faults through the
# Worker into two regions on 127.0.0.1, the edge's cache, coalescing and
# request ids are checked against one real region behind the Worker, the Helm chart is linted,
# snapshot-checked and installed, and the Worker's suite runs inside workerd. When this script
# starts the cluster, it also checks that stopping it left the machine as it
# was (tests/cluster/machine-state.sh).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$repo_root"

cluster_was_running=0
kubeconfig=$BACKHAUL_CACHE/cluster/kubeconfig
if [ -f "$kubeconfig" ] && kubectl --kubeconfig "$kubeconfig" --request-timeout=3s get --raw /readyz >/dev/null 2>&1; then
  cluster_was_running=1
fi
machine_before=$(mktemp)
tests/cluster/machine-state.sh >"$machine_before"
cleanup() {
  local rc=$?
  if [ "$cluster_was_running" = 0 ]; then
    tests/cluster/down.sh >/dev/null 2>&1 || true
    local after
    after=$(mktemp)
    tests/cluster/machine-state.sh >"$after"
    if ! step "machine left as it was found" tests/cluster/machine-state.sh diff "$machine_before" "$after"; then
      echo "make test: FAILED: stopping the cluster left something behind (see above)" >&2
      rc=1
    fi
    rm -f "$after"
  fi
  rm -f "$machine_before"
  exit $rc
}
trap cleanup EXIT

# The control plane must come up: a test run without it is a failed run.
kubeconfig_line=$(step "control plane" tests/cluster/up.sh | tail -n 1)
eval "$kubeconfig_line"
export KUBECONFIG

failed=()
step "build" build_workspace || failed+=(build)
# Four at a time: the control-plane tests each run operators against one
# API server on two cores, and more in parallel only makes them wait on it.
step "rust tests" cargo test --workspace --locked -- --test-threads=4 || failed+=(rust)
step "end to end (operator, regions, Worker)" scripts/e2e.sh || failed+=(e2e)
# The soak's short run: 30 s of load and faults through the Worker and two
# regions on 127.0.0.1 (make soak runs it for 300 s).
step "soak, short (Worker, two regions, load and faults)" scripts/soak.sh --short || failed+=(soak)
# The edge with a real region behind it (tests/e2e/tests/edge.rs): request
# ids and trace ids in the region's log, the response cache and coalescing
# counted at the region's /metrics, the OpenAI Python client's view (an image
# part, JSON mode, tools). One Worker and one region on 127.0.0.1, no cluster.
step "edge (Worker in front of a real region)" env BACKHAUL_E2E_LOGS="$BACKHAUL_CACHE/edge/logs" \
  cargo test --workspace --locked --test edge || failed+=(edge)
step "helm chart" charts/test-chart.sh || failed+=(chart)
# The GPU benchmark's model writer and report (bench/gguf.py, bench/gpu_report.py).
step "bench python tests" python3 -m unittest discover -s bench -p 'test_*.py' || failed+=(bench-python)
step "worker tests (workerd)" bash -c 'source scripts/node-env.sh && cd worker && npm test' || failed+=(worker)

if [ ${#failed[@]} -gt 0 ]; then
  echo "make test: FAILED suites: ${failed[*]}" >&2
  exit 1
fi
echo "make test: all suites passed" >&2
