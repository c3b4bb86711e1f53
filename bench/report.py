#!/usr/bin/env python3
"""Merges benchmark sections into docs/benchmarks/results.json and
regenerates docs/benchmarks/README.md and its plots from that file alone.

    python bench/report.py [SECTION.json ...]   # raw files from scripts/bench.sh

Each raw file replaces its section; sections not given keep their last
results. With no arguments, only the README and plots are regenerated.
Every figure in the README is read from results.json here: none is typed in.
"""

import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs", "benchmarks")
RESULTS = os.path.join(DOCS, "results.json")
SURFACES = {"backhaul_grpc": "Backhaul gRPC", "backhaul_http": "Backhaul HTTP (OpenAI SSE)"}
TARGETS = {"in_process": "mistral.rs in-process", "backhaul_grpc": "Backhaul gRPC",
           "backhaul_http": "Backhaul HTTP", "mistralrs_serve": "`mistralrs serve`",
           "llama_cpp": "llama.cpp (llama-cpp-python server)"}
# Issue 17's CPU targets against llama.cpp's server, same model, prompts and run.
CPU_PEER_TPS_BOUND = 0.5
CPU_PEER_TTFT_BOUND = 2.0

# The GPU comparison (issue 17): scripts/gpu-bench.sh, in two halves,
# because the GPU machine this workplace lends has no Rust toolchain and no
# network and takes 64 MiB of files per call (see that script's header).
GPU_COMMANDS = [
    "# here, with the CUDA 13 toolkit (nvcc, cuBLAS, cuRAND, NVRTC, the runtime) on PATH / LIBRARY_PATH:",
    "GPU_BENCH_DEVICE=cuda GPU_BENCH_BUILD=1 scripts/gpu-bench.sh pack   # .gpu-bench/: the CUDA binaries (xz) and SmolLM2's GGUF header",
    "# on the GPU machine, .gpu-bench carried, nothing built there:",
    "scripts/gpu-bench.sh run   # writes $OUT/gpu-bench.json, gpu-bench.md; then copy them into docs/benchmarks/",
]


def section_from_raw(name, raw):
    """The results.json section for one raw file: its figures under the
    documented keys, with the machine, date, command and the raw results."""
    r = raw["results"]
    base = {"date": raw["date"], "command": raw["command"], "machine": raw["machine"],
            "loadavg_after": raw["loadavg_after"]}
    if name in ("inference", "inference-interleaved"):
        flat = lambda key: {s: {c: v["ratio"] for c, v in per.items()} for s, per in r[key].items()}
        return {**base,
                "ratio_vs_inprocess": flat("ratio_vs_inprocess"),
                "ratio_vs_mistralrs_serve": flat("ratio_vs_mistralrs_serve"),
                # Server CPU per output token, Backhaul over the other (below 1: less).
                "cpu_per_token_ratio_vs_inprocess": r.get("cpu_per_token_ratio_vs_inprocess", {}),
                "cpu_per_token_ratio_vs_mistralrs_serve": r.get("cpu_per_token_ratio_vs_mistralrs_serve", {}),
                "raw": r}
    if name == "cpu-peer":
        # Backhaul over llama.cpp's server, by surface and concurrency.
        peer = lambda key: {s: per for s, per in (r.get(key) or {}).get("llama_cpp", {}).items()}
        return {**base,
                "ratio_vs_llama_cpp": {s: {c: v["ratio"] for c, v in per.items()}
                                       for s, per in peer("ratio_vs_peers").items()},
                "ttft_p50_ratio_vs_llama_cpp": {s: {c: v["p50"] for c, v in per.items()}
                                                for s, per in peer("ttft_ratio_vs_peers").items()},
                "raw": r}
    if name == "routing":
        return {**base,
                "added_ttfb_ms_p50": r["addedMs"]["ttfb"]["p50"],
                "added_ttfb_ms_p99": r["addedMs"]["ttfb"]["p99"],
                "added_total_ms_p50": r["addedMs"]["total"]["p50"],
                "added_total_ms_p99": r["addedMs"]["total"]["p99"],
                "failover_added_ms": {k: v["addedMs"]["p50"] for k, v in r["failover"].items()},
                "failover_added_ms_p99": {k: v["addedMs"]["p99"] for k, v in r["failover"].items()},
                "cpu_ms_per_request": r["cpuMsPerRequest"]["viaWorker"],
                "raw": r}
    if name == "inference-profile":
        return {**base, "raw": r}
    if name == "routing-profile":
        return {**base,
                "cpu_ms_per_request": {k: r[k]["runtimeCpuMsPerRequest"] for k in ("backhaul", "passthrough") if r.get(k)},
                "busy_samples_per_request": {k: round(r[k]["busySamples"] / r["requests"], 3)
                                             for k in ("backhaul", "passthrough") if r.get(k)},
                "raw": r}
    if name == "control-plane":
        runs = r["runs"]
        ok = {c: run for c, run in runs.items() if "error" not in run}
        out = {**base,
               "apply_to_published_s": {c: run["apply_to_published_s"] for c, run in ok.items()},
               "reconcile_ms_p50": {c: ms(run["reconcile_s"]["p50"]) for c, run in ok.items()},
               "reconcile_ms_p99": {c: ms(run["reconcile_s"]["p99"]) for c, run in ok.items()},
               # The operator's own write requests (POST/PUT/PATCH/DELETE) while it
               # reconciles settled objects again: restarted, and steady (heartbeats).
               "noop_resync_writes": {c: writes_of(run["noop_resync"].get("operator_requests"))
                                      for c, run in ok.items()},
               "steady_resync_writes": {c: writes_of((run.get("steady") or {}).get("operator_requests"))
                                        for c, run in ok.items()},
               "noop_resync_objects_changed": {c: run["noop_resync"]["objects_changed"] for c, run in ok.items()},
               "noop_resync_api_write_requests": {c: sum(run["noop_resync"]["api_writes_during_resync"].values())
                                                  for c, run in ok.items()},
               "operator_rss_mib": {c: run["operator_memory_mib"]["VmRSS"] for c, run in ok.items()},
               # Issue 15: every admin request per minute in the steady window
               # (route PUT/DELETE/GET, lease PUT, fleet GET), and apply →
               # Published of one new object while the others are settled.
               "publication_requests_per_min": {c: run["steady"]["publication_requests_per_min"] for c, run in ok.items()
                                                if "publication_requests_per_min" in (run.get("steady") or {})},
               "apply_to_published_one_s": {c: run["probe"]["published_s"] for c, run in ok.items() if run.get("probe")},
               "errors": {c: run["error"] for c, run in runs.items() if "error" in run},
               "raw": r}
        if "1000" in ok:
            out["operator_rss_mib_1000"] = ok["1000"]["operator_memory_mib"]["VmRSS"]
            restart = ok["1000"].get("operator_memory_mib_after_restart") or {}
            out["operator_rss_mib_1000_after_restart"] = restart.get("VmRSS")
            out["operator_peak_rss_mib_1000_after_restart"] = restart.get("VmHWM")
        expiry = r.get("worker_expiry") or {}
        if "seconds_from_operator_kill_to_expired" in expiry:
            out["region_failure_to_expired_s"] = expiry["seconds_from_operator_kill_to_expired"]
        return out
    if name == "worker-table":
        return {**base, "raw": r}
    if name == "edge-cache":
        # Hit against miss per form (client-side, through wrangler dev), and
        # K identical concurrent requests against the region's generations.
        return {**base,
                "ttfb_ms_p50": {form: {"miss": c["missMs"]["ttfb"]["p50"], "hit": c["hitMs"]["ttfb"]["p50"]}
                                for form, c in r["cache"].items()},
                "hit_over_miss": {form: c["hitOverMiss"] for form, c in r["cache"].items()},
                "coalescing_ratio": {str(c["k"]): c["ratio"] for c in r["coalescing"]},
                "raw": r}
    raise ValueError(name)


def writes_of(requests):
    """Write requests among an operator's requests by method; None if not counted."""
    if requests is None:
        return None
    return sum(v for k, v in requests.items() if k in ("POST", "PUT", "PATCH", "DELETE"))


def inference_target_rows(t, levels):
    """Table, header included: each target's throughput and latencies per concurrency."""
    rows = ["| target | c | output tok/s | per round | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | CPU ms/token |",
            "|---|---|---|---|---|---|---|---|---|"]
    for n, label in TARGETS.items():
        if n not in t:
            continue
        for c in levels:
            x = t[n][c]
            rows.append(f"| {label} | {c} | {fmt(x['output_tokens_per_s'], 1)} | "
                        f"{', '.join(fmt(v, 1) for v in x['rounds_output_tokens_per_s'])} | "
                        f"{fmt(x['ttft_ms']['p50'], 1)} | {fmt(x['ttft_ms']['p99'], 1)} | "
                        f"{fmt(x['inter_token_ms']['p50'], 2)} | {fmt(x['inter_token_ms']['p99'], 2)} | "
                        f"{cpu_cell(x.get('cpu_per_token'))} |")
    return rows


def cpu_cell(cpu):
    """Server CPU ms per output token, `+ client` where a client process was separate."""
    if not cpu:
        return "–"
    client = f" + {cpu['client_ms']:.1f}" if cpu.get("client_ms") is not None else ""
    return f"{cpu['server_ms']:.1f}{client}"


# Two-sided 95 % quantiles of Student's t, by degrees of freedom.
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23,
       11: 2.20, 12: 2.18, 13: 2.16, 14: 2.14, 15: 2.13, 16: 2.12, 17: 2.11, 18: 2.10, 19: 2.09}


def ratio_ci(rounds):
    """95 % confidence interval of the per-round ratio (geometric, Student's t over
    the rounds' log ratios); None with fewer than 3 rounds, where it says little."""
    import math
    n = len(rounds)
    if n < 3 or n - 1 not in T95:
        return None
    logs = [math.log(x) for x in rounds]
    mean = sum(logs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (n - 1))
    half = T95[n - 1] * sd / math.sqrt(n)
    return math.exp(mean - half), math.exp(mean + half)


