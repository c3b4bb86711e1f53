#!/usr/bin/env bash
# make bench: Backhaul's benchmarks, written to docs/benchmarks/.
#
#   BENCH=inference,inference-interleaved,cpu-peer,routing,control-plane,worker-table,edge-cache scripts/bench.sh   (default: all seven)
#
# Each section measures on this machine, writes its raw JSON under
# $BACKHAUL_CACHE/bench/, and bench/report.py merges it into
# docs/benchmarks/results.json (sections not run keep their last results) and
# regenerates docs/benchmarks/README.md and its plots from that file alone.
#
# Knobs (environment): INFERENCE_ROUNDS (3), INFERENCE_MAX_TOKENS (48),
# INFERENCE_CONCURRENCY (1,4,16), INFERENCE_REQUESTS_FACTOR (1: a batch is
# max(factor × c, INFERENCE_MIN_REQUESTS (8)) requests),
# INFERENCE_INTERLEAVED_ROUNDS (6), INFERENCE_INTERLEAVED_CONCURRENCY (1,4),
# INFERENCE_PROFILE (1: `perf record` the servers through the main
# inference run, when perf is installed),
# CPU_PEER_ROUNDS (4), CPU_PEER_MAX_TOKENS (128), CPU_PEER_CONCURRENCY (1,4),
# CPU_PEER_THREADS (llama.cpp's threads; default nproc),
# ROUTING_REQUESTS (300, also the profile's),
# CONTROL_PLANE_COUNTS (1,100,1000), and bench/control_plane.py's own
# CONTROL_PLANE_* (its docstring),
# WORKER_TABLE_ROUTES (10000), WORKER_TABLE_REQUESTS (300),
# WORKER_TABLE_DIR (the worker/ checkout measured; default this repo's),
# WORKER_TABLE_BASELINE (another checkout's worker/ measured in the same run),
# EDGE_CACHE_PROMPTS (8), EDGE_CACHE_HITS (20), EDGE_CACHE_MAX_TOKENS (32),
# EDGE_CACHE_COALESCE (1,4,16), EDGE_CACHE_ROUNDS (3), EDGE_CACHE_WORKER_DIR
# (the worker/ checkout run; default this repo's: wrangler dev reloads on
# every edit of it, so measure a checkout nobody edits meanwhile).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$repo_root"

sections=${BENCH:-inference,inference-interleaved,cpu-peer,routing,control-plane,worker-table,edge-cache}
out_dir=$BACKHAUL_CACHE/bench
mkdir -p "$out_dir"
model=$BACKHAUL_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf
mistralrs_cli=$BACKHAUL_CACHE/mistralrs-cli/bin/mistralrs
venv=$BACKHAUL_CACHE/venv-bench
llamacpp_version=0.3.36
llamacpp_venv=$BACKHAUL_CACHE/venv-llamacpp

pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

has() { [[ ",$sections," == *",$1,"* ]]; }

# A port the kernel calls free right now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_http URL SECONDS: until URL answers 2xx.
wait_http() {
  local deadline=$((SECONDS + $2))
  until curl -fsS -o /dev/null "$1" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then
      echo "bench: $1 did not come up in $2 s" >&2
      return 1
    fi
    sleep 0.5
  done
}

