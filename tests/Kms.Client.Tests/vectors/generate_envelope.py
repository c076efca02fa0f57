#!/usr/bin/env python3
"""Golden vectors for the envelope message v1, suite 0x0001 (docs/envelope-format.md).

An independent implementation of the document (Python + pyca/cryptography), so the C#
envelope code is checked against the specification, not against itself. Deterministic:
data keys and message ids are derived from fixed labels below; the wrapped data keys are
stand-in bytes (the tests map them back to the data key without a KMS).

Run once, review, commit: python3 generate_envelope.py > envelope-v1.json
The test run only reads the file; it never regenerates it.
"""
import hashlib
import json
import struct
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives.hmac import HMAC

SUITE = 0x0001
FINAL_MARKER = 0xFFFFFFFF


def fixed(label: str, n: int) -> bytes:
    return hashlib.shake_256(label.encode()).digest(n)


def encode_context(context, unsorted=False) -> bytes:
    # A list of pairs (for negative vectors: duplicates, or kept unsorted) or a dict.
    pairs = context if isinstance(context, list) else list(context.items())
    entries = [(k.encode("utf-8"), v.encode("utf-8")) for k, v in pairs]
    if not unsorted:
        entries = sorted(entries)
    out = struct.pack(">I", len(entries))
    for key, value in entries:
        out += struct.pack(">I", len(key)) + key + struct.pack(">I", len(value)) + value
    return out


def derive(data_key: bytes, message_id: bytes):
    h = HMAC(message_id, hashes.SHA512())  # HKDF-Extract(salt = message id, IKM = data key)
    h.update(data_key)
    prk = h.finalize()
    okm = HKDFExpand(hashes.SHA512(), 64, b"KMSE v1 key and commitment" + struct.pack(">H", SUITE)).derive(prk)
    return okm[:32], okm[32:]


def header_body(message_id, context, wrapped, frame_length, commitment, unsorted=False) -> bytes:
    out = b"KMSE" + b"\x01" + struct.pack(">H", SUITE) + message_id + encode_context(context, unsorted)
    out += struct.pack(">B", len(wrapped))
    for name, blob in wrapped:
        n = name.encode("utf-8")
        out += struct.pack(">H", len(n)) + n + struct.pack(">H", len(blob)) + blob
    return out + struct.pack(">I", frame_length) + commitment


def iv(seq: int) -> bytes:
    return b"\x00" * 8 + struct.pack(">I", seq)


def frame_aad(message_id: bytes, kind: int, seq: int, length: int) -> bytes:
    return message_id + struct.pack(">BII", kind, seq, length)


def encrypt(data_key, message_id, context, wrapped, frame_length, plaintext, commitment_key=None, associated_data=b"",
            unsorted=False, final_full=False) -> bytes:
    key, commitment = derive(data_key, message_id)
    if commitment_key is not None:  # negative vector: commitment of another data key
        commitment = derive(commitment_key, message_id)[1]
    body = header_body(message_id, context, wrapped, frame_length, commitment, unsorted)
    gcm = AESGCM(key)
    out = body + gcm.encrypt(iv(0), b"", body + associated_data)  # empty plaintext: the output is the tag
    seq = 1
    offset = 0
    # final_full (negative vector): a last full frame sent as the final frame, which the spec forbids.
    while len(plaintext) - offset >= frame_length and not (final_full and len(plaintext) - offset == frame_length):
        chunk = plaintext[offset:offset + frame_length]
        out += struct.pack(">I", seq) + gcm.encrypt(iv(seq), chunk, frame_aad(message_id, 1, seq, frame_length))
        seq += 1
        offset += frame_length
    rest = plaintext[offset:]
    out += struct.pack(">III", FINAL_MARKER, seq, len(rest))
    out += gcm.encrypt(iv(seq), rest, frame_aad(message_id, 2, seq, len(rest)))
    return out


def case(description, frame_length, plaintext, context=None, keys=1, associated_data=b"", **bad):
    label = description
    data_key = fixed("dk:" + label, 32)
    message_id = fixed("id:" + label, 32)
    wrapped = [(f"tenants/vectors/keys/site-{i + 1}", fixed(f"wrapped:{i}:" + label, 77)) for i in range(keys)]
    context = context or {}
    message = encrypt(data_key, message_id, context, wrapped, frame_length, plaintext, bad.get("commitment_key"), associated_data,
                      bad.get("unsorted", False), bad.get("final_full", False))
    if "truncate" in bad:
        message = message[: bad["truncate"](message)]
    return {
        "description": description,
        "valid": not bad,
        "error": "" if not bad else ("malformed" if ("unsorted" in bad or "duplicate" in bad) else "opaque"),
        "data_key": data_key.hex(),
        "message_id": message_id.hex(),
        "frame_length": frame_length,
        "context": context if isinstance(context, dict) else {},
        "wrapped_keys": [{"key_name": n, "wrapped": b.hex()} for n, b in wrapped],
        "associated_data": associated_data.hex(),
        "plaintext": plaintext.hex(),
        "message": message.hex(),
    }


def pattern(n: int) -> bytes:
    return bytes((i * 7 + 3) & 0xFF for i in range(n))


VECTORS = [
    case("empty plaintext", 64, b""),
    case("one byte", 64, b"\x2a"),
    case("frame length minus one", 64, pattern(63)),
    case("exactly one frame: a full regular frame and an empty final frame", 64, pattern(64)),
    case("frame length plus one", 64, pattern(65)),
    case("many frames", 64, pattern(64 * 5 + 17)),
    case("encryption context sorted by UTF-8 bytes", 128, b"record 42",
         {"b": "2", "a": "1", "aa": "", "\u00e9t\u00e9": "summer", "\U0001F511": "key"}),
    case("two wrapped keys (multi-key envelope)", 64, pattern(100), {"site": "both"}, keys=2),
    case("default frame length", 65536, pattern(1000), {"table": "orders"}),
    case("associated data (not carried in the message)", 64, pattern(70), {"table": "customers"}, associated_data=b"row 17"),
    case("commitment of another data key", 64, pattern(10), commitment_key=fixed("other", 32)),
    case("truncated: final frame removed", 64, pattern(130), truncate=lambda m: len(m) - 28 - 2),
    # Validly tagged, but not the one encoding the spec allows: a reader must refuse them.
    case("final frame as long as the frame length", 64, pattern(128), final_full=True),
    case("context entries not sorted", 64, pattern(5), [("b", "2"), ("a", "1")], unsorted=True),
    case("context key twice", 64, pattern(5), [("a", "1"), ("a", "2")], duplicate=True),
]

if __name__ == "__main__":
    print(json.dumps({
        "format": "envelope message v1, suite 0x0001 (docs/envelope-format.md)",
        "generator": "tests/Kms.Client.Tests/vectors/generate_envelope.py",
        "vectors": VECTORS,
    }, indent=2, ensure_ascii=False))
