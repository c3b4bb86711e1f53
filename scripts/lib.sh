# Shared by the project's scripts: cache locations and tool paths.
# Source it; it sets nothing else.
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export BACKHAUL_CACHE=${BACKHAUL_CACHE:-$HOME/.cache/backhaul}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$BACKHAUL_CACHE/target}
export GOMODCACHE=${GOMODCACHE:-$BACKHAUL_CACHE/go/mod}
export GOCACHE=${GOCACHE:-$BACKHAUL_CACHE/go/build}
export GOTOOLCHAIN=local
case ":$PATH:" in *":$BACKHAUL_CACHE/bin:"*) ;; *) export PATH="$BACKHAUL_CACHE/bin:$PATH" ;; esac

# step NAME CMD...: runs CMD and reports how long it took, so CI logs show
# where the time goes.
step() {
  local name=$1 start rc
  shift
  start=$(date +%s)
  echo "==> $name" >&2
  set +e
  "$@"
  rc=$?
  set -e
  echo "==> $name: $([ $rc -eq 0 ] && echo ok || echo "FAILED (exit $rc)") in $(($(date +%s) - start))s" >&2
  return $rc
}

# build_workspace: the one cargo build every script uses. Cargo resolves
# features per selection of packages and targets, and any difference rebuilds
# mistral.rs (10+ minutes on two cores); building the whole workspace with its
# tests, always the same way, keeps one set of artifacts that `cargo test
# --workspace` then reuses. Binaries land in $bin_dir.
bin_dir=$CARGO_TARGET_DIR/debug
build_workspace() {
  cargo build --workspace --locked --bins --tests "$@"
}
