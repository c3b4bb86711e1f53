#!/usr/bin/env bash
# make e2e: end-to-end and fault tests over the whole path (tests/e2e, package
# backhaul-e2e): the local cluster with its real node, the backhaul-operator
# binary, the regions' pods it makes on that node (backhaul-inference on
# SmolLM2, from the image built here and loaded into the node), and the
# routing Worker under wrangler dev. Every process a test starts is stopped by
# PID (process group) when it ends, and every namespace it makes is deleted,
# whatever happened.
#
#   scripts/e2e.sh                 every test (tests/e2e.rs, then tests/fleet.rs:
#                                  two clusters, the second a peer control plane)
#   scripts/e2e.sh saturated ttl   tests whose names contain these words
#
# The cluster is started here and stopped on exit unless it was already
# running. Needs root (the real node). Logs: $BACKHAUL_CACHE/e2e/logs (each
# failure names the file).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$repo_root"

cluster_was_running=0
kubeconfig=$BACKHAUL_CACHE/cluster/kubeconfig
if [ -f "$kubeconfig" ] && kubectl --kubeconfig "$kubeconfig" --request-timeout=3s get --raw /readyz >/dev/null 2>&1; then
  cluster_was_running=1
fi
cleanup() {
  if [ "$cluster_was_running" = 0 ]; then tests/cluster/down.sh >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

[ -f "$BACKHAUL_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf" ] || { echo "e2e: run make model first" >&2; exit 1; }
[ -x "$BACKHAUL_CACHE/node/bin/npx" ] || { echo "e2e: run make worker-deps first" >&2; exit 1; }

step "build the workspace (operator, inference, e2e tests)" build_workspace
kubeconfig_line=$(step "cluster (control plane and real node)" env BACKHAUL_NODE=1 tests/cluster/up.sh | tail -n 1)
eval "$kubeconfig_line"
export KUBECONFIG
node=$(bash -c 'source tests/cluster/lib.sh && echo "$node_name"')
kubectl get node "$node" >/dev/null 2>&1 || { echo "e2e: the cluster has no real node ($node); it needs root and BACKHAUL_NODE=1" >&2; exit 1; }
step "inference image (make images), loaded into $node" scripts/images.sh --load inference >/dev/null
step "e2e tests" cargo test --workspace --locked --test e2e -- "$@"
# One cluster per region: starts (and stops) a second control plane of its own.
# Its logs apart from the suite's (which clears its directory at setup).
step "e2e fleet test (two clusters)" env BACKHAUL_E2E_LOGS="$BACKHAUL_CACHE/e2e/fleet-logs" \
  cargo test --workspace --locked --test fleet -- "$@"