def inference_ratio_rows(raw, levels):
    """Table, header included: Backhaul's surfaces over in-process and
    `mistralrs serve`, output tokens/s and (where measured) server CPU per token."""
    def cell(v):
        if not v:
            return "–"
        ci = ratio_ci(v["rounds"])
        ci = f" [95 % CI {ci[0]:.2f}–{ci[1]:.2f}]" if ci else ""
        return f"{v['ratio']:.3f}{ci} ({', '.join(f'{x:.2f}' for x in v['rounds'])})"
    cpu = lambda key, s, c: fmt(((raw.get(key) or {}).get(s) or {}).get(c), 3)
    rows = ["| surface | c | vs in-process | vs `mistralrs serve` | CPU/token vs in-process | CPU/token vs `serve` |",
            "|---|---|---|---|---|---|"]
    for s, label in SURFACES.items():
        if s not in raw["ratio_vs_inprocess"]:
            continue
        for c in levels:
            a = raw["ratio_vs_inprocess"][s].get(c)
            b = (raw["ratio_vs_mistralrs_serve"].get(s) or {}).get(c)
            rows.append(f"| {label} | {c} | {cell(a)} | {cell(b)} | "
                        f"{cpu('cpu_per_token_ratio_vs_inprocess', s, c)} | "
                        f"{cpu('cpu_per_token_ratio_vs_mistralrs_serve', s, c)} |")
    return rows


def mem_of(m):
    """`VmRSS (VmHWM)` in MiB, or a dash."""
    return f"{m['VmRSS']} ({m['VmHWM']})" if m else "–"


def ms(seconds):
    return None if seconds is None else round(seconds * 1000, 2)


def machine_line(sec):
    m = sec["machine"]
    before = f"{' / '.join(m['loadavg'])} before, " if m.get("loadavg") else ""
    return (f"{m['nproc']} × {m['cpu_model']}, {m['mem_mib']} MiB, Linux {m['kernel']}; "
            f"load average {before}{' / '.join(sec['loadavg_after'])} after; "
            f"{sec['date']}, commit `{m['commit']}`")


def fmt(x, nd=2):
    return "–" if x is None else f"{x:.{nd}f}"


def plots(results):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    made = []
    inf = results.get("inference")
    if inf:
        t = inf["raw"]["targets"]
        levels = [str(c) for c in inf["raw"]["config"]["concurrency"]]
        names = [n for n in TARGETS if n in t]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        width = 0.8 / len(names)
        for i, n in enumerate(names):
            xs = [j + i * width for j in range(len(levels))]
            axes[0].bar(xs, [t[n][c]["output_tokens_per_s"] for c in levels], width, label=TARGETS[n].strip("`"))
            axes[1].bar(xs, [t[n][c]["ttft_ms"]["p50"] for c in levels], width, label=TARGETS[n].strip("`"))
            axes[1].scatter(xs, [t[n][c]["ttft_ms"]["p99"] for c in levels], marker="_", color="black", s=80)
        for ax, title in zip(axes, ["output tokens/s (higher is better)", "time to first token, ms (bar p50, tick p99)"]):
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(levels))], [f"c={c}" for c in levels])
            ax.set_title(title, fontsize=10)
        axes[0].legend(fontsize=8)
        fig.suptitle("SmolLM2-135M Q4_1 on CPU, greedy", fontsize=10)
        fig.tight_layout()
        fig.savefig(os.path.join(DOCS, "inference.png"), dpi=110)
        plt.close(fig)
        made.append("inference.png")
    rt = results.get("routing")
    if rt:
        r = rt["raw"]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        short = {"direct": "direct", "viaWorker": "Backhaul Worker (wrangler dev)",
                 "viaWorkerRuntimeOnly": "Backhaul Worker (workerd only)",
                 "viaPassthrough": "forward-only (wrangler dev)", "viaPassthroughRuntimeOnly": "forward-only (workerd only)"}
        series = [(short.get(k, k), v) for k, v in r["paths"].items()]
        groups = ["TTFB p50", "TTFB p99", "total p50", "total p99"]
        width = 0.8 / len(series)
        for i, (label, s) in enumerate(series):
            vals = [s["ttfbMs"]["p50"], s["ttfbMs"]["p99"], s["totalMs"]["p50"], s["totalMs"]["p99"]]
            axes[0].bar([j + i * width for j in range(4)], vals, width, label=label)
        axes[0].set_xticks([j + 0.4 - width / 2 for j in range(4)], groups)
        axes[0].set_title("streamed request to a local SSE upstream, ms", fontsize=10)
        axes[0].legend(fontsize=8)
        kinds = list(r["failover"])
        axes[1].bar(kinds, [r["failover"][k]["addedMs"]["p50"] for k in kinds], label="p50")
        axes[1].scatter(kinds, [r["failover"][k]["addedMs"]["p99"] for k in kinds], marker="_", color="black", s=120, label="p99")
        axes[1].axhline(50, color="red", linestyle="--", linewidth=1, label="target 50 ms")
        axes[1].set_title("one failover: added beyond the failed attempt, ms", fontsize=10)
        axes[1].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(DOCS, "routing.png"), dpi=110)
        plt.close(fig)
        made.append("routing.png")
    cp = results.get("control_plane")
    if cp and cp["apply_to_published_s"]:
        counts = sorted(cp["apply_to_published_s"], key=int)
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        axes[0].plot([int(c) for c in counts], [cp["apply_to_published_s"][c] for c in counts], marker="o")
        axes[0].set_xscale("log")
        axes[0].set_title("apply → all Published, s (3 regions each)", fontsize=10)
        axes[0].set_xlabel("ModelDeployments")
        axes[1].plot([int(c) for c in counts], [cp["reconcile_ms_p50"][c] for c in counts], marker="o", label="p50")
        axes[1].plot([int(c) for c in counts], [cp["reconcile_ms_p99"][c] for c in counts], marker="o", label="p99")
        axes[1].set_xscale("log")
        axes[1].set_title("reconcile duration, ms", fontsize=10)
        axes[1].set_xlabel("ModelDeployments")
        axes[1].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(DOCS, "control-plane.png"), dpi=110)
        plt.close(fig)
        made.append("control-plane.png")
    return made


def fleet_figures(cp):
    """Issue 15's figures at 1,000 ModelDeployments × 3 regions from one
    control-plane section (None where that run did not measure them)."""
    run = (((cp or {}).get("raw") or {}).get("runs") or {}).get("1000") or {}
    st = run.get("steady") or {}
    if "error" in run or "publication_requests_per_min" not in st:
        return None
    probe = run.get("probe") or {}
    return {"commit": cp["raw"].get("operator_commit") or cp["machine"]["commit"], "date": cp["date"],
            "rpm": st["publication_requests_per_min"], "rpm_by_kind": st.get("publication_requests_per_min_by_kind") or {},
            "window_s": st["window_s"], "probe": probe.get("published_s"), "first_put": probe.get("first_put_s"),
            "probes": probe.get("probes"), "rss": run["operator_memory_mib"], "rss_steady": st.get("operator_memory_mib"),
            "rss_restart": run.get("operator_memory_mib_after_restart"), "cpu_pct": st.get("operator_cpu_pct"),
            "apply_all_s": run["apply_to_published_s"], "expired": (st.get("receiver") or {}).get("expired"),
            "lease_mismatches": (st.get("receiver") or {}).get("lease_digest_mismatches"),
            "steady_api_writes": writes_of(st.get("operator_requests"))}


def table_figures(wt, label="current"):
    """The worker-table section's figures for one checkout (None if not measured)."""
    c = (((wt or {}).get("raw") or {}).get("checkouts") or {}).get(label)
    if not c:
        return None
    return {"commit": c.get("commit"), "dirty": bool(c.get("uncommittedFiles")), "routes": wt["raw"]["routes"],
            "big": c["big"], "small": c["small"], "ratio": c["ratio"], "miss": c["missCostMs"]}


def rpm_cell(f):
    kinds = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in sorted(f["rpm_by_kind"].items()))
    return f"{f['rpm']:,.1f}/min ({kinds or 'none'})"


