#!/usr/bin/env bash
# make generate: rewrites every committed generated file from its source.
# Tests fail when any of these drift, so run this after changing a source.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$repo_root"

# CRD YAML from the Rust types, then the chart's copy and snapshot.
# Written to a temporary file first: a failed build must not leave an empty CRD.
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
build_workspace --quiet
"$bin_dir/backhaul-operator" crd >"$tmp"
[ -s "$tmp" ] || { echo "generate: backhaul-operator crd printed nothing" >&2; exit 1; }
mv "$tmp" crds/modeldeployment.yaml
# The route's JSON Schema from the Rust type (docs/publication.md).
"$bin_dir/backhaul-operator" route-schema >"$tmp"
[ -s "$tmp" ] || { echo "generate: backhaul-operator route-schema printed nothing" >&2; exit 1; }
mv "$tmp" docs/schemas/route.schema.json
charts/test-chart.sh --update
# The Worker's Env types from wrangler.jsonc.
(source scripts/node-env.sh && cd worker && npm run --silent generate)
git status --short crds charts docs/schemas worker/worker-configuration.d.ts