# The machine, as every section records it.
machine_json() {
  python3 - <<'EOF'
import json, os, platform, subprocess
model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
mem = next((int(l.split()[1]) // 1024 for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
print(json.dumps({
    "nproc": os.cpu_count(), "cpu_model": model, "mem_mib": mem, "kernel": platform.release(),
    "loadavg": open("/proc/loadavg").read().split()[:3],
    "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
}))
EOF
}

# wrap SECTION RAW.json COMMAND: stamps the section's raw JSON with the
# machine before and after, the date and the command.
wrap() {
  local section=$1 raw=$2 cmd=$3 before after
  before=$(machine_json)
  shift 3
  rm -f "$raw"
  # `step` runs this with errexit off: check the benchmark's status here, so
  # a failed run never leaves a results file behind.
  if ! "$@" >"$raw.tmp"; then
    echo "bench: $section failed" >&2
    rm -f "$raw.tmp"
    return 1
  fi
  after=$(machine_json)
  python3 - "$raw.tmp" "$raw" "$cmd" "$before" "$after" <<'EOF'
import json, sys, datetime
tmp, raw, cmd, before, after = sys.argv[1:]
data = json.load(open(tmp))
json.dump({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": cmd, "machine": json.loads(before),
           "loadavg_after": json.loads(after)["loadavg"], "results": data}, open(raw, "w"), indent=2)
EOF
  local rc=$?
  rm -f "$raw.tmp"
  return $rc
}

# mistralrs-cli 0.8.1 (`mistralrs serve`), installed once into the cache.
ensure_mistralrs_cli() {
  if [ -x "$mistralrs_cli" ]; then return; fi
  echo "bench: installing mistralrs-cli 0.8.1 into $BACKHAUL_CACHE/mistralrs-cli (15-25 min)" >&2
  nice -n 19 cargo install mistralrs-cli --version 0.8.1 --locked \
    --root "$BACKHAUL_CACHE/mistralrs-cli" --target-dir "$BACKHAUL_CACHE/mistralrs-cli-target"
}

# llama-cpp-python (llama.cpp's OpenAI-compatible server), installed once
# into its own venv in the cache. pip builds llama.cpp from source with its
# defaults (GGML_NATIVE: -march=native, tuned to this machine's CPU), about
# 12 min on 2 cores, except AMX: on a CPU that reports AMX to a VM that does
# not grant its tile state, llama.cpp's AMX matmul faults (SIGSEGV at
# `ldtilecfg` in ggml_backend_amx_mul_mat, seen here), so it is compiled out.
# The build's settings are stamped in the venv; other settings rebuild it,
# bypassing pip's wheel cache.
llamacpp_flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
ensure_llamacpp() {
  local stamp="llama-cpp-python $llamacpp_version CFLAGS=$llamacpp_flags"
  if [ "$(cat "$llamacpp_venv/backhaul-build" 2>/dev/null)" = "$stamp" ]; then
    return
  fi
  echo "bench: installing llama-cpp-python[server]==$llamacpp_version into $llamacpp_venv (builds llama.cpp, ~12 min)" >&2
  rm -rf "$llamacpp_venv"
  python3 -m venv "$llamacpp_venv"
  CFLAGS=$llamacpp_flags CXXFLAGS=$llamacpp_flags nice -n 19 "$llamacpp_venv/bin/pip" install --quiet \
    --disable-pip-version-check --no-cache-dir "llama-cpp-python[server]==$llamacpp_version"
  echo "$stamp" >"$llamacpp_venv/backhaul-build"
}

# CPU_PEER_QUANT=q8_0: both servers of the cpu-peer section serve SmolLM2
# re-quantized from the shipped Q4_1 to Q8_0 by llama.cpp's own quantizer
# (llama_model_quantize through llama-cpp-python, deterministic: the same
# bytes every run), written beside the original once. candle has SIMD
# (AVX2) kernels for Q8_0 and none for Q4_1, so this is the format a CPU
# build for x86-64-v3 can be fast on; llama.cpp has SIMD for both.
requantized_model() {
  local quant=$1 out=$BACKHAUL_CACHE/models/SmolLM2-135M-Instruct.${1^^}.gguf
  if [ ! -s "$out" ]; then
    ensure_llamacpp
    "$llamacpp_venv/bin/python" - "$model" "$out.partial" "$quant" >"$out_dir/requantize.log" 2>&1 <<'PY'
import ctypes, sys
import llama_cpp
src, dst, quant = sys.argv[1:]
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0}[quant]
params.allow_requantize = True
params.nthread = 1
sys.exit(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)))
PY
    mv "$out.partial" "$out"
  fi
  echo "$out"
}

# Starts llama-cpp-python's server on a free port with the model and context
# window backhaul-inference serves (SmolLM2: 8,192) and CPU_PEER_THREADS
# threads: sets llamacpp_port, llamacpp_pid and llamacpp_cmd, and returns
# once it answers. --interrupt_requests false: by default a new request cuts
# the stream in progress short; with it, requests queue for the model.
start_llamacpp() {
  ensure_llamacpp
  local threads=${CPU_PEER_THREADS:-$(nproc)}
  llamacpp_port=$(free_port)
  local args=(--model "$model" --model_alias smollm2 --n_ctx 8192 --n_threads "$threads" --n_threads_batch "$threads"
    --interrupt_requests false --host 127.0.0.1 --port "$llamacpp_port")
  llamacpp_cmd="python -m llama_cpp.server ${args[*]}"
  "$llamacpp_venv/bin/python" -m llama_cpp.server "${args[@]}" >"$out_dir/llama-cpp-server.log" 2>&1 &
  llamacpp_pid=$!
  pids+=("$llamacpp_pid")
  wait_http "http://127.0.0.1:$llamacpp_port/v1/models" 300
}