def summary(results):
    """Each target of issue 7, what was measured and whether it was met."""
    rows = []
    inf = results.get("inference")
    if inf:
        for key, label, bound in [("ratio_vs_inprocess", "Backhaul ≥ 0.97 × in-process mistral.rs (output tok/s)", 0.97),
                                  ("ratio_vs_mistralrs_serve", "Backhaul ≥ 1.00 × `mistralrs serve` (output tok/s)", 1.0)]:
            ratios = [(v, f"{SURFACES[s].split(' (')[0]} c={c}") for s, per in inf.get(key, {}).items()
                      for c, v in per.items()]
            # The c=1 run interleaved request by request, where present.
            il = [(v, f"{SURFACES[s].split(' (')[0]} c={c} interleaved")
                  for s, per in (results.get("inference_interleaved") or {}).get(key, {}).items() for c, v in per.items()]
            if ratios:
                worst = min(ratios + il)
                measured = (f"lowest {worst[0]:.3f} ({worst[1]}); every cell: "
                            + ", ".join(f"{v:.3f} ({w})" for v, w in ratios + il))
                rows.append({"target": label, "measured": measured, "met": worst[0] >= bound})
    rows += cpu_peer_rows(results.get("cpu_peer"))
    rt = results.get("routing")
    if rt:
        # The floor: what a Worker that only forwards adds under the same wrangler dev.
        floor = (rt["raw"].get("addedMsOverDirect") or {}).get("viaPassthrough")
        def own(q):
            if not floor:
                return ""
            f = floor["ttfb"][q]
            return (f" (a forward-only Worker adds {f:.2f} ms under the same `wrangler dev`; "
                    f"Backhaul's own code {rt[f'added_ttfb_ms_{q}'] - f:.2f} ms)")
        rows.append({"target": "Worker adds ≤ 1 ms TTFB p50 locally", "measured": f"{rt['added_ttfb_ms_p50']:.2f} ms{own('p50')}",
                     "met": rt["added_ttfb_ms_p50"] <= 1})
        rows.append({"target": "Worker adds ≤ 5 ms TTFB p99 locally", "measured": f"{rt['added_ttfb_ms_p99']:.2f} ms{own('p99')}",
                     "met": rt["added_ttfb_ms_p99"] <= 5})
        worst = max(rt["failover_added_ms"].items(), key=lambda kv: kv[1])
        rows.append({"target": "one failover adds ≤ 50 ms beyond the failed attempt (p50)",
                     "measured": f"highest {worst[1]:.2f} ms ({worst[0]})", "met": worst[1] <= 50})
    cp = results.get("control_plane")
    if cp:
        counted = {c: (v, cp.get("steady_resync_writes", {}).get(c)) for c, v in cp["noop_resync_writes"].items()
                   if v is not None}
        window = lambda c: (cp["raw"]["runs"][c].get("steady") or {}).get("window_s")
        if counted:
            rows.append({"target": "0 API writes by a no-op resync",
                         "measured": "; ".join(f"N={c}: {r} after a restart, {s} in {window(c)} s of heartbeats"
                                              for c, (r, s) in counted.items()),
                         "met": all(r == 0 and not s for r, s in counted.values())})
        elif cp["noop_resync_writes"]:
            changed = cp.get("noop_resync_objects_changed", cp["noop_resync_writes"])
            rows.append({"target": "0 objects written by a no-op resync",
                         "measured": ", ".join(f"{v} at N={c}" for c, v in changed.items()),
                         "met": max(changed.values()) == 0})
        if "operator_rss_mib_1000" in cp:
            # Both ways an operator meets 1,000 objects: watching them arrive,
            # and started over them (a restart, an upgrade, a new leader).
            run = cp["raw"]["runs"]["1000"]
            restart = run.get("operator_memory_mib_after_restart") or {}
            worst = max(cp["operator_rss_mib_1000"], restart.get("VmHWM", 0))
            was = fleet_figures((results.get("issue15_before") or {}).get("control_plane"))
            prior = ""
            if was:
                was_restart = was["rss_restart"] or {}
                # The before run is the later measurement where the current section predates issue 15's fields.
                label = "before issue 15" if fleet_figures(cp) else f"latest, {was['date'][:10]}"
                prior = (f"; {label} (operator `{was['commit']}`): {was['rss']['VmRSS']} MiB once all are Published "
                         f"(peak {was['rss']['VmHWM']}), restarted {was_restart.get('VmRSS')} MiB (peak {was_restart.get('VmHWM')})")
                if not fleet_figures(cp):
                    worst = max(was["rss"]["VmHWM"], was_restart.get("VmHWM", 0))
            rows.append({"target": "operator RSS < 64 MiB at 1,000 ModelDeployments",
                         "measured": f"{cp['operator_rss_mib_1000']} MiB once all are Published (peak "
                                     f"{run['operator_memory_mib']['VmHWM']}); restarted over them: {restart.get('VmRSS')} "
                                     f"MiB (peak {restart.get('VmHWM')})" + (f" ({cp['date'][:10]})" if was else "") + prior,
                         "met": worst < 64})
        elif (cp["raw"]["runs"].get("1000") or {}).get("timed_out"):
            t = cp["raw"]["runs"]["1000"]["timed_out"]
            rows.append({"target": "operator RSS < 64 MiB at 1,000 ModelDeployments",
                         "measured": f"{t['operator_memory_mib']['VmRSS']} MiB with {t['published']}/1,000 Published "
                                     f"when the run stopped at {t['after_s']} s (see section 3)",
                         "met": t["operator_memory_mib"]["VmRSS"] < 64})
        elif results.get("control_plane_1000_attempt"):
            at = results["control_plane_1000_attempt"]
            rows.append({"target": "operator RSS < 64 MiB at 1,000 ModelDeployments",
                         "measured": f"{at['operator_vmrss_mib']} MiB seen in a stopped attempt (17/1,000 Published; see section 3)",
                         "met": at["operator_vmrss_mib"] < 64})
        else:
            rows.append({"target": "operator RSS < 64 MiB at 1,000 ModelDeployments",
                         "measured": "not measured at 1,000" + (f": {cp['errors'].get('1000')}" if cp.get("errors", {}).get("1000") else ""),
                         "met": None})
    rows += fleet_rows(results)
    ec = results.get("edge_cache")
    if ec:
        f = ec["raw"]["cache"]
        rows.append({"target": "a response cache hit at the edge costs no generation (no target figure)",
                     "measured": "; ".join(f"{EDGE_FORMS[k]}: TTFB p50 hit {v['hitMs']['ttfb']['p50']:.2f} ms vs miss "
                                           f"{v['missMs']['ttfb']['p50']:.2f} ms (×{v['hitOverMiss']['ttfbP50']:.4f})"
                                           for k, v in f.items())
                                 + "; K identical concurrent requests per generation: "
                                 + ", ".join(f"K={k} {v:g}" for k, v in ec["coalescing_ratio"].items()),
                     "met": None})
    return rows


def cpu_peer_rows(sec):
    """Issue 17's CPU targets: Backhaul's output tokens/s and TTFT p50 against
    llama.cpp's server, every concurrency measured."""
    if not sec:
        return []
    tps = [(v, f"{SURFACES[s].split(' (')[0]} c={c}") for s, per in sec["ratio_vs_llama_cpp"].items()
           for c, v in per.items()]
    ttft = [(v, f"{SURFACES[s].split(' (')[0]} c={c}") for s, per in sec["ttft_p50_ratio_vs_llama_cpp"].items()
            for c, v in per.items()]
    rows = []
    if tps:
        worst = min(tps)
        rows.append({"target": f"Backhaul ≥ {CPU_PEER_TPS_BOUND} × llama.cpp's server, output tok/s on the CPU, same "
                               "model and run (issue 17)",
                     "measured": f"lowest {worst[0]:.3f} ({worst[1]}); every cell: "
                                 + ", ".join(f"{v:.3f} ({w})" for v, w in tps) + f" ({sec['date'][:10]}, section 7)",
                     "met": worst[0] >= CPU_PEER_TPS_BOUND})
    if ttft:
        worst = max(ttft)
        rows.append({"target": f"Backhaul's TTFT p50 ≤ {CPU_PEER_TTFT_BOUND:g} × llama.cpp's server's on the CPU (issue 17)",
                     "measured": f"highest ×{worst[0]:.2f} ({worst[1]}); every cell: "
                                 + ", ".join(f"×{v:.2f} ({w})" for v, w in ttft),
                     "met": worst[0] <= CPU_PEER_TTFT_BOUND})
    return rows


def cpu_peer_section(sec, before=None):
    """Section 7: Backhaul against llama.cpp's server on the CPU (issue 17),
    with the run before the issue's changes (`cpu_peer_before`) beside it."""
    L = ["## 7. CPU speed against llama.cpp (issue 17)", ""]
    if not sec:
        return L + ["Not measured yet: `BENCH=cpu-peer make bench`.", ""]
    r = sec["raw"]
    cfg = r["config"]
    levels = [str(c) for c in cfg["concurrency"]]
    t = r["targets"]
    build = ("a build for x86-64-v3 (`RUSTFLAGS='-C target-cpu=x86-64-v3'`, its own `CARGO_TARGET_DIR` "
             "`$BACKHAUL_CACHE/target-v3`: candle's quantized kernels use AVX2 only when compiled for it; "
             "Q8_0 has such kernels, Q4_1 none), dev profile"
             if "target-v3" in sec.get("command", "") else "dev profile")
    L += [f"Machine: {machine_line(sec)}.", "",
          f"`backhaul-inference --device cpu` ({build}; mistral.rs and candle at opt-level 3) over its OpenAI "
          "HTTP/SSE surface against llama.cpp's OpenAI-compatible server, `llama_cpp.server` from "
          "`llama-cpp-python` (built from source by pip with llama.cpp's defaults, `-march=native`, less AMX, which "
          "faults in this VM: `scripts/bench.sh`), on the same GGUF file (`" + str(cfg["model"]) + "`), with the same context window (8,192 tokens) "
          f"and the same load generator (`backhaul-bench`): {cfg['prompts']} fixed chat prompts, greedy (temperature "
          f"0), `max_tokens` {cfg['max_tokens']}, streamed. Each round sends one batch of "
          f"{', '.join(str(n) for n in cfg['requests_per_batch'])} request(s) (c = {', '.join(levels)} in flight) "
          f"to each server in turn, the order rotated, {cfg['rounds']} rounds, each batch taking the prompts on from "
          "where the last one stopped; so drift in this machine's load falls on both alike. Output tokens/s, TTFT "
          "and ITL as in section 1. llama-cpp-python's server generates one request at a time (a lock around the "
          "model; started with `--interrupt_requests false`, so a new request waits instead of cutting the stream "
          "in progress short): at c > 1 its TTFT includes the wait for the requests ahead."
          + (" It streamed no usage: its completion tokens are `max_tokens` where the stream ended for `length`, "
             "else its text events." if not any(x.get("tokens_from_usage") for x in t.get("llama_cpp", {}).values())
             else ""), "",
          *inference_target_rows(t, levels), "",
          f"Backhaul over llama.cpp (1.00 = equal). Targets (issue 17): output tokens/s ≥ {CPU_PEER_TPS_BOUND} × "
          f"llama.cpp's, and TTFT ≤ {CPU_PEER_TTFT_BOUND:g} × llama.cpp's (p50), at every concurrency.", "",
          "| surface | c | output tok/s (per round) | TTFT p50 | TTFT p99 | CPU/token | tok/s target | TTFT target |",
          "|---|---|---|---|---|---|---|---|"]
    yes = lambda ok: "met" if ok else "**not met**"
    for s, per in (r.get("ratio_vs_peers") or {}).get("llama_cpp", {}).items():
        for c in levels:
            v = per.get(c)
            if not v:
                continue
            ci = ratio_ci(v["rounds"])
            ci = f" [95 % CI {ci[0]:.2f}–{ci[1]:.2f}]" if ci else ""
            tt = r["ttft_ratio_vs_peers"]["llama_cpp"][s][c]
            cpu = ((r.get("cpu_per_token_ratio_vs_peers") or {}).get("llama_cpp", {}).get(s) or {}).get(c)
            L.append(f"| {SURFACES[s]} | {c} | {v['ratio']:.3f}{ci} ({', '.join(f'{x:.2f}' for x in v['rounds'])}) | "
                     f"×{tt['p50']:.2f} | ×{tt['p99']:.2f} | {fmt(cpu, 3)} | {yes(v['ratio'] >= CPU_PEER_TPS_BOUND)} | "
                     f"{yes(tt['p50'] <= CPU_PEER_TTFT_BOUND)} |")
    same = r.get("same_greedy_text") or {}
    if same:
        L += ["", f"Same greedy text as {TARGETS.get(same['reference'], same['reference'])} at c=1, prompts: "
              + ", ".join(f"{TARGETS.get(k, k)} {v}" for k, v in same["same"].items())
              + " (two engines with different kernels need not pick the same token where two are close)."]
    L += ["", "Command:", "", "```sh", sec["command"], "```", ""]
    if before:
        L += ["Before (the first run, the baseline x86-64 build on the shipped Q4_1 file, "
              f"{before['date'][:10]}): Backhaul over llama.cpp, output tok/s and TTFT p50.", "",
              "| surface | c | tok/s before | tok/s now | TTFT p50 before | TTFT p50 now |", "|---|---|---|---|---|---|"]
        for s, cells in before["ratio_vs_llama_cpp"].items():
            for c, was in cells.items():
                now = sec["ratio_vs_llama_cpp"].get(s, {}).get(c)
                tt_was = before["ttft_p50_ratio_vs_llama_cpp"][s][c]
                tt_now = sec["ttft_p50_ratio_vs_llama_cpp"].get(s, {}).get(c)
                L.append(f"| {SURFACES[s]} | {c} | {was:.3f} | {fmt(now, 3)} | ×{tt_was:.2f} | "
                         + (f"×{tt_now:.2f}" if tt_now is not None else "–") + " |")
        L += ["", "Command:", "", "```sh", before["command"], "```", ""]
    return L


