#!/usr/bin/env python3
"""Tests of the GPU benchmark's Python (bench/gguf.py, bench/gpu_report.py).

    python3 -m unittest discover -s bench -p 'test_*.py'
"""

import json
import math
import os
import struct
import tempfile
import unittest

import gguf
import gpu_report


def tiny_template(path, tied=True):
    """A llama GGUF header like SmolLM2's, tiny: 2 layers, 64 wide, vocabulary 96."""
    S, U, F = gguf.STRING, gguf.UINT32, gguf.FLOAT32
    meta = {
        "general.architecture": (S, "llama"), "general.name": (S, "tiny"),
        "llama.block_count": (U, 2), "llama.embedding_length": (U, 64), "llama.feed_forward_length": (U, 128),
        "llama.attention.head_count": (U, 4), "llama.attention.head_count_kv": (U, 2),
        "llama.rope.dimension_count": (U, 16), "llama.attention.layer_norm_rms_epsilon": (F, 1e-5),
        "tokenizer.ggml.tokens": (gguf.ARRAY, (S, [f"t{i}" for i in range(96)])),
    }
    h, kv, ffn, vocab = 64, 32, 128, 96
    tensors = [{"name": "token_embd.weight", "dims": [h, vocab], "type": 8}]
    for i in range(2):
        for role, dims, t in (("attn_norm.weight", [h], 0), ("attn_q.weight", [h, h], 3), ("attn_k.weight", [h, kv], 3),
                              ("attn_v.weight", [h, kv], 3), ("attn_output.weight", [h, h], 3),
                              ("ffn_norm.weight", [h], 0), ("ffn_gate.weight", [h, ffn], 3),
                              ("ffn_up.weight", [h, ffn], 3), ("ffn_down.weight", [ffn, h], 3)):
            tensors.append({"name": f"blk.{i}.{role}", "dims": dims, "type": t})
    tensors.append({"name": "output_norm.weight", "dims": [h], "type": 0})
    if not tied:
        tensors.append({"name": "output.weight", "dims": [h, vocab], "type": 8})
    head, _ = gguf.pack_header(3, meta, tensors)
    with open(path, "wb") as f:
        f.write(head)


def write(path, data):
    with open(path, "w") as f:
        f.write(data if isinstance(data, str) else json.dumps(data))


def read(path):
    with open(path, "rb") as f:
        return f.read()


def q4_1_values(block):
    d, m = struct.unpack("<ee", block[:4])
    return [d * (b & 15) + m for b in block[4:]] + [d * (b >> 4) + m for b in block[4:]]