# Builds and starts backhaul-inference on free ports: sets grpc_port,
# http_port and inference_pid, and returns once it is ready.
start_inference() {
  # BACKHAUL_INFERENCE_BIN: a backhaul-inference binary built elsewhere
  # from this checkout (any build's uplifted target/debug binary).
  local inference_bin=${BACKHAUL_INFERENCE_BIN:-$CARGO_TARGET_DIR/debug/backhaul-inference}
  if [ -z "${BACKHAUL_INFERENCE_BIN:-}" ]; then
    step "build backhaul-inference (dev profile)" build_workspace
  fi
  step "build backhaul-bench (dev profile)" build_workspace
  grpc_port=$(free_port) http_port=$(free_port) metrics_port=$(free_port)
  # Loopback only, and mistral.rs's own server (the peer) has no credential
  # either: both are measured without one.
  "$inference_bin" --model "$model" --served-name smollm2 --device cpu --allow-unauthenticated \
    --grpc-addr "127.0.0.1:$grpc_port" --http-addr "127.0.0.1:$http_port" --metrics-addr "127.0.0.1:$metrics_port" \
    >"$out_dir/backhaul-inference.log" 2>&1 &
  inference_pid=$!
  pids+=("$inference_pid")
  wait_http "http://127.0.0.1:$http_port/ready" 300
}

