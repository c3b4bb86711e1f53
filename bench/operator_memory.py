"""Where backhaul-operator's memory goes at N ModelDeployments (default 1,000).

Sets up N settled objects as the control-plane benchmark does (three regions
each, all Published to a local receiver), then starts the operator afresh
over them once per variant and reads its VmRSS/VmHWM once it has reconciled
every object and settled:

- `default`: as shipped;
- `glibc-1-arena`: MALLOC_ARENA_MAX=1, to tell live heap from what the
  allocator keeps in per-thread arenas;
- `heaptrack`: under heaptrack (LD_PRELOAD), for the heap itself: peak
  heap, and the call sites holding the most at the peak.

Usage (the local control plane up, KUBECONFIG set, as `make bench` does):

    python3 bench/operator_memory.py [N]

MEMORY_VARIANTS=default,heaptrack (say) runs only those.

Prints JSON; heaptrack's full report is left beside the bench logs.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import control_plane as cp  # noqa: E402

SETTLE_S = 20


def heaptrack_summary(path):
    """Peak heap and the top call sites at the peak, from heaptrack_print."""
    text = subprocess.run(["heaptrack_print", "--print-peaks=1", "--print-allocators=0", "--print-temporary=0",
                           "--print-leaks=0", "--peak-limit=12", "--sub-peak-limit=0", path],
                          capture_output=True, text=True).stdout
    report = path + ".txt"
    with open(report, "w") as f:
        f.write(text)
    summary = {"report": report}
    m = re.search(r"peak heap memory consumption: ([\d.]+\w+)", text)
    summary["peak_heap"] = m.group(1) if m else None
    m = re.search(r"peak RSS \(including heaptrack overhead\): ([\d.]+\w+)", text)
    summary["peak_rss_with_heaptrack"] = m.group(1) if m else None
    sites = []
    block = text.split("MOST MEMORY CONSUMING ALLOCATION CALLS", 1)[-1].split("\n\n", 1)[-1]
    for chunk in block.split("\n\n")[:12]:
        lines = [line.strip() for line in chunk.strip().splitlines()]
        if not lines or "peak memory consumed" not in lines[0]:
            continue
        # The first frames outside allocators, serde and std name the owner.
        frames = [line for line in lines[1:] if line.startswith(("at ", "in "))][:14]
        sites.append({"peak": lines[0].split(" peak")[0], "frames": frames})
    summary["top_sites"] = sites
    return summary


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    logs = os.path.join(cp.CACHE, "bench", "logs")
    os.makedirs(logs, exist_ok=True)
    namespace = "bench-mem"
    cp.install_crd()
    cp.delete_namespace(namespace, 600)
    cp.kubectl("create", "namespace", namespace)
    cp.wait("default ServiceAccount", lambda: cp.kubectl("get", "serviceaccount", "default", "-n", namespace,
                                                        "--ignore-not-found", "-o", "name").strip(), 60, 0.5)
    cp.extra_nodes("apply")
    receiver = cp.Receiver()
    out = {"objects": count, "operator_binary": cp.OPERATOR, "variants": {}}
    log_path = os.path.join(logs, "operator-memory.log")
    operator = cp.Operator(namespace, receiver.url, log_path)
    try:
        items = [cp.model_deployment(namespace, f"m{i}", cp.TTL_S) for i in range(count)]
        cp.kubectl("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
        started = time.monotonic()
        cp.wait("all Published", lambda: cp.published_count(namespace)[0] == count, 1800, 2)
        out["first_run"] = {"apply_to_published_s": round(time.monotonic() - started, 1),
                            "memory_mib": operator.memory_mib()}
        cp.log(f"memory: {count} Published; first run {out['first_run']}")
        operator.stop()
        variants = [("default", {}, ()), ("glibc-1-arena", {"MALLOC_ARENA_MAX": "1"}, ())]
        if shutil.which("heaptrack"):
            variants.append(("heaptrack", {}, ("heaptrack", "-o", os.path.join(logs, "operator-heaptrack"))))
        wanted = os.environ.get("MEMORY_VARIANTS")
        if wanted:
            variants = [v for v in variants if v[0] in wanted.split(",")]
        for name, env, wrapper in variants:
            t0 = time.monotonic()
            operator = cp.Operator(namespace, receiver.url, log_path, env, wrapper)
            cp.wait("every object reconciled", lambda: cp.counter(
                operator.metrics(), "backhaul_operator_reconciles_total") >= count, 900, 0.5)
            resync_s = time.monotonic() - t0
            time.sleep(SETTLE_S)
            result = {"seconds_to_reconcile_all": round(resync_s, 1), "memory_mib": operator.memory_mib()}
            # heaptrack writes its data after the operator exits.
            operator.stop(timeout=120)
            if name == "heaptrack":
                files = sorted((f for f in os.listdir(logs) if f.startswith("operator-heaptrack")),
                               key=lambda f: os.path.getmtime(os.path.join(logs, f)))
                result["heaptrack"] = heaptrack_summary(os.path.join(logs, files[-1]))
            out["variants"][name] = result
            cp.log(f"memory: {name}: {result.get('memory_mib')}")
    finally:
        operator.stop()
        # Without an operator the finalizers stay: release them, then delete.
        items = json.loads(cp.kubectl("get", "modeldeployments.backhaul.dev", "-n", namespace, "-o", "json"))
        for item in items["items"]:
            item["metadata"]["finalizers"] = []
        cp.kubectl("replace", "-f", "-", input=json.dumps(items), check=False)
        cp.kubectl("delete", "namespace", namespace, "--wait=false")
        cp.extra_nodes("delete")
        receiver.stop()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