def fleet_rows(results):
    """Issue 15's targets at 1,000 × 3: the latest measurement, with the
    figure before issue 15 beside it where it was measured."""
    before = results.get("issue15_before") or {}
    now, was = fleet_figures(results.get("control_plane")), fleet_figures(before.get("control_plane"))
    latest = now or was
    rows = []
    if not latest:
        return rows
    tag = (lambda f: f"operator `{f['commit']}`")
    prior = lambda text: f"; before issue 15 ({tag(was)}): {text}" if now and was else ""
    which = f" ({tag(latest)}{', before issue 15; not yet measured after' if not now else ''})"
    rows.append({"target": "publication requests/min per operator ≤ 10 at 1,000 × 3 settled",
                 "measured": f"{rpm_cell(latest)} over {latest['window_s']} s{which}" + prior(rpm_cell(was) if was else ""),
                 "met": latest["rpm"] <= 10})
    if latest["probe"]:
        p = lambda f: f"p50 {f['probe']['p50']:.2f} s, p99 {f['probe']['p99']:.2f} s ({f['probes']} objects)"
        rows.append({"target": "apply → Published p99 ≤ 5 s for one new object with 1,000 settled",
                     "measured": p(latest) + which + prior(p(was) if was and was["probe"] else "–"),
                     "met": latest["probe"]["p99"] <= 5})
    # Before: a run of its own, else the old checkout measured in the same run (--baseline).
    t_now = table_figures(results.get("worker_table"))
    t_was = table_figures(before.get("worker_table")) or table_figures(results.get("worker_table"), "baseline")
    t = t_now or t_was
    if t:
        c = lambda f: (f"TTFB p50 {f['big']['chat']['ttfbMs']['p50']:.2f} ms at {f['routes']:,} routes vs "
                       f"{f['small']['chat']['ttfbMs']['p50']:.2f} ms at 3 (×{f['ratio']['chatTtfbP50']:.2f}), runtime CPU "
                       f"{f['big']['chat']['runtimeCpuMsPerRequest']:.2f} vs {f['small']['chat']['runtimeCpuMsPerRequest']:.2f} "
                       f"ms/request (×{f['ratio']['chatCpu']:.2f})")
        w = f" (Worker `{t['commit']}`{', before issue 15; not yet measured after' if not t_now else ''})"
        rows.append({"target": "a chat completion's isolate cache miss at 10,000 routes costs what it costs at 3 (no target figure)",
                     "measured": c(t) + w + (f"; before issue 15 (Worker `{t_was['commit']}`): {c(t_was)}" if t_now and t_was else ""),
                     "met": None})
    return rows


def issue15_section(results):
    """Issue 15's figures before its code and after, side by side."""
    before = results.get("issue15_before") or {}
    if not before:
        return []
    cp_b, cp_a = fleet_figures(before.get("control_plane")), fleet_figures(results.get("control_plane"))
    wt_b, wt_a = table_figures(before.get("worker_table")), table_figures(results.get("worker_table"))
    # The same run's baseline checkout, where the after run measured both Workers interleaved.
    wt_same = table_figures(results.get("worker_table"), "baseline")
    L = ["## 5. Issue 15: the operator and the table at fleet size, before and after", "",
         "The same scripts with the same parameters, once on the code before issue 15 (operator and Worker at "
         f"`{(cp_b or wt_b or wt_same or {}).get('commit')}`) and once after. Control plane: `bench/control_plane.py` at 1,000 "
         "ModelDeployments × 3 regions, ttl 120 s, against its Python receiver (it verifies every signature, orders "
         "sequences, answers the lease renewal with the count and digest of the routes it holds, and the fleet view "
         "with an ETag); requests are counted at the receiver. Worker: `bench/worker_table.mjs`, "
         "`ROUTE_CACHE_TTL_MS=0` so every request misses the isolate's copy.", ""]
    cell = lambda f, fn: fn(f) if f else "not measured"
    mem = lambda m: f"{m['VmRSS']} ({m['VmHWM']})" if m else "–"
    q = lambda d: f"{d['p50']:.2f} / {d['p99']:.2f} s" if d else "–"
    rows = [
        ("publication requests/min per operator, steady (by kind)", rpm_cell, "≤ 10"),
        ("apply → Published of one new object, p50 / p99", lambda f: q(f["probe"]), "p99 ≤ 5 s"),
        ("… to the receiver's first PUT of its routes, p50 / p99", lambda f: q(f["first_put"]), "–"),
        ("operator VmRSS (peak), MiB: all Published", lambda f: mem(f["rss"]), "< 64"),
        ("… end of the steady window", lambda f: mem(f["rss_steady"]), "< 64"),
        ("… restarted over the 1,000", lambda f: mem(f["rss_restart"]), "< 64"),
        ("operator CPU in the steady window", lambda f: f"{f['cpu_pct']} % of one core", "–"),
        ("operator API writes in the steady window", lambda f: str(f["steady_api_writes"]), "0"),
        ("routes expired at the receiver at the window's end; lease digest mismatches",
         lambda f: f"{f['expired']}; {f['lease_mismatches']}", "0; 0"),
        ("apply → all 1,000 Published", lambda f: f"{f['apply_all_s']:.1f} s", "–"),
    ]
    L += [f"| at 1,000 × 3 | before (operator `{cp_b['commit'] if cp_b else '–'}`) | "
          f"after (operator `{cp_a['commit'] if cp_a else '–'}`) | target |", "|---|---|---|---|"]
    for label, fn, target in rows:
        L.append(f"| {label} | {cell(cp_b, fn)} | {cell(cp_a, fn)} | {target} |")
    chat = lambda f, size, k: f[size]["chat"][k]
    wrows = [
        ("chat TTFB p50 / p99, ms: 10,000 routes", lambda f: f"{chat(f, 'big', 'ttfbMs')['p50']:.2f} / {chat(f, 'big', 'ttfbMs')['p99']:.2f}"),
        ("… 3 routes", lambda f: f"{chat(f, 'small', 'ttfbMs')['p50']:.2f} / {chat(f, 'small', 'ttfbMs')['p99']:.2f}"),
        ("… 10,000 over 3 (p50)", lambda f: f"×{f['ratio']['chatTtfbP50']:.2f} (+{f['miss']['chatTtfbP50']:.2f} ms)"),
        ("runtime CPU per chat request, ms: 10,000 / 3 routes",
         lambda f: f"{chat(f, 'big', 'runtimeCpuMsPerRequest'):.2f} / {chat(f, 'small', 'runtimeCpuMsPerRequest'):.2f} (×{f['ratio']['chatCpu']:.2f})"),
        ("`GET /v1/models` p50, ms: 10,000 / 3 routes (lists every model by design)",
         lambda f: f"{f['big']['models']['totalMs']['p50']:.2f} / {f['small']['models']['totalMs']['p50']:.2f} (×{f['ratio']['modelsTotalP50']:.2f})"),
        ("publishing the 10,000 routes, 32 PUTs in flight (in one run, every Worker at once)",
         lambda f: f"{f['big']['publishMs'] / 1000:.1f} s"),
    ]
    heads = ([("before", wt_b)] if wt_b else []) + [("after", wt_a)] + ([("before, in the same run", wt_same)] if wt_same else [])
    L += ["", "| Worker, one miss per request | " + " | ".join(f"{h} (Worker `{f['commit'] if f else '–'}`{' + uncommitted' if f and f['dirty'] else ''})"
                                                        for h, f in heads) + " |",
          "|---|" + "---|" * len(heads)]
    for label, fn in wrows:
        L.append(f"| {label} | " + " | ".join(cell(f, fn) for _, f in heads) + " |")
    if not cp_a:
        L += ["", "The control plane after issue 15 is not measured yet: it needs the route-sync operator. Its "
              "run, with the same parameters (build the operator at that commit, in a clean worktree, with "
              "`build_workspace`, and copy the binary out of the shared target directory first):", "", "```sh",
              "BACKHAUL_OPERATOR_BIN=<binary> BACKHAUL_OPERATOR_COMMIT=<commit> CONTROL_PLANE_COUNTS=1000 "
              "CONTROL_PLANE_EXPIRY=0 CONTROL_PLANE_TIMEOUT_S=3600 scripts/bench.sh --section control-plane",
              "$BACKHAUL_CACHE/venv-bench/bin/python bench/report.py $BACKHAUL_CACHE/bench/control-plane.json", "```"]
    L += ["", "Run conditions and commands:", ""]
    for when, sec in [("before", before.get("control_plane")), ("before", before.get("worker_table")),
                      ("after", results.get("control_plane") if cp_a else None), ("after", results.get("worker_table") if wt_a else None)]:
        if sec:
            env = " ".join(f"{k}={v}" for k, v in (sec["raw"].get("env") or {}).items())
            L += [f"- {when}: {machine_line(sec)}: `{(env + ' ') if env else ''}{sec['command']}`"]
            L += [f"  - {note}" for note in sec["raw"].get("notes") or []]
    L.append("")
    return L