# Starts `mistralrs serve` on a free port: sets serve_port, serve_pid and
# serve_model, and returns once it answers.
start_serve() {
  ensure_mistralrs_cli
  serve_port=$(free_port)
  "$mistralrs_cli" --token-source none serve --host 127.0.0.1 -p "$serve_port" --cpu \
    --format gguf -m "$(dirname "$model")" -f "$(basename "$model")" >"$out_dir/mistralrs-serve.log" 2>&1 &
  serve_pid=$!
  pids+=("$serve_pid")
  wait_http "http://127.0.0.1:$serve_port/v1/models" 300
  serve_model=$(curl -fsS "http://127.0.0.1:$serve_port/v1/models" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
}

# Starts both servers and sets target_args: what every inference section
# passes backhaul-bench to reach them and account their CPU.
start_servers() {
  start_inference
  start_serve
  target_args=(--model "$model" --grpc "http://127.0.0.1:$grpc_port" --http "http://127.0.0.1:$http_port"
    --serve "http://127.0.0.1:$serve_port" --serve-model "$serve_model"
    --backhaul-pid "$inference_pid" --serve-pid "$serve_pid")
}

stop_servers() {
  kill -TERM "$inference_pid" "$serve_pid" 2>/dev/null || true
  wait "$inference_pid" "$serve_pid" 2>/dev/null || true
}

# Interleaved finely (BENCH=inference-interleaved): per round and
# concurrency c (INFERENCE_INTERLEAVED_CONCURRENCY, 1,4), one batch of c
# requests per target, INFERENCE_INTERLEAVED_ROUNDS (6) rounds, so the
# machine's drift over minutes falls on every target alike; the main
# section's batches are minutes apart (results.json: inference_interleaved).
bench_inference_interleaved() {
  [ -f "$model" ] || { echo "bench: $model missing (make model)" >&2; return 1; }
  start_servers
  local args=("${target_args[@]}" --rounds "${INFERENCE_INTERLEAVED_ROUNDS:-6}" --max-tokens 48
    --concurrency "${INFERENCE_INTERLEAVED_CONCURRENCY:-1,4}" --requests-factor 1 --min-requests 1)
  step "inference benchmark, interleaved" wrap inference-interleaved "$out_dir/inference-interleaved.json" \
    "backhaul-bench ${args[*]}" "$CARGO_TARGET_DIR/debug/backhaul-bench" "${args[@]}"
  stop_servers
}

# Backhaul against llama.cpp on the CPU (BENCH=cpu-peer, issue 17):
# backhaul-inference's OpenAI HTTP surface and llama-cpp-python's server,
# same GGUF, prompts and greedy sampling, interleaved as
# inference-interleaved is (one batch of c requests per target per round,
# order rotated); no in-process engine and no `mistralrs serve`
# (results.json: cpu_peer).
bench_cpu_peer() {
  [ -f "$model" ] || { echo "bench: $model missing (make model)" >&2; return 1; }
  local shipped=$model
  if [ -n "${CPU_PEER_QUANT:-}" ]; then model=$(requantized_model "$CPU_PEER_QUANT"); fi
  start_inference
  start_llamacpp
  local args=(--model "$model" --no-in-process --http "http://127.0.0.1:$http_port" --backhaul-pid "$inference_pid"
    --peer "llama_cpp=http://127.0.0.1:$llamacpp_port" --peer-pid "llama_cpp=$llamacpp_pid"
    --rounds "${CPU_PEER_ROUNDS:-4}" --max-tokens "${CPU_PEER_MAX_TOKENS:-128}"
    --concurrency "${CPU_PEER_CONCURRENCY:-1,4}" --requests-factor 1 --min-requests 1)
  # The servers' ports change every run: the command recorded is the
  # section's, with both servers' command lines.
  local env=
  if [ -n "${RAYON_NUM_THREADS:-}" ]; then env="RAYON_NUM_THREADS=$RAYON_NUM_THREADS "; fi
  if [ -n "${CPU_PEER_QUANT:-}" ]; then env="${env}CPU_PEER_QUANT=$CPU_PEER_QUANT "; fi
  if [ -n "${BACKHAUL_INFERENCE_BIN:-}" ]; then env="${env}BACKHAUL_INFERENCE_BIN=$BACKHAUL_INFERENCE_BIN "; fi
  step "cpu peer benchmark" wrap cpu-peer "$out_dir/cpu-peer.json" \
    "${env}BENCH=cpu-peer make bench   # backhaul-inference --device cpu and llama-cpp-python $llamacpp_version's $llamacpp_cmd, on free ports, then: backhaul-bench ${args[*]}" \
    "$CARGO_TARGET_DIR/debug/backhaul-bench" "${args[@]}"
  kill -TERM "$inference_pid" "$llamacpp_pid" 2>/dev/null || true
  wait "$inference_pid" "$llamacpp_pid" 2>/dev/null || true
  model=$shipped
}

bench_inference() {
  [ -f "$model" ] || { echo "bench: $model missing (make model)" >&2; return 1; }
  start_servers
  # The defaults fit about 50 minutes on 2 cores: 48-token answers, and a
  # batch of 8 requests at c=1 and c=4 and 16 at c=16, per target per round.
  local args=("${target_args[@]}" --rounds "${INFERENCE_ROUNDS:-3}" --max-tokens "${INFERENCE_MAX_TOKENS:-48}"
    --concurrency "${INFERENCE_CONCURRENCY:-1,4,16}" --requests-factor "${INFERENCE_REQUESTS_FACTOR:-1}"
    --min-requests "${INFERENCE_MIN_REQUESTS:-8}")
  # Where each server's CPU goes over the same run: a system-wide sampling
  # profile (99 Hz, self time), each server's samples summarised by
  # bench/perf_summary.py (which says why not `perf record -p`).
  local perf_pid=
  if [ "${INFERENCE_PROFILE:-1}" = 1 ] && command -v perf >/dev/null; then
    perf record -q -a -F 99 -o "$out_dir/inference.perf.data" 2>"$out_dir/perf.log" &
    perf_pid=$!
    pids+=("$perf_pid")
  fi
  step "inference benchmark" wrap inference "$out_dir/inference.json" \
    "backhaul-bench ${args[*]}" "$CARGO_TARGET_DIR/debug/backhaul-bench" "${args[@]}"
  if [ -n "$perf_pid" ]; then
    # perf writes its file on SIGINT.
    kill -INT "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" 2>/dev/null || true
    if [ -f "$out_dir/inference.json" ]; then
      step "inference profile" wrap inference-profile "$out_dir/inference-profile.json" \
        "perf record -a -F 99 through the run; python3 bench/perf_summary.py" \
        python3 bench/perf_summary.py "$out_dir/inference.perf.data" \
        "backhaul_inference=$inference_pid" "mistralrs_serve=$serve_pid"
    fi
  fi
  stop_servers
}

bench_routing() {
  source scripts/node-env.sh
  local n=${ROUTING_REQUESTS:-300}
  step "routing benchmark" wrap routing "$out_dir/routing.json" \
    "node bench/routing.mjs --requests $n" node bench/routing.mjs --requests "$n"
  # Where the Worker's CPU goes: a V8 profile over wrangler dev's inspector;
  # also rewrites docs/benchmarks/worker-profile.md.
  step "routing profile" wrap routing-profile "$out_dir/routing-profile.json" \
    "node bench/worker_profile.mjs --requests $n --markdown docs/benchmarks/worker-profile.md" \
    node bench/worker_profile.mjs --requests "$n" --markdown docs/benchmarks/worker-profile.md
}

bench_control_plane() {
  # BACKHAUL_OPERATOR_BIN: an operator binary built elsewhere (the results
  # record which); by default the dev profile build here.
  if [ -z "${BACKHAUL_OPERATOR_BIN:-}" ]; then
    step "build backhaul-operator (dev profile)" build_workspace
  fi
  local counts=${CONTROL_PLANE_COUNTS:-1,100,1000}
  step "control-plane benchmark" wrap control-plane "$out_dir/control-plane.json" \
    "python3 bench/control_plane.py $counts" python3 bench/control_plane.py "$counts"
}

# The route table at fleet size (issue 15): an isolate cache miss at
# WORKER_TABLE_ROUTES routes against 3 (bench/worker_table.mjs).
bench_worker_table() {
  source scripts/node-env.sh
  local args=(--routes "${WORKER_TABLE_ROUTES:-10000}" --requests "${WORKER_TABLE_REQUESTS:-300}")
  if [ -n "${WORKER_TABLE_DIR:-}" ]; then args+=(--worker-dir "$WORKER_TABLE_DIR"); fi
  if [ -n "${WORKER_TABLE_BASELINE:-}" ]; then args+=(--baseline "$WORKER_TABLE_BASELINE"); fi
  step "worker table benchmark" wrap worker-table "$out_dir/worker-table.json" \
    "node bench/worker_table.mjs ${args[*]}" node bench/worker_table.mjs "${args[@]}"
}

# The edge's response cache and coalescing (issue 18) with a real region:
# the Worker under wrangler dev in front of backhaul-inference on SmolLM2
# (bench/edge_cache.mjs: cache MISS against HIT, streamed and not; K
# identical concurrent requests against the region's generations). No
# cluster.
bench_edge_cache() {
  [ -f "$model" ] || { echo "bench: $model missing (make model)" >&2; return 1; }
  source scripts/node-env.sh
  start_inference
  local args=(--region "http://127.0.0.1:$http_port" --metrics "http://127.0.0.1:$metrics_port/metrics" --model smollm2
    --prompts "${EDGE_CACHE_PROMPTS:-8}" --hits "${EDGE_CACHE_HITS:-20}" --max-tokens "${EDGE_CACHE_MAX_TOKENS:-32}"
    --coalesce "${EDGE_CACHE_COALESCE:-1,4,16}" --rounds "${EDGE_CACHE_ROUNDS:-3}")
  if [ -n "${EDGE_CACHE_WORKER_DIR:-}" ]; then args+=(--worker-dir "$EDGE_CACHE_WORKER_DIR"); fi
  # The region's ports change every run: the command recorded is the section's.
  step "edge cache benchmark" wrap edge-cache "$out_dir/edge-cache.json" \
    "BENCH=edge-cache make bench   # backhaul-inference on free ports, then: node bench/edge_cache.mjs --region URL --metrics URL ${args[*]:4}" \
    node bench/edge_cache.mjs "${args[@]}"
  kill -TERM "$inference_pid" 2>/dev/null || true
  wait "$inference_pid" 2>/dev/null || true
}

ensure_venv() {
  if ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "matplotlib==3.9.2"
  fi
}

# Each section runs as its own process (errexit intact, its servers
# stopped on its exit); one failing does not stop the others.
if [ "${1:-}" = --section ]; then
  "bench_${2//-/_}"
  exit
fi
ran=() failed=()
for section in inference inference-interleaved cpu-peer routing control-plane worker-table edge-cache; do
  has "$section" || continue
  if "$0" --section "$section"; then
    ran+=("$out_dir/$section.json")
    # The routing section also writes its profile; inference, when perf ran.
    if [ "$section" = routing ]; then ran+=("$out_dir/routing-profile.json"); fi
    if [ "$section" = inference ] && [ -f "$out_dir/inference-profile.json" ] &&
      [ "$out_dir/inference-profile.json" -nt "$out_dir/inference.json" ]; then
      ran+=("$out_dir/inference-profile.json")
    fi
  else
    failed+=("$section")
  fi
done
ensure_venv
if [ ${#ran[@]} -gt 0 ]; then
  step "report" "$venv/bin/python" bench/report.py "${ran[@]}"
fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "make bench: FAILED sections: ${failed[*]}" >&2
  exit 1
fi
