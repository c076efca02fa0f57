#!/usr/bin/env python3
"""Golden vectors for the ciphertext blob v1 and the encryption-context encoding.

An independent implementation of docs/ciphertext-format.md (Python + pyca/cryptography),
so the C# code is checked against the document, not against itself. Deterministic:
keys, IVs and version ids are fixed below. Run: python3 generate.py > ciphertext-blob-v1.json
"""
import json
import struct
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def encode_context(context: dict) -> bytes:
    entries = sorted((k.encode("utf-8"), v.encode("utf-8")) for k, v in context.items())
    out = struct.pack(">I", len(entries))
    for key, value in entries:
        out += struct.pack(">I", len(key)) + key + struct.pack(">I", len(value)) + value
    return out


def aad(version_id: bytes, tenant: str, context: dict) -> bytes:
    header = b"\x01" + version_id
    t = tenant.encode("utf-8")
    return header + struct.pack(">I", len(t)) + t + encode_context(context)


def blob(key: bytes, version_id: bytes, iv: bytes, tenant: str, context: dict, plaintext: bytes) -> bytes:
    sealed = AESGCM(key).encrypt(iv, plaintext, aad(version_id, tenant, context))
    return b"\x01" + version_id + iv + sealed


CASES = [
    ("empty context", "dev", {}, b"hello, kms"),
    ("one entry", "dev", {"table": "orders"}, b"\x00" * 32),
    ("sorted by UTF-8 bytes, not insertion order", "acme", {"b": "2", "a": "1", "aa": "0"}, b"record 42"),
    ("non-ASCII keys sort by UTF-8 bytes", "acme", {"\u00e9t\u00e9": "summer", "z": "last", "\U0001F511": "key"}, b"\xff\xfe"),
    ("empty value", "tenant-b", {"purpose": ""}, bytes(range(64))),
]

vectors = []
for i, (name, tenant, context, plaintext) in enumerate(CASES):
    key = bytes((i * 16 + j) % 256 for j in range(32))
    version_id = bytes(((0xA0 + i) ^ j) & 0xFF for j in range(16))
    iv = bytes((0xC0 + i + j) & 0xFF for j in range(12))
    vectors.append({
        "name": name,
        "key": key.hex(),
        "key_version_id": version_id.hex(),
        "iv": iv.hex(),
        "tenant": tenant,
        "encryption_context": context,
        "plaintext": plaintext.hex(),
        "encoded_context": encode_context(context).hex(),
        "aad": aad(version_id, tenant, context).hex(),
        "blob": blob(key, version_id, iv, tenant, context, plaintext).hex(),
    })

print(json.dumps({"format": "kms ciphertext blob v1", "generator": "tests/Kms.Core.Tests/vectors/generate.py", "vectors": vectors}, indent=2, ensure_ascii=False))
