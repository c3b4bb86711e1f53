#!/usr/bin/env python3
"""GGUF files for the GPU benchmark (scripts/gpu-bench.sh), without numpy.

    python3 bench/gguf.py info FILE                   # JSON: parameters, bytes, bytes read per decoded token
    python3 bench/gguf.py template SRC DST            # SRC's header alone (metadata, tokenizer, tensor list)
    python3 bench/gguf.py synth TEMPLATE DST [--shape NAME] [--seed N]

The GPU machine this workplace lends reaches no network and takes at most
64 MiB of files with each call, so no real weights can reach it (SmolLM2's
Q4_1 file alone is 94 MiB). `synth` writes a GGUF that mistral.rs loads like
the real one: the template's metadata and tokenizer (SmolLM2's), the same
tensor names, types and (for `--shape smollm2-135m`) shapes, and weights
drawn at random from a fixed seed. A decode step reads exactly as many bytes
and does the same arithmetic as with trained weights, so speeds measured on
it hold for the real model; the text it generates is noise, and it stops
early only if it draws the end-of-text token. Other shapes keep the
template's vocabulary and per-tensor types and take the layer count and
widths of a known model (SHAPES).

Random values: every quantized block gets the scale that spreads its values
uniformly over +-sqrt(3/fan_in) (standard deviation 1/sqrt(fan_in), so
activations stay in range through the layers); norms are 1.0.
"""

import json
import math
import random
import struct
import sys

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# ggml type id -> (name, elements per block, bytes per block)
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 30: ("BF16", 1, 2),
}

# Metadata value types: id -> struct format of a scalar (8: string, 9: array).
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
           10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY, UINT32, FLOAT32 = 8, 9, 4, 6

# Llama-family shapes (`llama` architecture in GGUF). `tied`: the output
# projection is the token embedding. The vocabulary is the template's.
SHAPES = {
    # The template's own (SmolLM2-135M): nothing changes.
    "smollm2-135m": None,
    # Llama-3.2-1B's body.
    "llama-1b": dict(layers=16, hidden=2048, ffn=8192, heads=32, kv_heads=8, tied=True),
    # Llama-3.2-3B's body.
    "llama-3b": dict(layers=28, hidden=3072, ffn=8192, heads=24, kv_heads=8, tied=True),
    # Llama-3.1-8B's body (untied output projection).
    "llama-8b": dict(layers=32, hidden=4096, ffn=14336, heads=32, kv_heads=8, tied=False),
}


class Reader:
    def __init__(self, f):
        self.f = f

    def read(self, n):
        b = self.f.read(n)
        if len(b) != n:
            raise ValueError("truncated GGUF file")
        return b

    def scalar(self, fmt):
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self):
        return self.read(self.scalar("<Q")).decode("utf-8")

    def value(self, vtype):
        if vtype in SCALARS:
            return self.scalar(SCALARS[vtype])
        if vtype == STRING:
            return self.string()
        if vtype == ARRAY:
            itype, n = self.scalar("<I"), self.scalar("<Q")
            return (itype, [self.value(itype) for _ in range(n)])
        raise ValueError(f"unknown GGUF value type {vtype}")


