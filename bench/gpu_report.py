#!/usr/bin/env python3
"""The GPU benchmark's report (scripts/gpu-bench.sh): one JSON document and
one markdown page from a run directory.

    python3 bench/gpu_report.py RUN_DIR OUT_DIR NAME   # writes OUT_DIR/NAME.json and OUT_DIR/NAME.md
    python3 bench/gpu_report.py hbm "NVIDIA H200"      # the datasheet bandwidth this uses, in TB/s

RUN_DIR, as the script leaves it:
    run.json              the run: command, device, settings, start and end
    gpu.csv               nvidia-smi --query-gpu=name,memory.total,driver_version,... (GPU runs)
    copy-bandwidth.json   a device-to-device copy timed with PyTorch, when it ran
    bundle.json           what `scripts/gpu-bench.sh pack` packed (binaries, commit)
    models/SHAPE/         per model: info.json (bench/gguf.py info), bench.json
                          (backhaul-bench's report), servers.json (their command
                          lines), error.txt when it failed or was skipped,
                          seconds.txt (its wall time)

Decode bandwidth: one decode step of one sequence reads every weight once
(bench/gguf.py's weight_bytes_per_token: the file's tensor bytes as stored;
KV cache and activations are not counted, so it is a lower bound on the
bytes moved). At concurrency 1, bytes per token × tokens/s over the GPU's
HBM bandwidth is the fraction of the memory system decoding uses. Two rates:
output tokens/s over the whole run at c=1 (what the issue asks for; it
includes each request's time to first token), and 1 / mean inter-token gap
(decode steps alone).
"""

import csv
import io
import json
import os
import sys

# Datasheet HBM/GDDR bandwidth, TB/s, by the name nvidia-smi prints: the
# first entry whose every word appears in the name wins, so the more
# specific come first.
HBM_TBPS = [
    (("H200",), 4.8),            # H200 SXM and NVL: 4.8 TB/s HBM3e
    (("GH200",), 4.0),           # GH200 with 96 GB HBM3 (the 144 GB HBM3e part: 4.9)
    (("H100", "NVL"), 3.9),
    (("H100", "PCIe"), 2.0),
    (("H100",), 3.35),           # H100 SXM5 80GB HBM3
    (("H800", "PCIe"), 2.0),
    (("H800",), 3.35),
    (("B200",), 8.0),
    (("A100", "80GB", "PCIe"), 1.935),
    (("A100", "SXM4", "80GB"), 2.039),
    (("A100",), 1.555),          # the 40 GB parts
    (("A800", "80GB"), 2.039),
    (("L40S",), 0.864),
    (("L40",), 0.864),
    (("L4",), 0.3),
    (("A10G",), 0.6),
    (("A10",), 0.6),
    (("RTX 4090",), 1.008),
    (("RTX 6000 Ada",), 0.96),
    (("V100",), 0.9),
    (("T4",), 0.32),
]

TARGETS = {"in_process": "mistral.rs in-process", "backhaul_http": "Backhaul HTTP",
           "backhaul_grpc": "Backhaul gRPC", "mistralrs_serve": "`mistralrs serve`"}


def hbm_tbps(name):
    """Datasheet bandwidth of the GPU nvidia-smi names `name`, TB/s, or None."""
    words = name.replace("-", " ").split()
    for needles, tbps in HBM_TBPS:
        if all((n in words) if " " not in n else (n in name) for n in needles):
            return tbps
    return None


