#!/usr/bin/env bash
# make soak: the whole request path under load and faults (tests/e2e/tests/soak,
# package backhaul-e2e): the routing Worker under wrangler dev in front of two
# regions (backhaul-inference on 127.0.0.1, SmolLM2, small admission bounds),
# a closed loop of virtual clients through the Worker at and above saturation,
# one region flooded directly with 1-3 MiB prompts and the other killed
# (SIGKILL) and restarted. Fails if a request hangs or is lost, if nothing
# completes, or if a region's peak RSS or the inter-token latency p99 passes
# its bound. No cluster, no root. Every process it starts is stopped by PID
# (process group) when it ends, whatever happened.
#
#   scripts/soak.sh           BACKHAUL_SOAK_SECONDS (300) of load; writes
#                             docs/benchmarks/soak.json
#   scripts/soak.sh --short   the run in make test: 30 s of load; writes
#                             $BACKHAUL_CACHE/soak/soak-short.json
#
# Knobs (environment): BACKHAUL_SOAK_SECONDS, BACKHAUL_SOAK_CLIENTS (8),
# BACKHAUL_SOAK_MAX_IN_FLIGHT (2), BACKHAUL_SOAK_MAX_QUEUE (1),
# BACKHAUL_SOAK_DEADLINE_SECONDS (240), BACKHAUL_SOAK_FLOOD_CLIENTS (2),
# BACKHAUL_SOAK_MAX_RSS_MIB (2048), BACKHAUL_SOAK_MAX_ITL_P99_MS (60000),
# BACKHAUL_SOAK_OUT (the JSON file); BACKHAUL_INFERENCE_BIN and
# BACKHAUL_WORKER_DIR run a server binary and a Worker checkout from
# elsewhere (wrangler dev reloads whenever worker/ is edited, killing the
# requests in flight: measure a checkout nobody edits meanwhile).
# Logs: BACKHAUL_SOAK_LOGS ($BACKHAUL_CACHE/soak/logs).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$repo_root"

[ -f "$BACKHAUL_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf" ] || { echo "soak: run make model first" >&2; exit 1; }
[ -x "$BACKHAUL_CACHE/node/bin/npx" ] || { echo "soak: run make worker-deps first" >&2; exit 1; }

if [ "${1:-}" = --short ]; then
  export BACKHAUL_SOAK_SECONDS=${BACKHAUL_SOAK_SECONDS:-30}
  export BACKHAUL_SOAK_OUT=${BACKHAUL_SOAK_OUT:-$BACKHAUL_CACHE/soak/soak-short.json}
else
  export BACKHAUL_SOAK_SECONDS=${BACKHAUL_SOAK_SECONDS:-300}
  export BACKHAUL_SOAK_OUT=${BACKHAUL_SOAK_OUT:-$repo_root/docs/benchmarks/soak.json}
fi
# The soak's logs (and the Worker's state) apart from the e2e suite's, and
# from another soak's given its own BACKHAUL_SOAK_LOGS; each run starts
# with none.
export BACKHAUL_E2E_LOGS=${BACKHAUL_SOAK_LOGS:-$BACKHAUL_CACHE/soak/logs}
rm -rf "$BACKHAUL_E2E_LOGS"
mkdir -p "$BACKHAUL_E2E_LOGS"

step "build the workspace (inference, e2e tests)" build_workspace
step "soak test (${BACKHAUL_SOAK_SECONDS}s of load)" cargo test --workspace --locked --test soak
