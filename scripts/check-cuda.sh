#!/usr/bin/env bash
# make check-cuda: compiles backhaul-inference's CUDA build without a GPU.
# The toolkit is NVIDIA's PyPI wheels pinned in scripts/cuda-wheels.txt
# (scripts/cuda-toolkit.sh, cached under $BACKHAUL_CACHE/cuda), the same
# artifacts inference/Dockerfile.cuda builds from. Then, each step timed:
#
#   cargo check --locked -p backhaul-inference --features cuda
#   cargo check --locked -p backhaul-inference --features cuda,nccl
#
# `cargo check` runs every build script, so nvcc compiles candle's,
# mistralrs-quant's and mistralrs-paged-attn's CUDA kernels for
# CUDA_COMPUTE_CAP, and the Rust code behind the cuda and nccl features
# (candle's CUDA backend, cudarc's bindings, mistral.rs's device mapping and
# NCCL tensor parallelism, Backhaul's own) is type-checked. It does not link
# and runs nothing on a GPU; see docs/cuda.md for what is and is not covered.
#
# Writes the run's record (date, commit, versions, seconds per step) to
# docs/cuda-check.json when every step passed (BACKHAUL_CUDA_CHECK_OUT moves
# it). Not part of make test: a cold run takes longer than CI can spare
# (docs/cuda.md has the measurements).
#
# Environment: CUDA_COMPUTE_CAP (90: H100/H200; 80: A100; 89: L4/L40),
# BACKHAUL_CUDA_TARGET_DIR (cargo's target directory, by default
# $BACKHAUL_CACHE/target-cuda: apart from the workspace's, so neither
# build invalidates or waits on the other), CARGO_BUILD_JOBS (cargo's jobs;
# nvcc's parallelism per crate, CUDAFORGE_THREADS, follows it).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$repo_root"

export CARGO_TARGET_DIR=${BACKHAUL_CUDA_TARGET_DIR:-$BACKHAUL_CACHE/target-cuda}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
if [ -n "${CARGO_BUILD_JOBS:-}" ]; then
  export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-$CARGO_BUILD_JOBS}
fi
out=${BACKHAUL_CUDA_CHECK_OUT:-$repo_root/docs/cuda-check.json}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
record=$work/record

# timed NAME CMD...: step, plus a line in the record.
timed() {
  local name=$1 start rc=0
  shift
  start=$(date +%s)
  step "$name" "$@" || rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$*" "$(($(date +%s) - start))" "$rc" >>"$record"
  return $rc
}

# What the record says about the start: the commit checked, whether cargo's
# target directory and the toolkit were there already.
commit=$(git rev-parse --short HEAD)
clean=true
[ -z "$(git status --porcelain --untracked-files=no)" ] || clean=false
cold=false
[ -d "$CARGO_TARGET_DIR/debug" ] || cold=true
toolkit_cached=false
compgen -G "$BACKHAUL_CACHE/cuda/toolkit-$(sha256sum scripts/cuda-wheels.txt | cut -c1-12)-*/.complete" >/dev/null && toolkit_cached=true
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date +%s)

timed "CUDA toolkit from PyPI (scripts/cuda-wheels.txt)" scripts/cuda-toolkit.sh >"$work/root"
cuda_root=$(cat "$work/root")
# Where each tool looks: nvcc on PATH (cudaforge, mistralrs-quant's and
# cudarc's version probes), CUDA_HOME/CUDA_PATH/CUDA_ROOT for headers and
# libraries (cudarc, cudaforge), LIBRARY_PATH for a linker.
export CUDA_HOME=$cuda_root CUDA_PATH=$cuda_root CUDA_ROOT=$cuda_root
export PATH=$cuda_root/bin:$PATH
export LIBRARY_PATH=$cuda_root/lib:$cuda_root/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}
nvcc_version=$(nvcc --version | sed -n 's/^Cuda compilation tools, //p')
echo "check-cuda: nvcc $nvcc_version, CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP, CARGO_TARGET_DIR=$CARGO_TARGET_DIR" >&2

for features in cuda cuda,nccl; do
  timed "cargo check --features $features" \
    cargo check --locked -p backhaul-inference --features "$features"
done

python3 - "$record" "$out" <<PY
import json, platform, subprocess, sys
steps = []
for line in open(sys.argv[1]):
    name, command, seconds, rc = line.rstrip("\n").split("\t")
    steps.append({"step": name, "command": command, "seconds": int(seconds), "ok": rc == "0"})
def run(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
pins = [l.split()[0] for l in open("scripts/cuda-wheels.txt") if l[:1].isalpha()]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
record = {
    "date": run("date", "-u", "+%Y-%m-%dT%H:%M:%SZ"),
    "commit": "$commit",
    "worktree_clean": "$clean" == "true",
    "command": "make check-cuda",
    "cold": "$cold" == "true",
    "toolkit_was_cached": "$toolkit_cached" == "true",
    "machine": f"{run('nproc')} x {cpu}, {platform.system()} {platform.release()}",
    "load_average_before": "$load_before",
    "load_average_after": " ".join(open("/proc/loadavg").read().split()[:3]),
    "cargo_build_jobs": "${CARGO_BUILD_JOBS:-default}",
    "cuda_compute_cap": "$CUDA_COMPUTE_CAP",
    "nvcc": "$nvcc_version",
    "wheels": pins,
    "rustc": run("rustc", "--version"),
    "steps": steps,
    "total_seconds": sum(s["seconds"] for s in steps),
}
with open(sys.argv[2], "w") as f:
    json.dump(record, f, indent=2)
    f.write("\n")
PY
echo "check-cuda: passed in $(($(date +%s) - started))s; record in ${out#"$repo_root"/}" >&2