class Gguf(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.template = os.path.join(self.dir.name, "t.gguf")
        tiny_template(self.template)

    def tearDown(self):
        self.dir.cleanup()

    def test_synth_keeps_the_templates_metadata_tensors_and_layout(self):
        out = os.path.join(self.dir.name, "s.gguf")
        info = gguf.synth(self.template, out, "smollm2-135m", seed=1)
        _, meta_t, tensors_t, _ = gguf.read_header(self.template)
        _, meta_s, tensors_s, start = gguf.read_header(out)
        self.assertEqual(meta_s["tokenizer.ggml.tokens"], meta_t["tokenizer.ggml.tokens"])
        self.assertIn("random weights", meta_s["backhaul.synthetic"][1])
        self.assertEqual([(t["name"], t["dims"], t["type"]) for t in tensors_s],
                         [(t["name"], t["dims"], t["type"]) for t in tensors_t])
        # Every tensor's data is in the file, at aligned offsets.
        self.assertTrue(all(t["offset"] % 32 == 0 for t in tensors_s))
        last = tensors_s[-1]
        self.assertGreaterEqual(os.path.getsize(out), start + last["offset"] + gguf.tensor_bytes(last))
        self.assertEqual(info["tensor_bytes"], sum(gguf.tensor_bytes(t) for t in tensors_t))
        # Tied embeddings: the whole token embedding is read per token.
        self.assertTrue(info["tied_embeddings"])
        self.assertEqual(info["weight_bytes_per_token"], info["tensor_bytes"])

    def test_random_weights_are_finite_and_scaled_by_fan_in(self):
        out = os.path.join(self.dir.name, "s.gguf")
        gguf.synth(self.template, out, "smollm2-135m", seed=2)
        _, _, tensors, start = gguf.read_header(out)
        by = {t["name"]: t for t in tensors}
        with open(out, "rb") as f:
            q = by["blk.0.ffn_gate.weight"]
            f.seek(start + q["offset"])
            data = f.read(gguf.tensor_bytes(q))
            norm = by["blk.1.ffn_norm.weight"]
            f.seek(start + norm["offset"])
            ones = struct.unpack("<64f", f.read(256))
        values = [v for i in range(0, len(data), 20) for v in q4_1_values(data[i:i + 20])]
        a = math.sqrt(3 / 64)
        self.assertTrue(all(math.isfinite(v) and abs(v) <= a * 1.01 for v in values))
        std = math.sqrt(sum(v * v for v in values) / len(values))
        self.assertAlmostEqual(std, 1 / 8, delta=0.02)  # 1 / sqrt(fan_in 64)
        self.assertEqual(ones, (1.0,) * 64)

    def test_the_same_seed_writes_the_same_file(self):
        a, b = os.path.join(self.dir.name, "a.gguf"), os.path.join(self.dir.name, "b.gguf")
        gguf.synth(self.template, a, seed=3)
        gguf.synth(self.template, b, seed=3)
        self.assertEqual(read(a), read(b))

    def test_a_reshaped_model_has_the_shapes_layers_and_widths(self):
        gguf.SHAPES["test-untied"] = dict(layers=3, hidden=128, ffn=256, heads=8, kv_heads=2, tied=False)
        self.addCleanup(gguf.SHAPES.pop, "test-untied")
        out = os.path.join(self.dir.name, "r.gguf")
        info = gguf.synth(self.template, out, "test-untied")
        _, meta, tensors, _ = gguf.read_header(out)
        by = {t["name"]: t for t in tensors}
        self.assertEqual(meta["llama.block_count"][1], 3)
        self.assertEqual(meta["llama.rope.dimension_count"][1], 16)
        self.assertEqual(by["blk.2.attn_k.weight"]["dims"], [128, 32])
        self.assertEqual(by["blk.2.ffn_down.weight"]["dims"], [256, 128])
        self.assertEqual(by["output.weight"]["dims"], [128, 96])
        self.assertEqual(by["blk.0.attn_q.weight"]["type"], 3)
        # Untied: of the token embedding only one row is read per token.
        embd = gguf.tensor_bytes(by["token_embd.weight"])
        self.assertFalse(info["tied_embeddings"])
        self.assertEqual(info["weight_bytes_per_token"], info["tensor_bytes"] - embd + embd // 96)

    def test_the_8b_shape_is_llama_3_1_8b_with_this_vocabulary(self):
        _, meta, tensors, _ = gguf.read_header(self.template)
        meta, tensors = gguf.reshape(meta, tensors, "llama-8b")
        params = sum(math.prod(t["dims"]) for t in tensors)
        # Llama-3.1-8B has 8.03 B parameters with its 128,256-token vocabulary;
        # every vocabulary row is 4,096 wide in the embedding and the output.
        self.assertEqual(params + 2 * 4096 * (128256 - 96), 8030261248)

    def test_template_is_the_header_alone(self):
        out = os.path.join(self.dir.name, "full.gguf")
        gguf.synth(self.template, out, seed=4)
        again = os.path.join(self.dir.name, "again.gguf")
        size = gguf.template(out, again)
        _, _, _, start = gguf.read_header(out)
        self.assertEqual(size, start)
        self.assertEqual(read(again), read(out)[:start])


def bench_report(tps_c1, itl_mean_ms):
    level = lambda tps, itl: {"output_tokens_per_s": tps, "inter_token_ms": {"p50": itl, "p99": itl, "mean": itl, "samples": 9},
                              "ttft_ms": {"p50": 5.0, "p99": 9.0, "mean": 6.0, "samples": 4}, "requests": 4,
                              "output_tokens": 512}
    return {"targets": {"in_process": {"1": level(tps_c1, itl_mean_ms), "8": level(4 * tps_c1, 2 * itl_mean_ms)},
                        "backhaul_http": {"1": level(tps_c1 / 2, itl_mean_ms)}},
            "ratio_vs_inprocess": {"backhaul_http": {"1": {"ratio": 0.5, "rounds": [0.5]}}},
            "same_greedy_text": {"reference": "in_process", "same": {"in_process": "8/8", "backhaul_http": "8/8"}}}


class Report(unittest.TestCase):
    def test_datasheet_bandwidth_by_nvidia_smi_name(self):
        for name, tbps in (("NVIDIA H200", 4.8), ("NVIDIA H100 80GB HBM3", 3.35), ("NVIDIA H100 PCIe", 2.0),
                           ("NVIDIA H100 NVL", 3.9), ("NVIDIA A100-SXM4-80GB", 2.039), ("NVIDIA A100 80GB PCIe", 1.935),
                           ("NVIDIA A100-SXM4-40GB", 1.555), ("NVIDIA L4", 0.3), ("NVIDIA L40S", 0.864),
                           ("NVIDIA A10G", 0.6), ("NVIDIA GH200 480GB", 4.0), ("NVIDIA GeForce RTX 4090", 1.008),
                           ("Tesla T4", 0.32), ("Some Future GPU", None)):
            self.assertEqual(gpu_report.hbm_tbps(name), tbps, name)

    def test_decode_bandwidth_is_bytes_per_token_times_rate_over_hbm(self):
        info = {"weight_bytes_per_token": 4_800_000_000}
        bw = gpu_report.bandwidth(info, bench_report(100.0, 8.0), 4.8e12, 4.0e12)
        r = bw["in_process"]
        self.assertEqual(r["output_tokens_per_s"], 100.0)
        self.assertEqual(r["output_read_gb_per_s"], 480.0)
        self.assertEqual(r["output_fraction_of_hbm"], 0.1)
        self.assertEqual(r["output_fraction_of_measured_copy"], 0.12)
        self.assertEqual(r["decode_tokens_per_s"], 125.0)  # 1 / 8 ms
        self.assertEqual(r["decode_fraction_of_hbm"], 0.125)
        self.assertEqual(bw["backhaul_http"]["output_fraction_of_hbm"], 0.05)
        # Without a known bandwidth (a CPU run): rates only.
        self.assertNotIn("output_fraction_of_hbm", gpu_report.bandwidth(info, bench_report(100.0, 8.0), None)["in_process"])

    def test_a_run_directory_becomes_json_and_markdown(self):
        with tempfile.TemporaryDirectory() as run, tempfile.TemporaryDirectory() as out:
            write(os.path.join(run, "run.json"), {"command": "scripts/gpu-bench.sh run", "device": "cuda", "concurrency": [1, 8],
                                                  "max_tokens": 128, "rounds": 2, "min_requests": 4, "max_seqs": 8})
            write(os.path.join(run, "gpu.csv"), "name, memory.total [MiB], driver_version\nNVIDIA H200, 143771 MiB, 580.159.03\n")
            for i, (shape, bench) in enumerate((("smollm2-135m", bench_report(300.0, 3.0)), ("llama-8b", None))):
                d = os.path.join(run, "models", shape)
                os.makedirs(d)
                write(os.path.join(d, "order.txt"), str(i))
                write(os.path.join(d, "info.json"), {"name": shape, "parameters": 1e8, "tensor_bytes": 96_000_000,
                                                     "weight_bytes_per_token": 96_000_000,
                                                     "tensor_types": {"Q4_1": 210}, "synthetic": "random"})
                if bench:
                    write(os.path.join(d, "bench.json"), bench)
                else:
                    write(os.path.join(d, "error.txt"), "skipped: 100 s left")
            gpu_report.write(run, out, "gpu-bench")
            with open(os.path.join(out, "gpu-bench.json")) as f:
                doc = json.load(f)
            with open(os.path.join(out, "gpu-bench.md")) as f:
                md = f.read()
        self.assertTrue(doc["measured"])
        self.assertEqual(doc["hbm_tb_per_s"], 4.8)
        self.assertEqual([m["shape"] for m in doc["models"]], ["smollm2-135m", "llama-8b"])
        self.assertEqual(doc["models"][0]["decode_bandwidth_c1"]["in_process"]["output_fraction_of_hbm"], 0.006)
        self.assertIn("NVIDIA H200", md)
        self.assertIn("| mistral.rs in-process | 8 |", md)
        self.assertIn("**Not measured**: skipped: 100 s left", md)
        self.assertIn("0.60%", md)


if __name__ == "__main__":
    unittest.main()
