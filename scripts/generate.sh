#!/usr/bin/env bash
# make generate: rewrites every committed generated file from its source.
# Tests fail when any of these drift, so run this after changing a source.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$repo_root"

# CRD YAML from the Rust types, then the chart's copy and snapshot.
cargo run --quiet --locked -p backhaul-operator -- crd >crds/modeldeployment.yaml
charts/test-chart.sh --update
# The Worker's Env types from wrangler.jsonc.
(source scripts/node-env.sh && cd worker && npm run --silent generate)
git status --short crds charts worker/worker-configuration.d.ts
