#!/usr/bin/env python3
"""Where each process's CPU went during the inference benchmark: a
system-wide `perf record`, each process's self-time samples grouped by what
the code does.

    python3 bench/perf_summary.py PERF.data backhaul_inference=PID mistralrs_serve=PID ...

Prints one JSON document: per process, its sample count, the share of each
group and the top symbols (shares of that process's samples). The groups
answer "how much of this server's CPU is the model, and how much is the
serving layer around it".

System-wide, not `perf record -p`: the engines start their compute threads
at the first request, after perf would have attached, and perf 6.1 spun at
full CPU on a process whose threads come and go.
"""

import json
import re
import subprocess
import sys

# First match wins; matched against the demangled symbol.
GROUPS = [
    ("model kernels (candle, quantized matmul, attention)",
     re.compile(r"candle_core|candle_nn|mistralrs_quant|gemm|half::|mistralrs_core::attention|"
                r"mistralrs_core::(layers|models|ops)|__expf|expf|roundf|tanhf|matrixmultiply")),
    ("engine (scheduler, sampler, tokenizer, chat template)",
     re.compile(r"mistralrs_core|mistralrs::|tokenizers|minijinja|llguidance|toktrie|onig|regex")),
    ("serving (HTTP/gRPC, protobuf, JSON, SSE)",
     re.compile(r"backhaul_|tonic|\bh2::|hyper|axum|tower|prost|serde|httparse|http::|bytes::|"
                r"mistralrs_server|mistralrs_cli|utoipa|reqwest|sse")),
    ("async runtime (tokio)", re.compile(r"tokio")),
    ("thread pools and locks (rayon, futex, yield)",
     re.compile(r"rayon|crossbeam|parking_lot|std::sys::sync|futex|sched_yield|pthread_mutex|pthread_cond")),
    ("allocator and memory copies",
     re.compile(r"malloc|free|_int_|realloc|memmove|memcpy|memset|alloc::|mi_|je_")),
]
KERNEL = "operating system kernel"
OTHER = "other (unattributed closures, std)"

# "  68.79%  5349  [.] symbol" (share, samples, user/kernel, symbol).
LINE = re.compile(r"^\s*([\d.]+)%\s+(\d+)\s+\[(.)\]\s+(.*?)\s*$")


def group_of(space, symbol):
    if space == "k":
        return KERNEL
    for name, pattern in GROUPS:
        if pattern.search(symbol):
            return name
    return OTHER


def summarise(path, pid):
    report = subprocess.run(
        ["perf", "report", "-i", path, "--pid", pid, "-n", "--no-children", "--sort", "sym", "--stdio",
         "--percent-limit", "0", "-g", "none"],
        capture_output=True, text=True, check=True).stdout
    rows = []
    for line in report.splitlines():
        m = LINE.match(line)
        if m:
            rows.append((int(m.group(2)), m.group(3), m.group(4)))
    # perf's own percentages are of every process's samples: use the counts.
    total = sum(n for n, _, _ in rows)
    if total == 0:
        raise SystemExit(f"{path}: no samples of process {pid}")
    groups, symbols = {}, []
    for n, space, symbol in rows:
        pct = 100.0 * n / total
        g = group_of(space, symbol)
        groups[g] = groups.get(g, 0.0) + pct
        symbols.append((round(pct, 2), symbol, g))
    symbols.sort(reverse=True)
    return {
        "samples": total,
        "groups_pct": {k: round(v, 2) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
        "top_symbols": [{"pct": p, "symbol": s[:160], "group": g} for p, s, g in symbols[:12]],
    }


def main():
    path, out = sys.argv[1], {}
    for arg in sys.argv[2:]:
        label, pid = arg.split("=", 1)
        out[label] = summarise(path, pid)
    json.dump(out, sys.stdout, indent=2)


if __name__ == "__main__":
    main()