def read_header(path):
    """(version, metadata {key: (type, value)}, tensors [{name, dims, type, offset}], data_start)."""
    with open(path, "rb") as f:
        r = Reader(f)
        if r.read(4) != GGUF_MAGIC:
            raise ValueError(f"{path}: not a GGUF file")
        version = r.scalar("<I")
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported")
        n_tensors, n_kv = r.scalar("<Q"), r.scalar("<Q")
        meta = {}
        for _ in range(n_kv):
            key = r.string()
            vtype = r.scalar("<I")
            meta[key] = (vtype, r.value(vtype))
        tensors = []
        for _ in range(n_tensors):
            name = r.string()
            dims = [r.scalar("<Q") for _ in range(r.scalar("<I"))]
            ttype, offset = r.scalar("<I"), r.scalar("<Q")
            tensors.append({"name": name, "dims": dims, "type": ttype, "offset": offset})
        align = alignment(meta)
        data_start = -(-f.tell() // align) * align
    return version, meta, tensors, data_start


def alignment(meta):
    return meta.get("general.alignment", (UINT32, DEFAULT_ALIGNMENT))[1]


def tensor_bytes(t):
    name, block, size = GGML_TYPES[t["type"]]
    n = math.prod(t["dims"])
    if n % block:
        raise ValueError(f"{t['name']}: {n} elements is not a whole number of {name} blocks")
    return n // block * size


def info(path):
    """What the benchmark needs to know of a model file: its parameters,
    tensor bytes, and the bytes one decode step reads (every weight once;
    of the token embedding only a row, unless it doubles as the output
    projection: tied)."""
    _, meta, tensors, _ = read_header(path)
    by_name = {t["name"]: t for t in tensors}
    total = sum(tensor_bytes(t) for t in tensors)
    per_token = total
    embd = by_name.get("token_embd.weight")
    tied = "output.weight" not in by_name
    if embd is not None and not tied:
        per_token -= tensor_bytes(embd) - tensor_bytes(embd) // embd["dims"][1]
    types = {}
    for t in tensors:
        name = GGML_TYPES[t["type"]][0]
        types[name] = types.get(name, 0) + 1
    arch = meta.get("general.architecture", (STRING, "?"))[1]
    return {
        "name": meta.get("general.name", (STRING, None))[1],
        "architecture": arch,
        "layers": meta.get(f"{arch}.block_count", (UINT32, None))[1],
        "hidden": meta.get(f"{arch}.embedding_length", (UINT32, None))[1],
        "parameters": sum(math.prod(t["dims"]) for t in tensors),
        "tensor_bytes": total,
        "tied_embeddings": tied,
        "weight_bytes_per_token": per_token,
        "tensor_types": types,
        "synthetic": meta.get("backhaul.synthetic", (STRING, None))[1],
    }


# --- writing ---------------------------------------------------------------

def pack_string(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def pack_value(vtype, value):
    if vtype in SCALARS:
        return struct.pack(SCALARS[vtype], value)
    if vtype == STRING:
        return pack_string(value)
    if vtype == ARRAY:
        itype, items = value
        return struct.pack("<IQ", itype, len(items)) + b"".join(pack_value(itype, v) for v in items)
    raise ValueError(f"unknown GGUF value type {vtype}")


def pack_header(version, meta, tensors):
    """The header bytes up to the tensor data, tensor offsets laid out in
    order at the alignment; returns (bytes, tensors with offsets)."""
    align = alignment(meta)
    out = [GGUF_MAGIC, struct.pack("<IQQ", version, len(tensors), len(meta))]
    for key, (vtype, value) in meta.items():
        out += [pack_string(key), struct.pack("<I", vtype), pack_value(vtype, value)]
    laid, offset = [], 0
    for t in tensors:
        laid.append({**t, "offset": offset})
        offset += -(-tensor_bytes(t) // align) * align
    for t in laid:
        out += [pack_string(t["name"]), struct.pack("<I", len(t["dims"])),
                struct.pack(f"<{len(t['dims'])}Q", *t["dims"]), struct.pack("<IQ", t["type"], t["offset"])]
    head = b"".join(out)
    return head + b"\0" * (-len(head) % align), laid


def template(src, dst):
    """SRC's header with no tensor data: what `synth` needs of a model."""
    version, meta, tensors, _ = read_header(src)
    head, _ = pack_header(version, meta, tensors)
    with open(dst, "wb") as f:
        f.write(head)
    return len(head)


def reshape(meta, tensors, shape):
    """The metadata and tensor list of SHAPES[shape] with the template's
    vocabulary and per-role tensor types."""
    s = SHAPES[shape]
    if s is None:
        return meta, tensors
    arch = meta["general.architecture"][1]
    if arch != "llama":
        raise ValueError(f"reshaping needs a llama template, not {arch}")
    role_type = {}
    for t in tensors:
        role = t["name"].split(".", 2)[2] if t["name"].startswith("blk.") else t["name"]
        role_type.setdefault(role, t["type"])
    by_name = {t["name"]: t for t in tensors}
    vocab = by_name["token_embd.weight"]["dims"][1]
    h, ffn, head_dim = s["hidden"], s["ffn"], s["hidden"] // s["heads"]
    kv = s["kv_heads"] * head_dim
    meta = dict(meta)
    meta.update({
        "general.name": (STRING, f"synthetic {shape} (random weights, {meta['general.name'][1]} vocabulary)"),
        "general.size_label": (STRING, shape.split("-")[-1].upper()),
        "llama.block_count": (UINT32, s["layers"]),
        "llama.embedding_length": (UINT32, h),
        "llama.feed_forward_length": (UINT32, ffn),
        "llama.attention.head_count": (UINT32, s["heads"]),
        "llama.attention.head_count_kv": (UINT32, s["kv_heads"]),
        "llama.rope.dimension_count": (UINT32, head_dim),
    })
    dims = {"attn_norm.weight": [h], "ffn_norm.weight": [h], "attn_q.weight": [h, h],
            "attn_k.weight": [h, kv], "attn_v.weight": [h, kv], "attn_output.weight": [h, h],
            "ffn_gate.weight": [h, ffn], "ffn_up.weight": [h, ffn], "ffn_down.weight": [ffn, h]}
    out = [{"name": "token_embd.weight", "dims": [h, vocab], "type": role_type["token_embd.weight"]}]
    for i in range(s["layers"]):
        for role, d in dims.items():
            out.append({"name": f"blk.{i}.{role}", "dims": d, "type": role_type[role]})
    out.append({"name": "output_norm.weight", "dims": [h], "type": role_type["output_norm.weight"]})
    if not s["tied"]:
        out.append({"name": "output.weight", "dims": [h, vocab],
                    "type": role_type.get("output.weight", role_type["token_embd.weight"])})
    return meta, out


def f16(x):
    return struct.pack("<e", x)


POOL_BLOCKS = (1 << 18) + 7  # not a multiple of any row's blocks: rows differ


def pool(ttype, fan_in, rng, is_norm):
    """Random bytes for a tensor of this type and fan-in, POOL_BLOCKS blocks."""
    name, block, size = GGML_TYPES[ttype]
    a = math.sqrt(3.0 / fan_in)  # uniform over +-a: standard deviation 1/sqrt(fan_in)
    n = POOL_BLOCKS
    if name == "F32":
        return struct.pack("<f", 1.0) * n if is_norm else struct.pack(f"<{n}f", *(rng.uniform(-a, a) for _ in range(n)))
    if name == "F16":
        return f16(1.0) * n if is_norm else b"".join(f16(rng.uniform(-a, a)) for _ in range(n))
    if name == "BF16":
        one = struct.pack("<f", 1.0)[2:]
        return one * n if is_norm else b"".join(struct.pack("<f", rng.uniform(-a, a))[2:] for _ in range(n))
    out = bytearray(rng.randbytes(n * size))

    def put(offset, const):
        for i, byte in enumerate(const):
            out[offset + i::size] = bytes([byte]) * n

    if name == "Q4_0":  # d, 16 bytes of 4-bit q; value = d * (q - 8)
        put(0, f16(2 * a / 15))
    elif name == "Q4_1":  # d, m, 16 bytes of 4-bit q; value = d * q + m
        put(0, f16(2 * a / 15) + f16(-a))
    elif name == "Q8_0":  # d, 32 int8 q; value = d * q
        put(0, f16(a / 127))
    elif name == "Q5_0":  # d, 4 bytes high bits, 16 bytes low nibbles; value = d * (q - 16)
        put(0, f16(2 * a / 31))
    elif name == "Q5_1":  # d, m, high bits, low nibbles; value = d * q + m
        put(0, f16(2 * a / 31) + f16(-a))
    elif name == "Q6_K":  # ql[128], qh[64], scales[16] (int8), d; value = d * scale * (q - 32)
        put(192, bytes([8]) * 16)
        put(208, f16(a / (8 * 32)))
    else:
        raise ValueError(f"no random fill for {name} tensors")
    return bytes(out)


def synth(template_path, dst, shape="smollm2-135m", seed=0):
    """Writes DST: the template's model (or SHAPES[shape]) with random weights."""
    version, meta, tensors, _ = read_header(template_path)
    meta, tensors = reshape(meta, tensors, shape)
    meta = dict(meta)
    meta["backhaul.synthetic"] = (STRING, f"bench/gguf.py synth --shape {shape} --seed {seed}: random weights")
    head, laid = pack_header(version, meta, tensors)
    align = alignment(meta)
    rng = random.Random(seed)
    pools = {}
    with open(dst, "wb") as f:
        f.write(head)
        for t in laid:
            is_norm = t["name"].endswith("norm.weight")
            key = (t["type"], t["dims"][0], is_norm)
            if key not in pools:
                pools[key] = pool(t["type"], t["dims"][0], rng, is_norm)
            p = pools[key]
            n = tensor_bytes(t)
            # Start each tensor at its own place in the pool, on a block boundary.
            size = GGML_TYPES[t["type"]][2]
            pos = rng.randrange(POOL_BLOCKS) * size
            while n > 0:
                chunk = p[pos:pos + n]
                f.write(chunk)
                n -= len(chunk)
                pos = 0
            f.write(b"\0" * (-tensor_bytes(t) % align))
    return info(dst)


def main(argv):
    if len(argv) >= 2 and argv[0] == "info":
        print(json.dumps(info(argv[1]), indent=2))
    elif len(argv) == 3 and argv[0] == "template":
        print(f"{argv[2]}: {template(argv[1], argv[2])} bytes", file=sys.stderr)
    elif len(argv) >= 3 and argv[0] == "synth":
        shape, seed = "smollm2-135m", 0
        rest = argv[3:]
        while rest:
            flag, value, rest = rest[0], rest[1], rest[2:]
            if flag == "--shape" and value in SHAPES:
                shape = value
            elif flag == "--seed":
                seed = int(value)
            else:
                sys.exit(f"synth: bad option {flag} {value} (shapes: {', '.join(SHAPES)})")
        print(json.dumps(synth(argv[1], argv[2], shape, seed), indent=2))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