EDGE_FORMS = {"streamed": "streamed", "nonStreamed": "non-streamed"}


def edge_cache_section(ec, routing):
    """Section 6: the edge's response cache and coalescing with a real region."""
    L = ["## 6. Edge response cache and coalescing (issue 18)", ""]
    if not ec:
        return L + ["Not measured yet.", ""]
    r = ec["raw"]
    cfg = r["config"]
    w = r["worker"]
    dirty = f", with {len(w['uncommittedFiles'])} uncommitted files" if w["uncommittedFiles"] else ""
    L += [f"Machine: {machine_line(ec)}. Worker `{w['commit']}`{dirty}.", "",
          f"`bench/edge_cache.mjs`: the Backhaul Worker under `wrangler dev --env local` (`CACHE_MODELS` caching "
          f"`{cfg['model']}` for an hour) in front of one `backhaul-inference` on SmolLM2 (CPU, dev profile), its "
          "route published through the signed admin API; no cluster. Every request is a greedy chat completion "
          f"(`temperature` 0, `max_tokens` {cfg['maxTokens']}) sent by the client through `wrangler dev`'s proxy, "
          "as a user's would be.", "",
          f"**Cache.** Per form, {cfg['prompts']} distinct prompts, each sent once (a MISS: the region generates it) "
          f"and then {cfg['hits']} times (HITs, from `caches.default`), one request at a time; every hit's text equals "
          "its miss's, and the region's `backhaul_inference_requests_total` grew by exactly the misses. TTFB: from "
          "sending the request to the first body byte (a streamed miss's first byte comes with the first token: the "
          "region answers once it has one; a non-streamed answer comes whole); total: to the end of the body"
          + (f"; with {cfg['prompts']} misses per form, a miss's p99 is its slowest" if cfg["prompts"] < 100 else "")
          + ".", "",
          "| form | | requests | TTFB p50 ms | TTFB p99 ms | total p50 ms | total p99 ms |",
          "|---|---|---|---|---|---|---|"]
    for form, c in r["cache"].items():
        for kind, key in [("miss", "missMs"), ("hit", "hitMs")]:
            m = c[key]
            L.append(f"| {EDGE_FORMS[form]} | {kind} | {m['ttfb']['samples']} | {fmt(m['ttfb']['p50'])} | "
                     f"{fmt(m['ttfb']['p99'])} | {fmt(m['total']['p50'])} | {fmt(m['total']['p99'])} |")
        h = c["hitOverMiss"]
        L.append(f"| {EDGE_FORMS[form]} | hit / miss | | {h['ttfbP50']:.4f} | {h['ttfbP99']:.4f} | "
                 f"{h['totalP50']:.4f} | {h['totalP99']:.4f} |")
    floor = ((routing or {}).get("raw", {}).get("addedMsOverDirect") or {}).get("viaPassthrough")
    if floor:
        L += ["", f"Of a hit's time here, `wrangler dev`'s proxy and workerd's forwarding alone account for about "
              f"{floor['ttfb']['p50']:.2f} ms p50 (what a forward-only Worker adds to time to first byte under the same "
              "`wrangler dev`, section 2, measured in its own run)."]
    L += ["", f"**Coalescing.** Per K, {cfg['rounds']} rounds of K identical streamed requests sent at once (a prompt "
          "no earlier request sent), and the generations the region ran for them (its `backhaul_inference_requests_total` "
          "before and after each round). Ratio: requests served over generations (K when all K share one). Every "
          "answer of a round has the same text.", "",
          "| K | requests | generations | ratio | generations per round | x-backhaul-cache | round wall p50 ms |",
          "|---|---|---|---|---|---|---|"]
    for c in r["coalescing"]:
        headers = {}
        for rd in c["rounds"]:
            for k, v in rd["cacheHeaders"].items():
                headers[k] = headers.get(k, 0) + v
        walls = sorted(rd["wallMs"] for rd in c["rounds"])
        L.append(f"| {c['k']} | {c['requests']} | {c['generations']} | {c['ratio']:g} | "
                 f"{', '.join(str(rd['generations']) for rd in c['rounds'])} | "
                 f"{', '.join(f'{k} {v}' for k, v in sorted(headers.items()))} | {fmt(walls[(len(walls) - 1) // 2], 1)} |")
    L += ["", "Coalescing is per isolate: `wrangler dev` runs one, a Cloudflare data centre many, so in production "
          "identical requests that land in different isolates are generated once per isolate (and the cache is per "
          "data centre).", "",
          "Command:", "", "```sh", ec["command"], "```", ""]
    return L


