#!/usr/bin/env bash
# Builds the local control plane's binaries (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl, kwok,
# helm, grpcurl, crictl) from the Go modules pinned under tests/cluster/tools
# into $BACKHAUL_CACHE/bin.
#
# Each binary is rebuilt only when its pinned module (go.mod + go.sum) changes:
# the stamp beside it records the hash it was built from. Nothing is
# downloaded except Go modules through the module proxy.
#
# Usage: build-tools.sh [name ...]   (default: all)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${BACKHAUL_CACHE:-$HOME/.cache/backhaul}
bin=$cache/bin
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
export GOMODCACHE=${GOMODCACHE:-$cache/go/mod} GOCACHE=${GOCACHE:-$cache/go/build}
mkdir -p "$bin" "$GOMODCACHE" "$GOCACHE"

# Two callers (make test and a helper script, say) must not build the same
# binary at once.
exec 9>"$bin/.build.lock"
flock 9

k8s_version=$(awk '$1=="require" && $2=="k8s.io/kubernetes" {print $3}' "$here/tools/kubernetes/go.mod")
k8s_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s_version \
 -X k8s.io/component-base/version.gitMajor=$(echo "$k8s_version" | cut -d. -f1 | tr -d v) \
 -X k8s.io/component-base/version.gitMinor=$(echo "$k8s_version" | cut -d. -f2) \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version"

# Without these helm believes it talks to Kubernetes v1.20 when rendering
# offline (helm template/lint), and charts needing a newer one fail.
helm_version=$(awk '$1=="require" && $2=="helm.sh/helm/v3" {print $3}' "$here/tools/helm/go.mod")
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version \
 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$(echo "$k8s_version" | cut -d. -f2) \
 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$(echo "$k8s_version" | cut -d. -f2)"

# name  module-dir  package  ldflags
targets=(
  "etcd|etcd|.|-s -w"
  "kube-apiserver|kubernetes|k8s.io/kubernetes/cmd/kube-apiserver|$k8s_ldflags"
  "kube-controller-manager|kubernetes|k8s.io/kubernetes/cmd/kube-controller-manager|$k8s_ldflags"
  "kube-scheduler|kubernetes|k8s.io/kubernetes/cmd/kube-scheduler|$k8s_ldflags"
  "kubelet|kubernetes|k8s.io/kubernetes/cmd/kubelet|$k8s_ldflags"
  "kube-proxy|kubernetes|k8s.io/kubernetes/cmd/kube-proxy|$k8s_ldflags"
  "kubectl|kubernetes|k8s.io/kubernetes/cmd/kubectl|$k8s_ldflags"
  "kwok|kwok|sigs.k8s.io/kwok/cmd/kwok|-s -w"
  "helm|helm|helm.sh/helm/v3/cmd/helm|$helm_ldflags"
  "grpcurl|grpcurl|github.com/fullstorydev/grpcurl/cmd/grpcurl|-s -w"
  "crictl|cri-tools|sigs.k8s.io/cri-tools/cmd/crictl|-s -w"
)

want=("$@")
for t in "${targets[@]}"; do
  IFS='|' read -r name dir pkg ldflags <<<"$t"
  if [ ${#want[@]} -gt 0 ] && [[ ! " ${want[*]} " == *" $name "* ]]; then continue; fi
  stamp=$( (cat "$here/tools/$dir/go.mod" "$here/tools/$dir/go.sum"; echo "$ldflags") | sha256sum | cut -c1-16)
  if [ -x "$bin/$name" ] && [ "$(cat "$bin/$name.stamp" 2>/dev/null)" = "$stamp" ]; then
    continue
  fi
  echo "build-tools: building $name (module tools/$dir)" >&2
  start=$(date +%s)
  (cd "$here/tools/$dir" && go build -trimpath -ldflags "$ldflags" -o "$bin/$name.tmp" "$pkg")
  mv "$bin/$name.tmp" "$bin/$name"
  echo "$stamp" >"$bin/$name.stamp"
  echo "build-tools: built $name in $(($(date +%s) - start))s" >&2
done
