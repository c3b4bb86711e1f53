#!/usr/bin/env bash
# make gpu-bench: Backhaul against mistral.rs on one NVIDIA GPU (issue 17):
# backhaul-inference's OpenAI HTTP surface, mistral.rs in-process
# (backhaul-bench) and `mistralrs serve` (mistralrs-cli 0.8.1), same model,
# prompts and greedy sampling, on the same GPU; TTFT, inter-token latency and
# output tokens/s at concurrency 1, 8, 32 and 128, and decode bandwidth as a
# fraction of the GPU's HBM bandwidth. Writes NAME.json and NAME.md (NAME:
# gpu-bench, or gpu-bench-cpu-dryrun in CPU mode) into $OUT when that is set
# (the device machine), else into docs/benchmarks/.
#
#   scripts/gpu-bench.sh pack   # here: bundle what the GPU machine needs into .gpu-bench/ (carried)
#   scripts/gpu-bench.sh run    # there: unpack, detect the GPU, synthesize the models, measure, report
#   GPU_BENCH_DEVICE=cpu scripts/gpu-bench.sh pack && GPU_BENCH_DEVICE=cpu scripts/gpu-bench.sh run
#                               # the same flow on the CPU, small: proves it where no GPU is lent
#
# Why a bundle: the GPU machine this workplace lends has CUDA (nvcc 13.0,
# driver 580) and Python with PyTorch but no Rust toolchain, no network and
# takes at most 64 MiB of files per call (the working tree included). So
# everything Rust is built here, with CUDA, and travels stripped and
# xz-compressed in .gpu-bench/bin.tar.xz (one solid archive: the three
# binaries share mistral.rs's kernels); nothing is built there. No weights
# can travel either (SmolLM2's file alone is 94 MiB): .gpu-bench/ holds
# SmolLM2's GGUF header (metadata, tokenizer, tensor list; 1.7 MiB) and
# bench/gguf.py writes the models there from it with random weights in the
# real layout, so a decode step reads and computes what the trained model's
# does (see bench/gguf.py).
#
# pack, device cuda: the CUDA binaries (release profile, CUDA_COMPUTE_CAP=90
# for Hopper), from BACKHAUL_INFERENCE_BIN, BACKHAUL_BENCH_BIN and
# MISTRALRS_BIN, by default where GPU_BENCH_BUILD=1 builds them:
#   CUDA_COMPUTE_CAP=90 CARGO_TARGET_DIR=$BACKHAUL_CACHE/target-cuda cargo build --release --locked \
#     -p backhaul-inference -p backhaul-bench --features backhaul-inference/cuda,backhaul-bench/cuda
#   CUDA_COMPUTE_CAP=90 cargo install mistralrs-cli --version 0.8.1 --locked --features cuda \
#     --root $BACKHAUL_CACHE/mistralrs-cli-cuda --target-dir $BACKHAUL_CACHE/target-cuda
# (nvcc and the CUDA 13 libraries on PATH / LIBRARY_PATH: the machine's
# driver is CUDA 13.0 and its libraries are CUDA 13's, which the binaries
# link by soname). Device cpu: the workspace's dev builds and, if installed,
# scripts/bench.sh's mistralrs-cli.
#
# run: knobs (environment; defaults for cuda / cpu):
#   GPU_BENCH_MODELS       smollm2-135m,llama-8b / smollm2-135m (bench/gguf.py SHAPES)
#   GPU_BENCH_CONCURRENCY  1,8,32,128 / 1,2
#   GPU_BENCH_MAX_TOKENS   128 / 16        tokens per answer
#   GPU_BENCH_ROUNDS       2 / 1
#   GPU_BENCH_MIN_REQUESTS 4 / 2           a batch is max(c, this) requests
#   GPU_BENCH_MAX_SEQS     the largest concurrency / 32: every engine's batch limit
#   GPU_BENCH_MAX_SEQ_LEN  1024 / 4096     the context every engine's automatic device map
#                                          plans for, with GPU_BENCH_MAX_SEQS sequences
#                                          (mistral.rs's default, 4096, plans 69 GB of KV
#                                          cache for the 8B model at 128 sequences)
#   GPU_BENCH_GRPC         0               1: Backhaul's gRPC surface too
#   GPU_BENCH_BUDGET_S     450 / 1200      the whole run's wall-time budget: a model
#                                          after the first starts only with
#   GPU_BENCH_MODEL_MIN_S  240 / 60        seconds of it left, and each benchmark
#                                          is cut off where the budget ends
#   GPU_BENCH_WORK         /dev/shm/gpu-bench with 10 GiB free, else /tmp/gpu-bench: unpacked
#                          binaries, models, logs
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$repo_root"