def readme(results, made):
    L = ["# Benchmarks", "",
         "Generated by `make bench` (`scripts/bench.sh` → `bench/report.py`) from "
         "[`results.json`](results.json); every figure below is read from that file, which the same run wrote. "
         "Re-run one section with `BENCH=inference|inference-interleaved|cpu-peer|routing|control-plane|worker-table|edge-cache make bench` "
         "(comma-separate several); "
         "the others keep their last results.", "",
         "The machine these ran on is small and was shared (other builds ran beside some sections): the load "
         "average is recorded with each section. Ratios compare targets measured in the same run, interleaved, "
         "so they hold up better than the absolute times, which are context.", ""]
    rows = results.get("summary") or []
    if rows:
        L += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
        for row in rows:
            met = {True: "yes", False: "**no**", None: "–"}[row["met"]]
            L.append(f"| {row['target']} | {row['measured']} | {met} |")
        L += ["", ("GPU: see section 4 ([gpu-bench.md](gpu-bench.md))." if results.get("gpu", {}).get("measured") else
                   "GPU: not measured yet (no device lent); `scripts/gpu-bench.sh` is ready, section 4."), ""]

    inf = results.get("inference")
    L += ["## 1. Inference overhead", ""]
    if inf:
        raw = inf["raw"]
        cfg = raw["config"]
        t = raw["targets"]
        levels = [str(c) for c in cfg["concurrency"]]
        L += [f"Machine: {machine_line(inf)}.", "",
              f"Model `{cfg['model']}` on CPU, {cfg['prompts']} fixed chat prompts in turn, greedy (temperature 0), "
              f"`max_tokens` {cfg['max_tokens']}, streaming. Per concurrency c, a batch of "
              f"{', '.join(f'{n} (c={c})' for c, n in zip(levels, cfg['requests_per_batch']))} requests with c in flight; "
              f"{cfg['rounds']} rounds, each running every target once per concurrency, the target order rotated "
              "each round. Output tokens/s = completion tokens (as each server reports them) over the batches' wall "
              "time. Time to first token (TTFT): from sending the request to the first streamed text; "
              "inter-token latency (ITL): gaps between streamed text pieces. CPU ms/token: CPU time (user + system, "
              "`/proc/<pid>/stat`) of the process that generates the tokens over the same batches, per output token; "
              "for a server, `+` the benchmark process's own CPU as its client.", "",
              "Targets: mistral.rs 0.8.1 loaded in the benchmark process (`bench/src/targets.rs`: the "
              "`GgufModelBuilder` settings `backhaul-inference --device cpu` uses, requests built as mistral.rs's "
              "own server builds them), `backhaul-inference` over gRPC `ChatStream` and over OpenAI HTTP/SSE, "
              "and `mistralrs serve` (mistralrs-cli 0.8.1, `cargo install`ed, release profile) over OpenAI HTTP/SSE. "
              "`backhaul-inference` and the in-process engine are the workspace's dev profile, whose dependencies "
              "(mistral.rs, candle) are built at opt-level 3.", ""]
        L += inference_target_rows(t, levels)
        L += ["", "Backhaul over the other (1.00 = equal): output tokens/s (above 1 = Backhaul faster; in brackets "
              "per round, batches run back to back) and server CPU per output token (below 1 = Backhaul spends less). "
              "Target: ≥ 0.97 against in-process and ≥ 1.00 against `mistralrs serve`, in output tokens/s.", ""]
        L += inference_ratio_rows(raw, levels)
        same = raw["same_greedy_text_as_inprocess"]
        L += ["", "Same greedy text as in-process at c=1, prompts: " +
              ", ".join(f"{TARGETS.get(k, k)} {v}" for k, v in same.items()) + ".", ""]
        L += inference_noise(raw, levels, inf["machine"]["nproc"])
        L += inference_interleaved(results.get("inference_interleaved"))
        L += inference_profile(results.get("inference_profile"))
        L += inference_gap(results)
        c1 = [t[n]["1"]["output_tokens_per_s"] for n in TARGETS if n in t and "1" in t[n]]
        per_stream = f"the {min(c1):.1f}–{max(c1):.1f} tokens/s of one stream (c=1) here" if c1 else "the speed here"
        L += ["Why the absolute speed is low: every target here runs the same candle 0.10.2 CPU kernels, "
              "and for this model's quantization, Q4_1, candle has no SIMD dot product at all "
              "(`BlockQ4_1::vec_dot` calls `vec_dot_unopt`, the scalar loop, at the top of the profile above); the "
              "AVX2 kernels candle has for other types (Q4_0, Q8_0, the K-quants) are compiled in only with "
              "`target_feature = \"avx2\"`, which the default x86-64 target does not enable. Each token's "
              "matrix-vector products therefore run scalar, prompt tokens as much as generated ones (time to first "
              f"token grows with the prompt at about the decode rate). That sets {per_stream} for a 135M model, the "
              "same for mistral.rs in-process, Backhaul and `mistralrs serve`, so the ratios above still measure "
              "Backhaul's overhead, and it is why more sequences in flight add little throughput: the kernels are "
              "compute-bound, so batching saves no memory traffic worth having. A production CPU image would use a "
              "Q4_0/Q8_0/K-quant file and build with `RUSTFLAGS='-C target-cpu=x86-64-v3'`; GPU pods do not use "
              "these kernels.", ""]
        if "inference.png" in made:
            L += ["![inference](inference.png)", ""]
        L += ["Command (`scripts/bench.sh` starts both servers on free loopback ports, and `perf record -a` "
              "when perf is installed, first):", "", "```sh", inf["command"], "```", ""]
    else:
        note = results.get("inference_not_measured")
        L += [f"Not measured yet{': ' + note if note else ''}. The harness is `bench/src` (binary `backhaul-bench`) "
              "and `scripts/bench.sh`'s inference section; run `BENCH=inference make bench`.", ""]
    rt = results.get("routing")
    L += ["## 2. Routing overhead (the Worker)", ""]
    if rt:
        r = rt["raw"]
        L += [f"Machine: {machine_line(rt)}.", "",
              "`bench/routing.mjs` starts a Node SSE upstream (headers and a first chunk at once, three more 5 ms "
              "apart) and `wrangler dev --env local`, publishes signed routes, and streams chat completions one at a "
              f"time, {r['requests']} on each path below, the paths alternating "
              f"in {r['blocks']} blocks (p50/p99 below are the medians of the blocks' percentiles). TTFB is until "
              "the first body chunk, total until the end of the stream (`npm run bench` in `worker/` runs the same "
              "script). To see where added time goes, the same requests also go to the Worker's "
              "own workerd entry (skipping wrangler dev's proxy) and through a Worker that only forwards "
              "(`bench/passthrough`) under the same `wrangler dev`.", "",
              "| path | TTFB p50 ms | TTFB p99 ms | total p50 ms | total p99 ms |", "|---|---|---|---|---|"]
        labels = {"direct": "direct to the upstream",
                  "viaWorker": "Backhaul Worker through `wrangler dev` (proxy + Worker)",
                  "viaWorkerRuntimeOnly": "Backhaul Worker, its workerd entry (no wrangler proxy)",
                  "viaPassthrough": "forward-only Worker through `wrangler dev`",
                  "viaPassthroughRuntimeOnly": "forward-only Worker, its workerd entry (no wrangler proxy)",
                  "viaBaseline": "Backhaul Worker at the baseline checkout (`--baseline`) through `wrangler dev`",
                  "viaBaselineRuntimeOnly": "Backhaul Worker at the baseline checkout, its workerd entry"}
        for k, s in r["paths"].items():
            L.append(f"| {labels.get(k, k)} | {fmt(s['ttfbMs']['p50'])} | {fmt(s['ttfbMs']['p99'])} | "
                     f"{fmt(s['totalMs']['p50'])} | {fmt(s['totalMs']['p99'])} |")
        L += ["", "Added over the upstream directly (target for the Backhaul Worker: ≤ 1 ms p50, ≤ 5 ms p99):", "",
              "| path | TTFB p50 ms | TTFB p99 ms | total p50 ms | total p99 ms | CPU ms per request |",
              "|---|---|---|---|---|---|"]
        for k, a in r["addedMsOverDirect"].items():
            cpu = r["cpuMsPerRequest"].get(k) or {}
            cpu_s = ", ".join(f"{n} {v}" for n, v in cpu.items() if n in ("node", "workerd_proxy", "workerd_runtime"))
            L.append(f"| {labels.get(k, k)} | {fmt(a['ttfb']['p50'])} | {fmt(a['ttfb']['p99'])} | "
                     f"{fmt(a['total']['p50'])} | {fmt(a['total']['p99'])} | {cpu_s} |")
        a = r["addedMsOverDirect"]
        if a.get("viaPassthrough") and a.get("viaWorkerRuntimeOnly") and a.get("viaPassthroughRuntimeOnly"):
            own = a["viaWorker"]["ttfb"]["p50"] - a["viaPassthrough"]["ttfb"]["p50"]
            proxy = a["viaWorker"]["ttfb"]["p50"] - a["viaWorkerRuntimeOnly"]["ttfb"]["p50"]
            cpu_w = (r["cpuMsPerRequest"].get("viaWorkerRuntimeOnly") or {}).get("workerd_runtime")
            cpu_p = (r["cpuMsPerRequest"].get("viaPassthroughRuntimeOnly") or {}).get("workerd_runtime")
            L += ["", f"Where the added TTFB goes (p50): of the {a['viaWorker']['ttfb']['p50']:.2f} ms, a Worker that "
                  f"does nothing but forward adds {a['viaPassthrough']['ttfb']['p50']:.2f} ms under the same `wrangler dev`, "
                  f"so the Backhaul Worker's own code (route table, ranking, failover bookkeeping, first-chunk check) "
                  f"accounts for {own:.2f} ms; wrangler dev's proxy in front of workerd for {proxy:.2f} ms; the rest "
                  f"({a['viaPassthroughRuntimeOnly']['ttfb']['p50']:.2f} ms with the forward-only Worker straight at its "
                  "workerd) is the local runtime forwarding one request. "
                  + (f"In CPU, the Worker's workerd spends {cpu_w} ms per request on the Backhaul Worker and {cpu_p} ms "
                     "on the forward-only one. " if cpu_w is not None and cpu_p is not None else "")
                  + "workerd under `wrangler dev` runs with an inspector socket open (`--inspector-addr`, as wrangler starts it) and shares this machine's "
                  "cores with everything else; these figures bound the Worker's cost locally, they are not the "
                  "Cloudflare edge's, which cannot be measured here."]
        L += ["", "CPU ms per request: user + system CPU time the `wrangler dev` processes (node: wrangler; "
              "workerd_proxy: its proxy; workerd_runtime: the runtime running the Worker) used during the path's "
              "series, over its requests (10 ms tick resolution; warm-up requests included)."]
        L += ["", f"Failover: the failing region is ranked first, the healthy one second "
              f"(`x-backhaul-attempts: 2` checked on every response); firstByteTimeoutMs {r['firstByteTimeoutMs']}. "
              "Added = TTFB with the failover − TTFB through the Worker without one − the failed attempt's own time "
              "(the same request straight at the failing upstream; for the slow first byte, firstByteTimeoutMs). "
              "Target: ≤ 50 ms.", "",
              "| failure | requests | TTFB p50 ms | failed attempt alone p50 ms | added p50 ms | added p99 ms |",
              "|---|---|---|---|---|---|"]
        for k, v in r["failover"].items():
            L.append(f"| {k} | {v['ttfbMs']['samples']} | {fmt(v['ttfbMs']['p50'])} | {fmt(v['failedAttemptMs']['p50'])} | "
                     f"{fmt(v['addedMs']['p50'])} | {fmt(v['addedMs']['p99'])} |")
        L += ["", f"`wrangler dev` took {r['wranglerDevStartupMs']} ms to answer `/health`.", ""]
        if "routing.png" in made:
            L += ["![routing](routing.png)", ""]
        L += ["Command:", "", "```sh", "source scripts/node-env.sh && " + rt["command"], "```", ""]
        L += routing_profile(results.get("routing_profile"))
    else:
        L += ["Not measured yet.", ""]

    cp = results.get("control_plane")
    L += ["## 3. Control plane at scale", ""]
    if cp:
        r = cp["raw"]
        L += [f"Machine: {machine_line(cp)}.", "",
              "`bench/control_plane.py` on the local control plane (`tests/cluster`: etcd, kube-apiserver, "
              "controller-manager, scheduler, kwok making pods Running/Ready at once; "
              f"{r['cluster']['nodes_with_bench_nodes']} fake nodes during the run, including one bench node per region "
              "with room for 1,100 pods, removed afterwards). Per count N: a namespace, `backhaul-operator` (dev profile) watching only it and "
              "publishing to a local receiver that verifies every signature, N ModelDeployments of three regions "
              "(1 CPU replica each, so 3N pods) created in one `kubectl create`.", "",
              "| N | create s | apply → all Published s | apply → all 3N routes on the receiver s | "
              "reconcile p50 ms | reconcile p99 ms | reconciles | operator VmRSS MiB (peak) |",
              "|---|---|---|---|---|---|---|---|---|"]
        for c in sorted(r["runs"], key=int):
            run = r["runs"][c]
            if "error" in run:
                t = run.get("timed_out")
                if t:
                    L.append(f"| {c} | {fmt(run.get('create_s'), 1)} | not reached: {t['published']}/{c} Published after "
                             f"{t['after_s']} s ({t['receiver']['routes']} routes; {t['pods']['ready']} of {3 * int(c)} pods "
                             f"Ready) | | | | | {t['operator_memory_mib']['VmRSS']} ({t['operator_memory_mib']['VmHWM']}) |")
                else:
                    L.append(f"| {c} | not measured: {run['error']} | | | | | | |")
                continue
            L.append(f"| {c} | {fmt(run['create_s'], 1)} | {fmt(run['apply_to_published_s'], 1)} | "
                     f"{fmt(run['apply_to_all_routes_s'], 1)} | {fmt(ms(run['reconcile_s']['p50']), 1)} | "
                     f"{fmt(ms(run['reconcile_s']['p99']), 1)} | {run['reconciles']} | {mem_of(run['operator_memory_mib'])} |")
        L += ["", "Pods, in seconds after the objects were created (whole seconds: Kubernetes timestamps): when "
              "the controller-manager created the last pod and when kwok made the last one Ready, against when the "
              "operator had published everything. The operator publishes a region as soon as its pod is Ready, so "
              "where these are close the pace is set by the rest of the control plane (each region needs a "
              "ReplicaSet, a Pod, a binding and their status updates, from the controller-manager, the scheduler and "
              "kwok, on the same two cores as the API server, etcd and the operator; `tests/cluster/up.sh` raises "
              "the controller-manager's client limit from 20 to 200 requests/s so that it is not the limit), not by "
              "the operator.", "",
              "| N | pods | median pod created s | last pod created s | median pod Ready s | last pod Ready s | all Published s |",
              "|---|---|---|---|---|---|---|"]
        for c in sorted(r["runs"], key=int):
            run = r["runs"][c]
            p = run.get("pods") or (run.get("timed_out") or {}).get("pods")
            if p:
                L.append(f"| {c} | {p['count']} | {p['created_s']['p50']} | {p['created_s']['last']} | "
                         f"{p['ready_s']['p50']} | {p['ready_s']['last']} | {fmt(run.get('apply_to_published_s'), 1)} |")
        beats = [(c, r["runs"][c]["receiver"]) for c in sorted(r["runs"], key=int)
                 if "heartbeat_puts" in (r["runs"][c].get("receiver") or {})]
        if beats:
            L += ["", "Route PUTs the receiver counted from the apply to the end of the measurement, against what "
                  "heartbeats alone account for (each route's first PUT, then one every ttlSeconds/3 = "
                  f"{r['ttl_seconds'] // 3} s until then; the Worker expires a route not renewed within "
                  "ttlSeconds): " + "; ".join(f"N={c}: {b['puts']} PUTs for {b['routes']} routes, heartbeats "
                                             f"{b['heartbeat_puts']}" for c, b in beats) + "."]
        L += ["", "Reconcile percentiles are interpolated inside the operator's histogram buckets "
              "(`backhaul_operator_reconcile_duration_seconds`), as Prometheus' `histogram_quantile` does.", "",
              "No-op resync: the operator is restarted over N settled objects and reconciles each once more. "
              "Objects written = objects (ModelDeployments, Deployments, Services, PDBs) whose resourceVersion "
              "changed (target 0). Write requests = the API server's `apiserver_request_total` for write verbs on "
              "those resources plus events, over the resync, next to an idle window as long (the control plane is "
              "shared with other users: DELETEs there are the namespace controller clearing earlier runs' "
              "namespaces, which are deleted without waiting; the operator's own count below shows it sent none).", "",
              "The operator's own requests (`backhaul_operator_kube_requests_total`, by method) say exactly what it "
              "asked: a GET per child it adopts after the restart (its digest matches and the live object holds every "
              "desired value), the initial lists and watches, and, in the target, no write. Steady: the same count "
              "over a window of route heartbeats (every ttlSeconds/3), each reconciling its object with nothing to change.", "",
              "| N | s to reconcile all | objects written | operator requests after restart | steady window: reconciles, operator requests | write requests on the API server during resync | same-length idle window | Worker PUTs | restarted operator's VmRSS MiB (peak) |",
              "|---|---|---|---|---|---|---|---|---|"]
        for c in sorted(r["runs"], key=int):
            run = r["runs"][c]
            if "error" in run:
                continue
            nr = run["noop_resync"]
            w = lambda d: ", ".join(f"{k} {v}" for k, v in d.items()) or "0"
            st = run.get("steady") or {}
            steady = (f"{st['reconciles']} in {st['window_s']} s: {w(st['operator_requests'])}" if st else "–")
            L.append(f"| {c} | {fmt(nr['seconds_to_reconcile_all'], 1)} | {nr['objects_changed']} | "
                     f"{w(nr.get('operator_requests') or {})} | {steady} | "
                     f"{w(nr['api_writes_during_resync'])} | {w(nr['api_writes_same_length_idle'])} | {nr['worker_puts']} | "
                     f"{mem_of(run.get('operator_memory_mib_after_restart'))} |")
        L += ["", "Where the operator's memory goes at 1,000 objects, and why a restart over them used to take twice "
              "as much as watching them arrive (the watches' initial list pages): "
              "[operator-memory.md](operator-memory.md), from `bench/operator_memory.py` with heaptrack."]
        at = results.get("control_plane_1000_attempt")
        if at:
            L += ["", f"**1,000 objects: not measured to the end.** An attempt ({at['stopped_at']}) was stopped after "
                  f"7 minutes: {at['published_after_429_s']} of 1,000 objects Published after 429 s "
                  f"({at['routes_on_receiver_after_429_s']} routes), {at['deployments']} Deployments and "
                  f"{at['pods_running']} pods Running but only {at['services']} Services; the API server had "
                  f"{at['apiserver_mutating_inflight']} mutating requests in flight and had answered "
                  f"{at['apiserver_504_by_verb_resource'].get('APPLY services')} Service applies with 504 (timeout); the "
                  f"operator's VmRSS was {at['operator_vmrss_mib']} MiB (target < 64 MiB). Cause: the operator "
                  f"reconciles every object at once (concurrency {at['operator_reconcile_concurrency']}), each applying three "
                  "Deployments and three Services; Service creation allocates a ClusterIP (IPAddress objects in etcd), "
                  "and on this 2-core machine shared with builds, the flood of concurrent applies outran etcd, requests "
                  "passed the API server's 60 s timeout, the operator retried, and timed-out allocations leaked "
                  "IPAddresses for the API server's repair loop to clean up. A bounded reconcile concurrency "
                  "(`controller::Config::default().concurrency(n)`) would pace this. Source of these figures: "
                  f"{at['source']}.", ""]
        ex = r.get("worker_expiry") or {}
        L += [""]
        if "seconds_from_operator_kill_to_expired" in ex:
            L += [f"Region failure leaving the Worker's table: with the Worker under `wrangler dev`, one "
                  f"ModelDeployment with ttlSeconds {ex['ttl_seconds']} (heartbeat every {ex['heartbeat_seconds']} s); "
                  f"the operator SIGKILLed; `GET /admin/v1/routes` polled every 50 ms: the route was marked expired "
                  f"**{ex['seconds_from_operator_kill_to_expired']} s** after the kill (bound: ttlSeconds).", ""]
        elif ex:
            L += [f"Region failure leaving the Worker's table: not measured: {ex.get('error')}.", ""]
        if "control-plane.png" in made:
            L += ["![control plane](control-plane.png)", ""]
        L += ["Command:", "", "```sh", cp["command"], "```", ""]
    else:
        L += ["Not measured yet.", ""]

    L += gpu_section()
    L += issue15_section(results)
    L += edge_cache_section(results.get("edge_cache"), results.get("routing"))
    L += cpu_peer_section(results.get("cpu_peer"), results.get("cpu_peer_before"))
    return "\n".join(L)