def read_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def read_text(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def gpus(run_dir):
    """nvidia-smi's rows as dicts (keys: its query fields)."""
    text = read_text(os.path.join(run_dir, "gpu.csv"))
    if not text:
        return []
    rows = list(csv.reader(io.StringIO(text), skipinitialspace=True))
    head, rows = rows[0], rows[1:]
    return [dict(zip([h.split(" [")[0] for h in head], r)) for r in rows]


def bandwidth(model_info, bench, hbm_bytes_per_s, copy_bytes_per_s=None):
    """Decode bandwidth at c=1, per target: bytes per token × tokens/s over
    the GPU's bandwidth (datasheet, and the measured copy's when given)."""
    per_token = model_info["weight_bytes_per_token"]
    out = {}
    for target, levels in (bench or {}).get("targets", {}).items():
        c1 = levels.get("1")
        if not c1:
            continue
        itl = c1["inter_token_ms"]["mean"]
        rates = {"output": c1["output_tokens_per_s"], "decode": 1000.0 / itl if itl > 0 else None}
        row = {"weight_bytes_per_token": per_token}
        for kind, rate in rates.items():
            if rate is None:
                continue
            gbps = per_token * rate / 1e9
            row[f"{kind}_tokens_per_s"] = round(rate, 3)
            row[f"{kind}_read_gb_per_s"] = round(gbps, 3)
            if hbm_bytes_per_s:
                row[f"{kind}_fraction_of_hbm"] = round(per_token * rate / hbm_bytes_per_s, 5)
            if copy_bytes_per_s:
                row[f"{kind}_fraction_of_measured_copy"] = round(per_token * rate / copy_bytes_per_s, 5)
        out[target] = row
    return out


def build(run_dir):
    run = read_json(os.path.join(run_dir, "run.json"), {})
    gpu_rows = gpus(run_dir)
    gpu = gpu_rows[0] if gpu_rows else None
    tbps = hbm_tbps(gpu["name"]) if gpu else None
    hbm = tbps * 1e12 if tbps else None
    copy = read_json(os.path.join(run_dir, "copy-bandwidth.json"))
    copy_bps = copy.get("bytes_per_s") if copy else None
    models = []
    models_dir = os.path.join(run_dir, "models")
    for shape in sorted(os.listdir(models_dir)) if os.path.isdir(models_dir) else []:
        d = os.path.join(models_dir, shape)
        info = read_json(os.path.join(d, "info.json"))
        bench = read_json(os.path.join(d, "bench.json"))
        m = {"shape": shape, "order": int(read_text(os.path.join(d, "order.txt")) or 0), "model": info,
             "servers": read_json(os.path.join(d, "servers.json"), {}),
             "seconds": float(read_text(os.path.join(d, "seconds.txt")) or 0) or None,
             "error": read_text(os.path.join(d, "error.txt")), "bench": bench}
        if info and bench:
            m["decode_bandwidth_c1"] = bandwidth(info, bench, hbm, copy_bps)
        models.append(m)
    models.sort(key=lambda m: m["order"])
    return {
        "measured": bool(models) and any(m["bench"] for m in models),
        "device": run.get("device"),
        "run": run,
        "gpu": gpu,
        "gpus": gpu_rows,
        "hbm_tb_per_s": tbps,
        "hbm_source": "datasheet (bench/gpu_report.py HBM_TBPS)" if tbps else None,
        "copy_bandwidth": copy,
        "bundle": read_json(os.path.join(run_dir, "bundle.json")),
        "models": models,
    }


def ordered(per_target):
    """(target, value) pairs, the known targets in TARGETS' order first."""
    rank = {t: i for i, t in enumerate(TARGETS)}
    return sorted(per_target.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))


def fmt(x, digits=1):
    if x is None:
        return "–"
    return f"{x:,.{digits}f}"


