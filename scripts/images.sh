#!/usr/bin/env bash
# make images: builds the container images, tagged with the Helm chart's
# appVersion (the tags the chart and the operator default to):
#
#   $BACKHAUL_IMAGE_REGISTRY/backhaul-operator:<appVersion>        operator/Dockerfile
#   $BACKHAUL_IMAGE_REGISTRY/backhaul-inference:<appVersion>       inference/Dockerfile (CPU)
#   $BACKHAUL_IMAGE_REGISTRY/backhaul-inference:<appVersion>-cuda  inference/Dockerfile.cuda
#
# Binaries (--binaries, or BACKHAUL_IMAGE_BINARIES):
#   prebuilt (default)  the workspace's own build (scripts/lib.sh
#                       build_workspace, as every test uses it) is copied
#                       into the image: nothing is compiled twice. The CUDA
#                       image is skipped (the workspace is not built with
#                       --features cuda).
#   source              each Dockerfile compiles its binary with --release
#                       (needs the Rust base image; the CUDA image
#                       fetches its toolkit from PyPI, scripts/cuda-wheels.txt).
#
# The engine: the one DOCKER_HOST reaches, or Debian's dockerd started for
# this run (scripts/docker-engine.sh) and stopped at the end. Base images
# the engine lacks and cannot pull are made here from Debian's packages
# (scripts/base-images.sh), under the names the Dockerfiles use.
#
# --load imports the built images into the local cluster's real node
# (tests/cluster/up.sh), where pods use them with imagePullPolicy
# IfNotPresent. --push pushes them.
#
# Usage: scripts/images.sh [--push] [--load] [--binaries=prebuilt|source]
#          [operator|inference|inference-cuda ...]   (default: all it can build)
# Environment: BACKHAUL_IMAGE_REGISTRY (ghcr.io/backhaul-dev), DOCKER (docker
#   client), CUDA_COMPUTE_CAP (the CUDA image's GPU generation,
#   Dockerfile.cuda's default when unset: 90 = H100/H200, 80 = A100, 89 = L4/L40).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$repo_root"

registry=${BACKHAUL_IMAGE_REGISTRY:-ghcr.io/backhaul-dev}
binaries=${BACKHAUL_IMAGE_BINARIES:-prebuilt}
push=0
load=0
wanted=()
for arg in "$@"; do
  case $arg in
    --push) push=1 ;;
    --load) load=1 ;;
    --binaries=*) binaries=${arg#--binaries=} ;;
    operator | inference | inference-cuda) wanted+=("$arg") ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "images: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done
case $binaries in
  prebuilt) [ ${#wanted[@]} -gt 0 ] || wanted=(operator inference) ;;
  source) [ ${#wanted[@]} -gt 0 ] || wanted=(operator inference inference-cuda) ;;
  *) echo "images: --binaries must be prebuilt or source, not '$binaries'" >&2; exit 2 ;;
esac
if [ "$binaries" = prebuilt ] && [[ " ${wanted[*]} " == *" inference-cuda "* ]]; then
  echo "images: inference-cuda needs --binaries=source (the workspace is not built with CUDA)" >&2
  exit 2
fi

version=$(awk -F': *' '$1 == "appVersion" { gsub(/["'\'']/, "", $2); print $2 }' charts/backhaul-operator/Chart.yaml)
crate_version=$(awk -F' *= *' '$1 == "version" { gsub(/"/, "", $2); print $2; exit }' Cargo.toml)
if [ -z "$version" ] || [ "$version" != "$crate_version" ]; then
  echo "images: the chart's appVersion ('$version') must equal the workspace version ('$crate_version')" >&2
  exit 1
fi

source scripts/docker-engine.sh
source scripts/base-images.sh
staged=$repo_root/.image-bin
cleanup() {
  rm -rf "$staged"
  docker_engine_stop
}
trap cleanup EXIT
step "docker engine" docker_engine_start
step "base images" base_images_ensure

if [ "$binaries" = prebuilt ]; then
  step "build" build_workspace
  mkdir -p "$staged"
  for name in "${wanted[@]}"; do
    # A copy, not a link: the build context must hold the bytes.
    cp "$bin_dir/backhaul-$name" "$staged/backhaul-$name"
  done
fi

# name|dockerfile|tag
declare -A spec=(
  [operator]="operator/Dockerfile|$registry/backhaul-operator:$version"
  [inference]="inference/Dockerfile|$registry/backhaul-inference:$version"
  [inference-cuda]="inference/Dockerfile.cuda|$registry/backhaul-inference:$version-cuda"
)

built=()
for name in "${wanted[@]}"; do
  IFS='|' read -r dockerfile tag <<<"${spec[$name]}"
  extra=()
  if [ "$name" = inference-cuda ] && [ -n "${CUDA_COMPUTE_CAP:-}" ]; then
    extra+=(--build-arg "CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP")
  fi
  if [ "$name" != inference-cuda ]; then
    extra+=(--build-arg "BINARIES=$binaries")
  fi
  step "image $tag" env DOCKER_BUILDKIT=1 "$DOCKER" build --quiet \
    --file "$dockerfile" --tag "$tag" --build-arg "VERSION=$version" "${extra[@]}" \
    --label "org.opencontainers.image.revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    . >&2
  built+=("$tag")
  if [ "$push" = 1 ]; then
    step "push $tag" "$DOCKER" push "$tag"
  fi
done

if [ "$load" = 1 ]; then
  source tests/cluster/lib.sh
  if [ -z "$(live_pid containerd)" ]; then
    echo "images: --load needs the local cluster's node (make cluster-up)" >&2
    exit 1
  fi
  load_image() { "$DOCKER" save "$1" | node_ctr images import --snapshotter overlayfs - >/dev/null; }
  for tag in "${built[@]}"; do
    step "load $tag into $node_name" load_image "$tag"
  done
fi
printf '%s\n' "${built[@]}"