def gpu_section():
    """Section 4: the GPU benchmark's own page when it has run, else how to run it."""
    measured = os.path.exists(os.path.join(DOCS, "gpu-bench.json"))
    L = ["## 4. GPU", ""]
    if measured:
        L += ["Measured by `scripts/gpu-bench.sh`: [gpu-bench.md](gpu-bench.md) (figures, GPU, commands) and "
              "gpu-bench.json.", ""]
    else:
        L += ["Not measured yet: no GPU device was lent to the sessions that produced these results. "
              "`scripts/gpu-bench.sh` is ready for one: Backhaul's HTTP surface, mistral.rs in-process and "
              "`mistralrs serve` on the same GPU, SmolLM2-135M and a Llama-3.1-8B-shaped model, concurrency 1, 8, "
              "32 and 128: TTFT, inter-token latency, output tokens/s, and decode bandwidth as a fraction of the "
              "GPU's HBM bandwidth. Its flow has run end to end only in its CPU mode so far "
              "([gpu-bench-cpu-dryrun.md](gpu-bench-cpu-dryrun.md): CPU figures, not GPU ones).", ""]
    L += ["The GPU machine has CUDA but no Rust toolchain and no network, and takes 64 MiB of files per call, so "
          "the binaries are built here with CUDA and travel compressed; no weights can travel, so the models are "
          "written there from SmolLM2's GGUF header with random weights in the real layout (`bench/gguf.py`: a "
          "decode step reads and computes what the trained model's does; the text is noise).", "",
          "```sh", *GPU_COMMANDS, "```", ""]
    if not measured:
        L += ["Before its first GPU run:", "",
              "- The CUDA binaries are not built yet. `pack` needs the CUDA 13 toolkit here (the GPU machine's driver "
              "is CUDA 13.0 and its libraries are CUDA 13's, which the binaries link by soname): nvcc, the headers, "
              "cuBLAS/cuBLASLt, cuRAND, NVRTC, the runtime and a `libcuda.so` stub to link against; then two "
              "mistral.rs builds with CUDA (Backhaul's workspace, release, and `cargo install mistralrs-cli`), "
              "sharing one target directory.",
              "- The bundle must fit the 64 MiB a call carries with the working tree (about 4 MiB): the CPU bundle "
              "is 17 MiB for backhaul-inference and backhaul-bench (126 MB stripped; the archive stores mistral.rs "
              "once). CUDA builds add the kernels, also stored once; `pack` says the size and refuses a bundle "
              "that does not fit.",
              "- Time on an H200, warm (nothing built there): about 5 to 6 minutes of the 8 allowed, estimated, not "
              "measured: unpacking and the copy-bandwidth check under 30 s; SmolLM2 about 1.5 min (three loads, "
              "warm-ups, 4 levels × 3 targets × 2 rounds of at most 128 requests of 128 tokens); the 8B-shaped "
              "model about 3.5 min (writing its 4.5 GiB, three loads, the same levels at about 100 tokens/s per "
              "sequence). The script keeps a 450 s budget: the 8B model starts only with 240 s left, and a "
              "benchmark still running at the end is cut off and reported as not measured.", ""]
    return L


def inference_noise(raw, levels, nproc):
    """How far to trust the ratios: how much the in-process engine alone moved between rounds."""
    t = raw["targets"].get("in_process")
    if not t or raw["config"]["rounds"] < 2:
        return []
    spread = {c: t[c]["rounds_output_tokens_per_s"] for c in levels if c in t}
    worst = max(spread, key=lambda c: max(spread[c]) / min(spread[c]))
    lo, hi = min(spread[worst]), max(spread[worst])
    # CPU seconds of the generating process per second of wall time, per batch set.
    busy = [x[c]["cpu_per_token"]["server_ms"] * x[c]["output_tokens"] / 1000 / x[c]["wall_s"]
            for x in raw["targets"].values() for c in levels if c in x and x[c].get("cpu_per_token")]
    L = [f"How far to trust these: the in-process engine alone, same batch, moved by up to "
         f"{(hi / lo - 1) * 100:.0f} % between rounds (c={worst}: {lo:.2f} to {hi:.2f} tok/s) on this shared VM, "
         "so one batch's difference between targets says little on its own; the per-round ratios and their intervals "
         "show how much the comparison moves."]
    if busy:
        L[0] += (f" CPU per token does not separate them either: every generating process used {min(busy):.2f}–"
                 f"{max(busy):.2f} CPU-seconds per second of wall time on these {nproc} "
                 "cores, busy whether its threads compute or wait for work (rayon spins before it sleeps), so CPU "
                 "per token tracks wall time. What the CPU does is in the profile below.")
    return L + [""]


def inference_interleaved(sec):
    """The c=1 run that interleaves single requests, target by target."""
    if not sec:
        return []
    r = sec["raw"]
    levels = [str(c) for c in r["config"]["concurrency"]]
    return [f"### Concurrency {', '.join(levels)}, interleaved batch by batch", "",
            f"The batches above are minutes apart, and this machine drifts over minutes. Here each round sends one "
            f"batch of {', '.join(str(n) for n in r['config']['requests_per_batch'])} request(s) with c in flight to "
            f"each target in turn (order rotated), {r['config']['rounds']} rounds, `max_tokens` "
            f"{r['config']['max_tokens']}, so drift falls on every target alike. Machine: {machine_line(sec)}. "
            "Command: `BENCH=inference-interleaved make bench`, which starts both servers and runs "
            f"`{sec['command']}`.", "",
            *inference_target_rows(r["targets"], levels), "", *inference_ratio_rows(r, levels), ""]


