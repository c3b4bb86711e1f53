#!/usr/bin/env python3
"""Writes the cross-language test vectors of docs/publication.md, made with
implementations independent of both the operator (Rust) and the Worker
(WebCrypto in workerd); both sides' tests check these exact bytes:

- docs/schemas/publication-signature-vectors.json: admin-request signatures
  ("Publisher keys and signatures") made with Python's `cryptography`
  (OpenSSL). Ed25519 is deterministic, so rerunning rewrites the same file.
- docs/schemas/lease-digest-vectors.json: lease digests ("Leases": SHA-256 of
  the sorted "{namespace}/{name}/{region} {sequence}\n" lines) made with
  Python's hashlib.

    python3 -m pip install cryptography && python3 scripts/signature-vectors.py
"""
import base64
import hashlib
import json
import pathlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SCHEMAS = pathlib.Path(__file__).resolve().parent.parent / "docs/schemas"

# RFC 8032, section 7.1, TEST 1: checks the primitive itself on each side.
RFC8032 = {
    "secretKey": "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
    "publicKey": "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
    "message": "",
    "signature": "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
}


def key(seed_hex):
    k = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed_hex))
    pub = k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return k, base64.b64encode(pub).decode(), pem.decode()


def payload(key_id, timestamp, method, path, body):
    return f"backhaul-v2.{key_id}.{timestamp}.{method.upper()}.{path}.".encode() + body.encode()


def main():
    k, pub, _ = key(RFC8032["secretKey"])
    assert k.sign(b"").hex() == RFC8032["signature"] and base64.b64decode(pub).hex() == RFC8032["publicKey"]

    seeds = {
        "cluster-us-east": "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "cluster-eu-west": "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
    }
    keys = {}
    for key_id, seed in seeds.items():
        _, pub, pem = key(seed)
        keys[key_id] = {"seed": seed, "publicKey": pub, "pkcs8Pem": pem}

    route_path = "/admin/v1/routes/ml/smollm2/us-east"
    cases = [
        ("cluster-us-east", 1796112000, "PUT", route_path, '{"namespace":"ml","name":"smollm2","region":"us-east","sequence":7}'),
        ("cluster-us-east", 1796112000, "DELETE", route_path, '{"sequence":8}'),
        ("cluster-us-east", 1796112001, "GET", route_path, ""),
        ("cluster-eu-west", 1796112002, "GET", "/admin/v1/routes", ""),
        # Non-ASCII body bytes are signed as UTF-8, exactly as sent.
        ("cluster-eu-west", 1796112003, "PUT", "/admin/v1/routes/ml/smollm2/eu-west", '{"model":"caf\u00e9"}'),
    ]
    out = []
    for key_id, ts, method, path, body in cases:
        k = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seeds[key_id]))
        p = payload(key_id, ts, method, path, body)
        out.append({
            "keyId": key_id,
            "timestamp": str(ts),
            "method": method,
            "path": path,
            "body": body,
            "signedBytes": p.decode(),
            "signature": "ed25519=" + base64.b64encode(k.sign(p)).decode(),
        })
    doc = {
        "description": "Admin request signatures of docs/publication.md, made by scripts/signature-vectors.py (Python cryptography). Test keys only.",
        "rfc8032Test1": RFC8032,
        "keys": keys,
        "cases": out,
    }
    (SCHEMAS / "publication-signature-vectors.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    lease_digest_vectors()


def lease_digest(held):
    """held: (route key, sequence) pairs. Bytewise sort of the UTF-8 lines, then SHA-256."""
    lines = sorted(f"{key} {sequence}\n".encode() for key, sequence in held)
    return hashlib.sha256(b"".join(lines)).hexdigest()


def lease_digest_vectors():
    cases = [
        ("the empty set: SHA-256 of the empty string", []),
        ("one route", [("ml/smollm2/us-east", 1796112000123)]),
        # Given out of order. Bytewise: "ml/llama-70b/..." < "ml/llama/..." ("-" 0x2d < "/" 0x2f), and
        # "ml/llama/us-east " < "ml/llama/us-east-2 " (" " 0x20 sorts below every key character).
        ("sorted bytewise, whatever order they are held in", [
            ("search/ranker/us-east", 7),
            ("ml/llama/us-east-2", 3),
            ("ml/llama-70b/us-east", 1796112000200),
            ("ml/llama/us-east", 1796112000100),
            ("ml/llama/eu-west", 2),
        ]),
        # The same keys with one sequence changed give another digest.
        ("one sequence changed", [
            ("search/ranker/us-east", 8),
            ("ml/llama/us-east-2", 3),
            ("ml/llama-70b/us-east", 1796112000200),
            ("ml/llama/us-east", 1796112000100),
            ("ml/llama/eu-west", 2),
        ]),
        ("the largest sequence", [("a/b/c", 2**53 - 1)]),
    ]
    out = []
    for description, held in cases:
        lines = sorted(f"{key} {sequence}\n" for key, sequence in held)
        out.append({
            "description": description,
            "routes": [{"key": key, "sequence": sequence} for key, sequence in held],
            "lines": "".join(lines),
            "count": len(held),
            "digest": lease_digest(held),
        })
    assert out[0]["digest"] == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    doc = {
        "description": "Lease digests of docs/publication.md (\"Leases\"), made by scripts/signature-vectors.py (Python hashlib): "
        "lower-case hex SHA-256 of the lines \"{namespace}/{name}/{region} {sequence}\\n\", sorted bytewise.",
        "cases": out,
    }
    (SCHEMAS / "lease-digest-vectors.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
