#!/usr/bin/env bash
# make images: builds the container images, tagged with the Helm chart's
# appVersion (the tags the chart and the operator default to):
#
#   $BACKHAUL_IMAGE_REGISTRY/backhaul-operator:<appVersion>        operator/Dockerfile
#   $BACKHAUL_IMAGE_REGISTRY/backhaul-inference:<appVersion>       inference/Dockerfile (CPU)
#   $BACKHAUL_IMAGE_REGISTRY/backhaul-inference:<appVersion>-cuda  inference/Dockerfile.cuda
#
# Needs a running Docker engine (with BuildKit); without one it says so and
# fails. The base images come from their registries, so it needs network
# access to them too.
#
# Usage: scripts/images.sh [--push] [operator|inference|inference-cuda ...]   (default: all three)
# Environment: BACKHAUL_IMAGE_REGISTRY (ghcr.io/backhaul-dev), DOCKER (docker),
#   CUDA_COMPUTE_CAP (the CUDA image's GPU generation, Dockerfile.cuda's default
#   when unset: 90 = H100/H200, 80 = A100, 89 = L4/L40).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$repo_root"

registry=${BACKHAUL_IMAGE_REGISTRY:-ghcr.io/backhaul-dev}
docker=${DOCKER:-docker}
push=0
wanted=()
for arg in "$@"; do
  case $arg in
    --push) push=1 ;;
    operator | inference | inference-cuda) wanted+=("$arg") ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "images: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done
[ ${#wanted[@]} -gt 0 ] || wanted=(operator inference inference-cuda)

version=$(awk -F': *' '$1 == "appVersion" { gsub(/["'\'']/, "", $2); print $2 }' charts/backhaul-operator/Chart.yaml)
crate_version=$(awk -F' *= *' '$1 == "version" { gsub(/"/, "", $2); print $2; exit }' Cargo.toml)
if [ -z "$version" ] || [ "$version" != "$crate_version" ]; then
  echo "images: the chart's appVersion ('$version') must equal the workspace version ('$crate_version')" >&2
  exit 1
fi

if ! command -v "$docker" >/dev/null 2>&1; then
  echo "images: no Docker engine available: '$docker' is not installed" >&2
  exit 1
fi
if ! err=$("$docker" info 2>&1 >/dev/null); then
  echo "images: no Docker engine available ('$docker info' failed: $(printf '%s' "$err" | grep -v '^$' | tail -n 1))" >&2
  exit 1
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
  if [ ! -f "$dockerfile" ]; then
    echo "images: $dockerfile does not exist" >&2
    exit 1
  fi
  step "image $tag" env DOCKER_BUILDKIT=1 "$docker" build \
    --file "$dockerfile" --tag "$tag" --build-arg "VERSION=$version" "${extra[@]}" \
    --label "org.opencontainers.image.revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    .
  built+=("$tag")
  if [ "$push" = 1 ]; then
    step "push $tag" "$docker" push "$tag"
  fi
done
printf '%s\n' "${built[@]}"