def inference_gap(results):
    """What the profile says about the ratio table's gaps, from the figures alone."""
    inf, prof = results.get("inference"), results.get("inference_profile")
    if not inf or not prof:
        return []
    p, t = prof["raw"], inf["raw"]["targets"]
    b = p.get("backhaul_inference")
    if not b or "backhaul_grpc" not in t or "backhaul_http" not in t:
        return []
    serving = b["groups_pct"].get("serving (HTTP/gRPC, protobuf, JSON, SSE)", 0)
    runtime = b["groups_pct"].get("async runtime (tokio)", 0)
    kernels = lambda n: p[n]["groups_pct"].get("model kernels (candle, quantized matmul, attention)", 0)
    spread = max(((t["backhaul_grpc"][c]["output_tokens_per_s"], t["backhaul_http"][c]["output_tokens_per_s"], c)
                  for c in t["backhaul_grpc"]), key=lambda x: abs(x[0] / x[1] - 1))
    L = [f"What the gaps are: Backhaul's serving layer (tonic, hyper, prost, serde, the relay) is {serving:.2f} % of "
         f"`backhaul-inference`'s CPU samples and the async runtime {runtime:.2f} %; the model kernels are "
         f"{kernels('backhaul_inference'):.1f} % of its samples"
         + (f" and {kernels('mistralrs_serve'):.1f} % of `mistralrs serve`'s" if "mistralrs_serve" in p else "")
         + ". Backhaul's gRPC and HTTP surfaces share one process and one engine, yet in the batched run they differ "
         f"by {abs(spread[0] / spread[1] - 1) * 100:.0f} % at c={spread[2]} (gRPC {spread[0]:.2f}, HTTP {spread[1]:.2f} "
         "tok/s), far more than a serving layer of that size could cost: gaps of that size are the machine's "
         "drift between batches rather than Backhaul's code."]
    il = results.get("inference_interleaved")
    # Cells whose whole 95 % interval misses the target, and the same
    # comparison interleaved, where that run has it.
    below, rechecked = [], []
    for key, bound, other in [("ratio_vs_inprocess", 0.97, "in-process"), ("ratio_vs_mistralrs_serve", 1.0, "`mistralrs serve`")]:
        for srf, per in inf["raw"][key].items():
            for c, v in per.items():
                ci = ratio_ci(v["rounds"])
                if ci and ci[1] < bound:
                    below.append(f"{SURFACES[srf].split(' (')[0]} vs {other} at c={c} ({v['ratio']:.3f}, interval "
                                 f"{ci[0]:.2f}–{ci[1]:.2f})")
                    again = ((il or {}).get("raw", {}).get(key, {}).get(srf) or {}).get(c)
                    if again:
                        ci2 = ratio_ci(again["rounds"])
                        rechecked.append(f"{again['ratio']:.3f}" + (f" (interval {ci2[0]:.2f}–{ci2[1]:.2f})" if ci2 else ""))
    cells = sum(len(per) for key in ("ratio_vs_inprocess", "ratio_vs_mistralrs_serve")
                for per in inf["raw"][key].values())
    if below:
        L[0] += (f" Of the {cells} cells, {len(below)} ha{'s' if len(below) == 1 else 've'} a 95 % interval wholly below "
                 f"its target: {'; '.join(below)}. Were every true ratio 1.00, {cells} independent intervals would put "
                 f"at least one wholly below 1 about {(1 - 0.975 ** cells) * 100:.0f} % of the time, and the profile leaves "
                 "no serving cost to explain it"
                 + (f"; interleaved batch by batch, the same comparison{'s are' if len(rechecked) > 1 else ' is'} "
                    f"{', '.join(rechecked)}." if rechecked else
                    "; a run interleaved batch by batch at that concurrency would settle it."))
    if il:
        fmt_r = lambda key: ", ".join(f"{SURFACES[s].split(' (')[0].removeprefix('Backhaul ')} {r:.3f} at c={c}"
                                      for s, v in il[key].items() for c, r in v.items())
        L[0] += (f" Interleaved batch by batch (above), Backhaul's surfaces are at {fmt_r('ratio_vs_inprocess')} "
                 f"of in-process and {fmt_r('ratio_vs_mistralrs_serve')} of `mistralrs serve`.")
    return L + [""]


def inference_profile(sec):
    """Where each server's CPU went during the inference run (perf, self time)."""
    if not sec:
        return []
    r = sec["raw"]
    names = [n for n in ("backhaul_inference", "mistralrs_serve") if n in r]
    label = {"backhaul_inference": "`backhaul-inference`", "mistralrs_serve": "`mistralrs serve`"}
    groups = list(dict.fromkeys(g for n in names for g in r[n]["groups_pct"]))
    counts = ", ".join(f"{label[n]} {r[n]['samples']} samples" for n in names)
    L = ["### Where the servers' CPU goes", "",
         f"`perf record -a -F 99` (every process, 99 samples a second per core) through the whole run above, warm-up "
         f"included; each server's samples by symbol (self time), grouped by `bench/perf_summary.py`; {counts} "
         "(`backhaul-inference` served two targets). "
         f"Machine: {machine_line(sec)}.", "",
         "| group | " + " | ".join(label[n] for n in names) + " |", "|---|" + "---|" * len(names)]
    for g in groups:
        L.append(f"| {g} | " + " | ".join(f"{r[n]['groups_pct'].get(g, 0):.2f} %" for n in names) + " |")
    L += ["", "Top symbols in `backhaul-inference`:", "", "| share | symbol |", "|---|---|"]
    for t in r["backhaul_inference"]["top_symbols"][:8]:
        L.append(f"| {t['pct']:.2f} % | `{t['symbol']}` |")
    L.append("")
    return L


def clean_function(k):
    """`(anonymous: const pump = /* @__PURE__ */ __name(async () => ) (where)` -> `(anonymous: pump) (where)`."""
    if not k.startswith("(anonymous: "):
        return k
    import re
    v = re.match(r"^\(anonymous: (?:const|let|var)\s+([\w$]+)", k)
    where = re.search(r"\s(\([^()]* bundle line \d+\))$", k)
    return f"(anonymous{': ' + v.group(1) if v else ''}) {where.group(1) if where else ''}".strip()


def routing_profile(sec):
    """The routing section's profile: where the runtime's CPU goes per request, by Worker module."""
    if not sec:
        return []
    r = sec["raw"]
    b, p = r["backhaul"], r.get("passthrough")
    per_req = lambda x: f"{x['busySamples'] / r['requests']:.2f}"
    L = ["### Where the Worker's CPU goes", "",
         f"Machine: {machine_line(sec)}.", "",
         f"`bench/worker_profile.mjs`: a V8 CPU profile of the runtime workerd over `wrangler dev`'s inspector "
         f"(Profiler.start/stop, {r['samplingIntervalUs']} µs interval) while {r['requests']} streamed requests went "
         "through each Worker one at a time. Each busy sample counts once; its share of the runtime's CPU time "
         "(/proc, same requests) gives ≈ ms. Built-ins (fetch, streams, timers) count for the Worker module that "
         "called them. Full tables: [worker-profile.md](worker-profile.md).", "",
         "| | Backhaul Worker | forward-only Worker |", "|---|---|---|",
         f"| runtime workerd CPU ms per request | {b['runtimeCpuMsPerRequest']} | {p['runtimeCpuMsPerRequest'] if p else '–'} |",
         f"| busy samples per request | {per_req(b)} | {per_req(p) if p else '–'} |",
         "", "Backhaul Worker by module:", "", "| module | share of busy samples | ≈ ms per request |", "|---|---|---|"]
    for m in b["byModule"]:
        if m["share"] >= 0.005:
            L.append(f"| {m['module']} | {m['share'] * 100:.1f} % | {fmt(m['msPerRequest'], 3)} |")
    L += ["", "Backhaul Worker, top functions by self time:", "", "| function | share | ≈ ms per request |", "|---|---|---|"]
    for f in b["topSelf"][:10]:
        L.append(f"| `{clean_function(f['function'])}` | {f['share'] * 100:.1f} % | {fmt(f['msPerRequest'], 3)} |")
    L += ["", "Command:", "", "```sh", "source scripts/node-env.sh && " + sec["command"], "```", ""]
    return L


def main():
    results = json.load(open(RESULTS)) if os.path.exists(RESULTS) else {}
    args = sys.argv[1:]
    if args[:1] == ["--before"]:
        # Issue 15's "before" figures: kept apart from the current sections,
        # their raw files together in docs/benchmarks/fleet-before.json.
        raws = {os.path.basename(p).removesuffix(".json"): json.load(open(p)) for p in args[1:]}
        with open(os.path.join(DOCS, "fleet-before.json"), "w") as f:
            json.dump(raws, f, indent=2)
            f.write("\n")
        results["issue15_before"] = {n.replace("-", "_"): section_from_raw(n, raw) for n, raw in raws.items()}
        args = []
    for path in args:
        name = os.path.basename(path).removesuffix(".json")
        raw = json.load(open(path))
        if name == "control-plane-1000-attempt":
            # Observations from a stopped attempt, kept apart from measured runs.
            results["control_plane_1000_attempt"] = raw
            continue
        results[name.replace("-", "_")] = section_from_raw(name, raw)
    gpu_measured = os.path.exists(os.path.join(DOCS, "gpu-bench.json"))
    results["gpu"] = {"measured": gpu_measured, "results": "gpu-bench.json" if gpu_measured else None,
                      "reason": None if gpu_measured else "no GPU device lent to the sessions that ran these benchmarks",
                      "commands": GPU_COMMANDS}
    results["summary"] = summary(results)
    os.makedirs(DOCS, exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    made = plots(results)
    with open(os.path.join(DOCS, "README.md"), "w") as f:
        f.write(readme(results, made) + "\n")
    print(f"wrote {RESULTS}, README.md, {', '.join(made) or 'no plots'}", file=sys.stderr)


if __name__ == "__main__":
    main()