mode=${1:-run}
device=${GPU_BENCH_DEVICE:-cuda}
case $device in cuda | cpu) ;; *) echo "gpu-bench: GPU_BENCH_DEVICE is cuda or cpu" >&2; exit 2 ;; esac
bundle=$repo_root/.gpu-bench
template_src=$BACKHAUL_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf
# What the device machine accepts per call: the working tree and carried paths.
travel_limit=$((64 * 1024 * 1024))

# --- pack ---------------------------------------------------------------------

build_cuda() {
  command -v nvcc >/dev/null || { echo "gpu-bench: building with CUDA needs nvcc on PATH" >&2; return 1; }
  export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
  CARGO_TARGET_DIR=$BACKHAUL_CACHE/target-cuda nice -n 19 cargo build --release --locked \
    -p backhaul-inference -p backhaul-bench --features backhaul-inference/cuda,backhaul-bench/cuda
  nice -n 19 cargo install mistralrs-cli --version 0.8.1 --locked --features cuda \
    --root "$BACKHAUL_CACHE/mistralrs-cli-cuda" --target-dir "$BACKHAUL_CACHE/target-cuda"
}

# The bytes that travel with every call: tracked and untracked-not-ignored files.
tree_bytes() {
  git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null |
    awk '{s += $1} END {print s + 0}'
}

pack() {
  local inf bench serve
  if [ "$device" = cuda ]; then
    inf=${BACKHAUL_INFERENCE_BIN:-$BACKHAUL_CACHE/target-cuda/release/backhaul-inference}
    bench=${BACKHAUL_BENCH_BIN:-$BACKHAUL_CACHE/target-cuda/release/backhaul-bench}
    serve=${MISTRALRS_BIN:-$BACKHAUL_CACHE/mistralrs-cli-cuda/bin/mistralrs}
    if [ "${GPU_BENCH_BUILD:-0}" = 1 ]; then step "build with CUDA" build_cuda; fi
  else
    inf=${BACKHAUL_INFERENCE_BIN:-$CARGO_TARGET_DIR/debug/backhaul-inference}
    bench=${BACKHAUL_BENCH_BIN:-$CARGO_TARGET_DIR/debug/backhaul-bench}
    serve=${MISTRALRS_BIN:-$BACKHAUL_CACHE/mistralrs-cli/bin/mistralrs}
  fi
  local missing=()
  for f in "$inf" "$bench"; do
    [ -x "$f" ] || { echo "gpu-bench: $f missing (device $device; see this script's header)" >&2; return 1; }
  done
  if [ ! -x "$serve" ]; then
    echo "gpu-bench: WARNING: $serve missing: the run will have no \`mistralrs serve\`" >&2
    missing+=("mistralrs serve: no mistralrs binary was packed ($serve missing)")
    serve=
  fi
  [ -f "$template_src" ] || { echo "gpu-bench: $template_src missing (make model)" >&2; return 1; }
  rm -rf "$bundle"
  mkdir -p "$bundle"
  local staging
  staging=$(mktemp -d)
  mkdir -p "$staging/bin"
  strip -o "$staging/bin/backhaul-inference" "$inf"
  strip -o "$staging/bin/backhaul-bench" "$bench"
  if [ -n "$serve" ]; then strip -o "$staging/bin/mistralrs" "$serve"; fi
  # One solid stream with a window wider than a binary, so the kernels the
  # binaries share (mistral.rs's, candle's) are stored once.
  tar -C "$staging" -cf - bin | xz -T1 --lzma2=preset=9,dict=256MiB >"$bundle/bin.tar.xz"
  python3 bench/gguf.py template "$template_src" "$bundle/smollm2.template.gguf"
  python3 - "$bundle/bundle.json" "$device" "$staging/bin" "$bundle/bin.tar.xz" "$inf" "$bench" "${serve:-}" "${missing[@]}" <<'EOF'
import datetime, hashlib, json, os, subprocess, sys
out, device, staged, archive, inf, bench, serve, *missing = sys.argv[1:]
sha = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()
bins = {}
for name, src in (("backhaul-inference", inf), ("backhaul-bench", bench), ("mistralrs", serve)):
    if src:
        bins[name] = {"from": src, "sha256": sha(src), "bytes": os.path.getsize(src),
                      "stripped_bytes": os.path.getsize(os.path.join(staged, name))}
git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True).stdout.strip()
json.dump({"device": device, "packed": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
           "binaries": bins, "archive_bytes": os.path.getsize(archive), "missing": missing,
           "cuda_compute_cap": os.environ.get("CUDA_COMPUTE_CAP") if device == "cuda" else None},
          open(out, "w"), indent=2)
