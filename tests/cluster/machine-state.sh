#!/usr/bin/env bash
# What the local cluster may change on this machine, written as text so two
# runs can be compared: the processes it starts, network links and routes,
# mounts, iptables and nftables, the sysctls node.sh saves, kubepods cgroups
# and the fixed paths the kubelet and CNI use. scripts/test.sh takes it
# before and after a run and fails when they differ: tests leave the machine
# as they found it.
#
# Usage: machine-state.sh          print the state
#        machine-state.sh diff A B  compare two printed states (exit 1 if they differ)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

if [ "${1:-}" = diff ]; then
  if diff -u "$2" "$3" >&2; then
    exit 0
  fi
  echo "machine-state: the machine differs from before (lines above: - before, + after)" >&2
  exit 1
fi

section() { echo "## $1"; }
section processes
# Only the programs the cluster, its node and the image builds run.
for pid in /proc/[0-9]*; do
  st=$(awk '{print $3}' "$pid/stat" 2>/dev/null) || continue
  [ "$st" = Z ] && continue
  exe=$(readlink "$pid/exe" 2>/dev/null) || continue
  case ${exe##*/} in
    etcd | kube-apiserver | kube-controller-manager | kube-scheduler | kwok | kubelet | kube-proxy | \
      containerd | containerd-shim* | dockerd | runc | pause | backhaul-inference | backhaul-operator)
      echo "${exe% (deleted)}"
      ;;
  esac
done | sort | uniq -c
section links
ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | sort
section routes
ip route show table all 2>/dev/null | { grep -v '^local\|^broadcast\|^multicast\|^ff00::\|fe80::' || true; } | sort
section mounts
awk '{print $2, $3}' /proc/mounts | sort
section iptables
for save in iptables-save ip6tables-save; do
  if command -v "$save" >/dev/null; then
    "$save" 2>/dev/null | { grep -v '^#' || true; } | sed 's/\[[0-9]*:[0-9]*\]//' | sort
  fi
done
section nftables
if command -v nft >/dev/null; then nft list tables 2>/dev/null | sort; fi
section sysctls
for key in "${node_sysctls[@]}"; do
  path=/proc/sys/${key//.//}
  [ -f "$path" ] && echo "$key=$(cat "$path")"
done
section cgroups
ls -d /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods 2>/dev/null || true
section paths
for path in "${node_fixed_paths[@]}" "$node_run" /run/backhaul-docker; do
  [ -e "$path" ] && echo "$path"
done
exit 0
