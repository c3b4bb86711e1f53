#!/usr/bin/env bash
# Stops everything tests/cluster/up.sh started (by recorded PID: TERM, up to
# 10 s, then KILL) and removes the cluster's state under
# $BACKHAUL_CACHE/cluster. The built binaries stay. Safe when nothing runs.
#
# BACKHAUL_CLUSTER_NAME=<name> stops that peer control plane instead (see
# up.sh) and removes $BACKHAUL_CACHE/<name>; the main cluster is untouched.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

take_lock
stop_components
rm -rf "$state"
log "down"