EOF
  rm -rf "$staging"
  local tree bundle_bytes
  tree=$(tree_bytes)
  bundle_bytes=$(du -sb "$bundle" | cut -f1)
  echo "gpu-bench: packed $bundle: $((bundle_bytes / 1024 / 1024)) MiB (binaries $(($(stat -c %s "$bundle/bin.tar.xz") / 1024 / 1024)) MiB xz);" \
    "with the working tree ($((tree / 1024 / 1024)) MiB) $(((tree + bundle_bytes) / 1024 / 1024)) MiB of the 64 MiB a call carries" >&2
  if [ $((tree + bundle_bytes)) -gt $travel_limit ]; then
    echo "gpu-bench: TOO LARGE to carry in one call" >&2
    return 1
  fi
}

# --- run ----------------------------------------------------------------------

# A port the kernel calls free right now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

http_ok() { python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' "$1" 2>/dev/null; }

# wait_up URL PID SECONDS LOG: until URL answers 2xx; fails at once if PID exits.
wait_up() {
  local deadline=$((SECONDS + $3))
  until http_ok "$1"; do
    if ! kill -0 "$2" 2>/dev/null; then
      echo "gpu-bench: the server for $1 exited; the end of $4:" >&2
      tail -n 20 "$4" >&2
      return 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      echo "gpu-bench: $1 did not come up in $3 s" >&2
      return 1
    fi
    sleep 0.5
  done
}

pids=()
stop_all() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
trap stop_all EXIT

# Where the CUDA libraries the binaries link (cuBLAS, cuBLASLt, cuRAND,
# NVRTC, the runtime; the driver's libcuda) are on the GPU machine: the
# toolkit's, the driver's, and the ones PyTorch's wheels bring.
cuda_library_path() {
  python3 - <<'EOF'
import glob, os, site
dirs = ["/usr/local/nvidia/lib64", "/usr/local/nvidia/lib", "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/x86_64-linux/lib", *sorted(glob.glob("/usr/local/cuda-*/lib64"))]
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    dirs += sorted(glob.glob(os.path.join(sp, "nvidia", "*", "lib")))
    dirs += sorted(glob.glob(os.path.join(sp, "nvidia", "*", "*", "lib")))
seen = []
for d in dirs:
    if os.path.isdir(d) and d not in seen:
        seen.append(d)
print(":".join(seen))
EOF
}

# A device-to-device copy through PyTorch, where it is installed: the
# memory bandwidth this GPU reaches (bytes read + written), beside the
# datasheet's.
measure_copy() {
  timeout 120 python3 - <<'EOF'
import json, sys
try:
    import torch
except ImportError:
    sys.exit(1)
if not torch.cuda.is_available():
    sys.exit(1)
n = 1 << 30
a = torch.randint(0, 256, (n,), dtype=torch.uint8, device="cuda")
b = torch.empty_like(a)
for _ in range(3):
    b.copy_(a)
torch.cuda.synchronize()
times = []
for _ in range(10):
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record(); b.copy_(a); e.record(); e.synchronize()
    times.append(s.elapsed_time(e) / 1000)
t = sorted(times)[len(times) // 2]
print(json.dumps({"bytes_per_s": 2 * n / t, "seconds_median": t, "torch": torch.__version__,
                  "method": "torch copy_ of 1 GiB of random uint8, median of 10 after 3 warm-ups, bytes read + written"}))
EOF
}

run() {
  local started t0 budget model_min out name work
  started=$(date -u +%FT%TZ)
  t0=$SECONDS
  local load_before
  load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  if [ "$device" = cuda ]; then
    : "${GPU_BENCH_MODELS:=smollm2-135m,llama-8b}" "${GPU_BENCH_CONCURRENCY:=1,8,32,128}" "${GPU_BENCH_MAX_TOKENS:=128}"
    : "${GPU_BENCH_ROUNDS:=2}" "${GPU_BENCH_MIN_REQUESTS:=4}" "${GPU_BENCH_BUDGET_S:=450}" "${GPU_BENCH_MODEL_MIN_S:=240}"
    name=gpu-bench
  else
    : "${GPU_BENCH_MODELS:=smollm2-135m}" "${GPU_BENCH_CONCURRENCY:=1,2}" "${GPU_BENCH_MAX_TOKENS:=16}"
    : "${GPU_BENCH_ROUNDS:=1}" "${GPU_BENCH_MIN_REQUESTS:=2}" "${GPU_BENCH_BUDGET_S:=1200}" "${GPU_BENCH_MODEL_MIN_S:=60}"
    name=gpu-bench-cpu-dryrun
  fi
  local max_c seqs seq_len
  max_c=$(tr ',' '\n' <<<"$GPU_BENCH_CONCURRENCY" | sort -n | tail -n 1)
  seqs=${GPU_BENCH_MAX_SEQS:-$([ "$device" = cuda ] && echo "$max_c" || echo 32)}
  seq_len=${GPU_BENCH_MAX_SEQ_LEN:-$([ "$device" = cuda ] && echo 1024 || echo 4096)}
  budget=$GPU_BENCH_BUDGET_S
  model_min=$GPU_BENCH_MODEL_MIN_S
  out=${OUT:-$repo_root/docs/benchmarks}
  if [ -z "${GPU_BENCH_WORK:-}" ]; then
    # Memory-backed when it has room for the largest model (8B: 4.6 GiB) twice over.
    GPU_BENCH_WORK=/tmp/gpu-bench
    if [ -w /dev/shm ] && [ "$(df -Pk /dev/shm | awk 'NR == 2 {print $4}')" -gt $((10 * 1024 * 1024)) ]; then
      GPU_BENCH_WORK=/dev/shm/gpu-bench
    fi
  fi
  work=$GPU_BENCH_WORK
  rm -rf "$work"
  mkdir -p "$work/run/models" "$work/logs"
  local run_dir=$work/run logs=$work/logs

  # 1. The GPU.
  if [ "$device" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.memory,temperature.gpu,power.limit \
      --format=csv >"$run_dir/gpu.csv" || { echo "gpu-bench: nvidia-smi failed: no NVIDIA GPU here?" >&2; return 1; }
    nvidia-smi >"$logs/nvidia-smi-before.txt" 2>&1 || true
    echo "gpu-bench: $(sed -n 2p "$run_dir/gpu.csv"); HBM $(python3 bench/gpu_report.py hbm "$(sed -n 2p "$run_dir/gpu.csv" | cut -d, -f1)") TB/s (datasheet)" >&2
  fi

  # 2. The binaries, built elsewhere (pack).
  [ -f "$bundle/bin.tar.xz" ] || { echo "gpu-bench: $bundle/bin.tar.xz missing: run \`scripts/gpu-bench.sh pack\` and carry .gpu-bench" >&2; return 1; }
  if [ "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["device"])' "$bundle/bundle.json")" != "$device" ]; then
    echo "gpu-bench: $bundle was packed for another device than $device" >&2
    return 1
  fi
  if command -v xz >/dev/null; then
    xz -dc "$bundle/bin.tar.xz" | tar -C "$work" -xf -
  else
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' "$bundle/bin.tar.xz" "$work"
  fi
  cp "$bundle/bundle.json" "$run_dir/bundle.json"
  local bin=$work/bin
  if [ "$device" = cuda ]; then
    export LD_LIBRARY_PATH
    LD_LIBRARY_PATH=$(cuda_library_path)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    local f missing_libs
    for f in "$bin"/*; do
      missing_libs=$(ldd "$f" | grep 'not found' || true)
      if [ -n "$missing_libs" ]; then
        echo "gpu-bench: $f: libraries not found (LD_LIBRARY_PATH=$LD_LIBRARY_PATH):" >&2
        echo "$missing_libs" >&2
        return 1
      fi
    done
    # 3. The memory bandwidth this GPU reaches, measured.
    measure_copy >"$run_dir/copy-bandwidth.json" 2>"$logs/copy-bandwidth.log" || rm -f "$run_dir/copy-bandwidth.json"
  fi
  local serve_bin=
  if [ -x "$bin/mistralrs" ]; then serve_bin=$bin/mistralrs; fi
  local serve_flags=()
  if [ -n "$serve_bin" ]; then
    # mistralrs-cli's flags for the settings every engine here shares: the
    # batch limit, the device map's plan (its batch defaults to 1), and
    # PagedAttention off (it is on by default on CUDA and would take 90% of
    # the GPU's memory for its cache).
    local help
    help=$("$serve_bin" serve --help 2>&1 || true)
    if grep -q -- '--max-seqs' <<<"$help"; then serve_flags+=(--max-seqs "$seqs"); fi
    if grep -q -- '--max-seq-len' <<<"$help"; then serve_flags+=(--max-seq-len "$seq_len"); fi
    if grep -q -- '--max-batch-size' <<<"$help"; then serve_flags+=(--max-batch-size "$seqs"); fi
    if grep -q -- '--paged-attn <' <<<"$help"; then
      serve_flags+=(--paged-attn off)
    elif grep -q -- '--no-paged-attn' <<<"$help"; then
      serve_flags+=(--no-paged-attn)
    elif [ "$device" = cuda ]; then
      echo "gpu-bench: WARNING: \`mistralrs serve --help\` names no flag to turn PagedAttention off" >&2
    fi
    if [ "$device" = cpu ]; then serve_flags+=(--cpu); fi
  fi

  local cmd="GPU_BENCH_DEVICE=$device GPU_BENCH_MODELS=$GPU_BENCH_MODELS GPU_BENCH_CONCURRENCY=$GPU_BENCH_CONCURRENCY"
  cmd+=" GPU_BENCH_MAX_TOKENS=$GPU_BENCH_MAX_TOKENS GPU_BENCH_ROUNDS=$GPU_BENCH_ROUNDS GPU_BENCH_MIN_REQUESTS=$GPU_BENCH_MIN_REQUESTS"
  cmd+=" GPU_BENCH_MAX_SEQS=$seqs GPU_BENCH_MAX_SEQ_LEN=$seq_len scripts/gpu-bench.sh run   # after: GPU_BENCH_DEVICE=$device scripts/gpu-bench.sh pack"

  # 4. Each model: synthesize it, start both servers, measure, stop them.
  local shape order=0 IFS_=$IFS
  IFS=, read -r -a shapes <<<"$GPU_BENCH_MODELS"
  IFS=$IFS_
  for shape in "${shapes[@]}"; do
    local d=$run_dir/models/$shape m_t0=$SECONDS
    mkdir -p "$d"
    echo "$order" >"$d/order.txt"
    local left=$((t0 + budget - SECONDS))
    if [ "$order" -gt 0 ] && [ "$left" -lt "$model_min" ]; then
      echo "skipped: ${left} s of the run's ${budget} s budget were left, under the ${model_min} s a model needs (GPU_BENCH_BUDGET_S, GPU_BENCH_MODEL_MIN_S)" >"$d/error.txt"
      echo "gpu-bench: $shape: $(cat "$d/error.txt")" >&2
      order=$((order + 1))
      continue
    fi
    order=$((order + 1))
    echo "gpu-bench: $shape: synthesizing" >&2
    local gguf=$work/$shape.gguf
    if ! python3 bench/gguf.py synth "$bundle/smollm2.template.gguf" "$gguf" --shape "$shape" >"$d/info.json"; then
      echo "synthesizing the model failed" >"$d/error.txt"
      continue
    fi
    if ! bench_model; then
      [ -s "$d/error.txt" ] || echo "failed: see the logs ($shape-*.log)" >"$d/error.txt"
      echo "gpu-bench: $shape: $(cat "$d/error.txt")" >&2
    fi
    stop_all
    rm -f "$gguf"
    echo $((SECONDS - m_t0)) >"$d/seconds.txt"
  done

  # 5. The report.
  if [ "$device" = cuda ]; then nvidia-smi >"$logs/nvidia-smi-after.txt" 2>&1 || true; fi
  local cpu_model
  cpu_model=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')
  python3 - "$run_dir/run.json" "$cmd" "$device" "$started" "$((SECONDS - t0))" "$GPU_BENCH_CONCURRENCY" \
    "$GPU_BENCH_MAX_TOKENS" "$GPU_BENCH_ROUNDS" "$GPU_BENCH_MIN_REQUESTS" "$seqs" "$(nproc) x $cpu_model" \
    "$load_before" "$(cut -d' ' -f1-3 /proc/loadavg)" "$seq_len" <<'EOF'
import datetime, json, subprocess, sys
out, cmd, device, started, seconds, conc, max_tokens, rounds, min_req, seqs, cpu, load_before, load_after, seq_len = sys.argv[1:]
# The script's own commit, where the tree has its .git (not on the device machine).
git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True).stdout.strip()
commit = git("rev-parse", "--short", "HEAD") or None
dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None
json.dump({"command": cmd, "device": device, "started": started,
           "finished": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "seconds": int(seconds), "concurrency": [int(c) for c in conc.split(",")], "max_tokens": int(max_tokens),
           "rounds": int(rounds), "min_requests": int(min_req), "max_seqs": int(seqs), "max_seq_len": int(seq_len), "cpu": cpu, "commit": commit, "dirty": dirty,
           "loadavg_before": load_before.split(), "loadavg_after": load_after.split()}, open(out, "w"), indent=2)
EOF
  python3 bench/gpu_report.py "$run_dir" "$out" "$name"
  if [ -n "${OUT:-}" ]; then
    tar -C "$work" -czf "$OUT/$name-logs.tar.gz" logs run
  fi
  echo "gpu-bench: wrote $out/$name.json and $out/$name.md in $((SECONDS - t0)) s; logs in $logs" >&2
}

# One model's servers and benchmark (run's locals: shape, gguf, d, logs,
# bin, serve_bin, serve_flags, seqs, seq_len, t0, budget).
bench_model() {
  local grpc_port http_port metrics_port serve_port inf_pid serve_pid= serve_model
  grpc_port=$(free_port) http_port=$(free_port) metrics_port=$(free_port)
  local inf_args=(--model "$gguf" --served-name smollm2 --device "$device" --allow-unauthenticated
    --max-num-seqs "$seqs" --max-in-flight "$seqs" --max-queue "$seqs" --max-seq-len "$seq_len"
    --grpc-addr "127.0.0.1:$grpc_port" --http-addr "127.0.0.1:$http_port" --metrics-addr "127.0.0.1:$metrics_port")
  "$bin/backhaul-inference" "${inf_args[@]}" >"$logs/$shape-backhaul-inference.log" 2>&1 &
  inf_pid=$!
  pids+=("$inf_pid")
  local servers=("backhaul-inference ${inf_args[*]}")
  if [ -n "$serve_bin" ]; then
    serve_port=$(free_port)
    local serve_args=(--token-source none serve --host 127.0.0.1 -p "$serve_port" "${serve_flags[@]}"
      --format gguf -m "$(dirname "$gguf")" -f "$(basename "$gguf")")
    "$serve_bin" "${serve_args[@]}" >"$logs/$shape-mistralrs-serve.log" 2>&1 &
    serve_pid=$!
    pids+=("$serve_pid")
    servers+=("mistralrs ${serve_args[*]}")
  fi
  wait_up "http://127.0.0.1:$http_port/ready" "$inf_pid" 600 "$logs/$shape-backhaul-inference.log" ||
    { echo "backhaul-inference did not come up (log: $shape-backhaul-inference.log)" >"$d/error.txt"; return 1; }
  local bench_args=(--model "$gguf" --device "$device")
  # A backhaul-bench from before --max-num-seqs and --max-seq-len plans
  # 32 sequences of 4096 tokens in-process.
  local bench_help
  bench_help=$("$bin/backhaul-bench" --help)
  if grep -q -- '--max-num-seqs' <<<"$bench_help"; then
    bench_args+=(--max-num-seqs "$seqs")
  elif [ "$seqs" != 32 ]; then
    echo "this backhaul-bench has no --max-num-seqs (it batches 32 in-process, not $seqs): pack a newer one" >"$d/error.txt"
    return 1
  fi
  if grep -q -- '--max-seq-len' <<<"$bench_help"; then
    bench_args+=(--max-seq-len "$seq_len")
  elif [ "$seq_len" != 4096 ]; then
    echo "this backhaul-bench has no --max-seq-len (it plans 4096 tokens in-process, not $seq_len): pack a newer one" >"$d/error.txt"
    return 1
  fi
  bench_args+=(--http "http://127.0.0.1:$http_port" --http-model smollm2 --backhaul-pid "$inf_pid"
    --concurrency "$GPU_BENCH_CONCURRENCY" --rounds "$GPU_BENCH_ROUNDS" --max-tokens "$GPU_BENCH_MAX_TOKENS"
    --requests-factor 1 --min-requests "$GPU_BENCH_MIN_REQUESTS")
  if [ "${GPU_BENCH_GRPC:-0}" = 1 ]; then bench_args+=(--grpc "http://127.0.0.1:$grpc_port"); fi
  if [ -n "$serve_pid" ]; then
    wait_up "http://127.0.0.1:$serve_port/v1/models" "$serve_pid" 600 "$logs/$shape-mistralrs-serve.log" ||
      { echo "\`mistralrs serve\` did not come up (log: $shape-mistralrs-serve.log)" >"$d/error.txt"; return 1; }
    serve_model=$(python3 -c 'import json, sys, urllib.request; print(json.load(urllib.request.urlopen(sys.argv[1]))["data"][0]["id"])' \
      "http://127.0.0.1:$serve_port/v1/models")
    bench_args+=(--serve "http://127.0.0.1:$serve_port" --serve-model "$serve_model" --serve-pid "$serve_pid")
  fi
  local left=$((t0 + budget - SECONDS))
  if [ "$left" -lt 30 ]; then
    echo "not measured: the run's ${budget} s budget was spent before the benchmark could start" >"$d/error.txt"
    return 1
  fi
  python3 -c 'import json, sys; print(json.dumps(dict(zip(["backhaul_bench", "backhaul_inference", "mistralrs_serve"], sys.argv[1:])), indent=2))' \
    "backhaul-bench ${bench_args[*]}" "${servers[@]}" >"$d/servers.json"
  echo "gpu-bench: $shape: backhaul-bench ${bench_args[*]} (cut off after $left s)" >&2
  local rc=0
  timeout --signal=TERM "$left" "$bin/backhaul-bench" "${bench_args[@]}" >"$d/bench.json.tmp" 2> >(tee "$logs/$shape-bench.log" >&2) || rc=$?
  if [ "$rc" -ne 0 ]; then
    rm -f "$d/bench.json.tmp"
    if [ "$rc" -eq 124 ]; then
      echo "not measured: backhaul-bench was cut off at the end of the run's ${budget} s budget (GPU_BENCH_BUDGET_S)" >"$d/error.txt"
    else
      echo "backhaul-bench failed (exit $rc; log: $shape-bench.log)" >"$d/error.txt"
    fi
    return 1
  fi
  mv "$d/bench.json.tmp" "$d/bench.json"
}

case $mode in
  pack) pack ;;
  run) run ;;
  *) echo "usage: scripts/gpu-bench.sh pack|run (GPU_BENCH_DEVICE=cuda|cpu)" >&2; exit 2 ;;
esac