def markdown(doc):
    run, gpu = doc["run"], doc["gpu"]
    dev = doc["device"]
    L = []
    if dev == "cpu":
        L += ["# GPU benchmark: CPU dry run", "",
              "**Not GPU figures.** `scripts/gpu-bench.sh` run in its CPU mode (`GPU_BENCH_DEVICE=cpu`), to prove "
              "the flow end to end (bundle, synthetic model, servers, benchmark, bandwidth arithmetic, report) "
              "where no GPU is lent. The speeds below are a shared 2-core machine's and say nothing about a GPU.", ""]
    else:
        L += ["# GPU benchmark", ""]
    bundle = doc["bundle"] or {}
    L += [f"Run {run.get('started', '?')} to {run.get('finished', '?')} ({fmt(run.get('seconds'), 0)} s); "
          f"binaries packed {bundle.get('packed', '?')} at commit `{bundle.get('commit', '?')}`"
          + (" with uncommitted changes" if bundle.get("dirty") else "")
          + (f"; this script at `{run['commit']}`" + (" with uncommitted changes" if run.get("dirty") else "")
             if run.get("commit") else "") + ".", ""]
    if gpu:
        L += [f"GPU: **{gpu.get('name')}**, {gpu.get('memory.total')} MiB, driver {gpu.get('driver_version')}; "
              f"HBM bandwidth {fmt(doc['hbm_tb_per_s'], 2)} TB/s (datasheet)"
              + (f"; a device-to-device copy measured {fmt(doc['copy_bandwidth']['bytes_per_s'] / 1e12, 2)} TB/s "
                 f"(bytes read + written)" if doc.get("copy_bandwidth") else "") + ".", ""]
    elif run.get("cpu"):
        L += [f"Machine: {run['cpu']}; load average {' '.join(run.get('loadavg_before') or ['?'])} before, "
              f"{' '.join(run.get('loadavg_after') or ['?'])} after.", ""]
    L += ["Command:", "", "```sh", run.get("command", "?"), "```", ""]
    L += [f"Settings: concurrency {run.get('concurrency')}, {run.get('max_tokens')} tokens per answer (greedy), "
          f"{run.get('rounds')} round(s), a batch of max(c, {run.get('min_requests')}) requests per target, level "
          f"and round; every engine batches up to {run.get('max_seqs')} sequences and plans its device map for "
          f"that many of {run.get('max_seq_len')} tokens (`backhaul-inference --max-num-seqs/--max-in-flight/"
          "--max-queue/--max-seq-len`, `mistralrs serve --max-seqs/--max-batch-size/--max-seq-len`, backhaul-bench's "
          "`--max-num-seqs/--max-seq-len` for the in-process engine); no PagedAttention on any of them.", ""]
    for m in doc["models"]:
        info = m["model"] or {}
        L += [f"## {m['shape']}", ""]
        if info:
            L += [f"{info.get('name')}: {info['parameters'] / 1e9:.3f} B parameters, "
                  f"{info['tensor_bytes'] / 2**20:,.1f} MiB of tensors ({', '.join(f'{k} ×{v}' for k, v in info['tensor_types'].items())}), "
                  f"{info['weight_bytes_per_token'] / 2**20:,.1f} MiB read per decoded token. "
                  + ("Synthetic: random weights in the real layout (bench/gguf.py), so the text is noise and the "
                     "speed is the real model's." if info.get("synthetic") else ""), ""]
        if m["error"]:
            L += [f"**Not measured**: {m['error']}", ""]
        b = m["bench"]
        if not b:
            continue
        if "in_process_max_num_seqs" not in b.get("config", {}):
            L += ["This backhaul-bench predates `--max-num-seqs`/`--max-seq-len`: its in-process engine planned its "
                  "built-in 32 sequences of 4096 tokens.", ""]
        L += ["| target | c | output tok/s | TTFT p50 / p99 ms | ITL p50 / p99 ms | requests | tokens |",
              "|---|---|---|---|---|---|---|"]
        for target, levels in ordered(b["targets"]):
            for c in sorted(levels, key=int):
                v = levels[c]
                L.append(f"| {TARGETS.get(target, target)} | {c} | {fmt(v['output_tokens_per_s'])} | "
                         f"{fmt(v['ttft_ms']['p50'])} / {fmt(v['ttft_ms']['p99'])} | "
                         f"{fmt(v['inter_token_ms']['p50'], 2)} / {fmt(v['inter_token_ms']['p99'], 2)} | "
                         f"{v['requests']} | {v['output_tokens']} |")
        L += [""]
        ratios = []
        for key, other in (("ratio_vs_inprocess", "in-process"), ("ratio_vs_mistralrs_serve", "`mistralrs serve`")):
            for surface, per in (b.get(key) or {}).items():
                if per:
                    ratios.append(f"{TARGETS.get(surface, surface)} over {other}: " + ", ".join(
                        f"c={c} ×{v['ratio']:.3f}" for c, v in sorted(per.items(), key=lambda kv: int(kv[0]))))
        if ratios:
            L += ["Output tokens/s, " + "; ".join(ratios) + ".", ""]
        same = (b.get("same_greedy_text") or {})
        if same:
            L += [f"Same greedy text as {same.get('reference')}: "
                  + ", ".join(f"{TARGETS.get(t, t)} {s}" for t, s in same.get("same", {}).items()) + ".", ""]
        bw = m.get("decode_bandwidth_c1") or {}
        if bw:
            L += ["Decode bandwidth at c=1 (weights only: bytes per token × tokens/s"
                  + (" over the HBM bandwidth" if doc["hbm_tb_per_s"] else "") + "):", "",
                  "| target | output tok/s | → GB/s | of HBM | 1/ITL tok/s | → GB/s | of HBM |", "|---|---|---|---|---|---|---|"]
            pct = lambda x: "–" if x is None else f"{x * 100:.2f}%"
            for target, r in ordered(bw):
                L.append(f"| {TARGETS.get(target, target)} | {fmt(r.get('output_tokens_per_s'))} | "
                         f"{fmt(r.get('output_read_gb_per_s'), 2)} | {pct(r.get('output_fraction_of_hbm'))} | "
                         f"{fmt(r.get('decode_tokens_per_s'))} | {fmt(r.get('decode_read_gb_per_s'), 2)} | "
                         f"{pct(r.get('decode_fraction_of_hbm'))} |")
            L += [""]
        if m.get("servers"):
            L += ["Commands (ports chosen free at run time):", "", "```sh", *m["servers"].values(), "```", ""]
    skipped = (doc["bundle"] or {}).get("missing") or []
    if skipped:
        L += ["Left out: " + "; ".join(skipped) + ".", ""]
    return "\n".join(L)


def main(argv):
    if len(argv) == 2 and argv[0] == "hbm":
        print(hbm_tbps(argv[1]))
        return
    if len(argv) != 3:
        sys.exit(__doc__)
    print(write(*argv))


def write(run_dir, out_dir, name):
    """Writes OUT_DIR/NAME.json and NAME.md; returns the markdown."""
    doc = build(run_dir)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    md = markdown(doc)
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write(md + "\n")
    return md


if __name__ == "__main__":
    main(sys.argv[1:])
