#!/usr/bin/env python3
"""Writes docs/schemas/publication-signature-vectors.json: admin-request
signatures (docs/publication.md, "Publisher keys and signatures") made with
Python's `cryptography` (OpenSSL), an implementation independent of both
the operator's signer (ed25519-dalek) and the Worker's verifier (WebCrypto
in workerd). Both sides' tests check these exact bytes. Ed25519 is
deterministic, so rerunning this rewrites the same file.

    python3 -m pip install cryptography && python3 scripts/signature-vectors.py
"""
import base64
import json
import pathlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

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
    target = pathlib.Path(__file__).resolve().parent.parent / "docs/schemas/publication-signature-vectors.json"
    target.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
