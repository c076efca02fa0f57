#!/usr/bin/env python3
"""Golden vectors for the envelope message v1, suite 0x0001 (docs/envelope-format.md) and,
with the argument `signed`, suite 0x0002 (docs/envelope-format-signed.md).

An independent implementation of the document (Python + pyca/cryptography), so the C#
envelope code is checked against the specification, not against itself. Deterministic:
data keys and message ids are derived from fixed labels below; the wrapped data keys are
stand-in bytes (the tests map them back to the data key without a KMS).

Suite 0x0002 vectors carry the ECDSA private key (a scalar derived from the vector's label). The
generator signs deterministically (RFC 6979), so the file regenerates byte for byte; the SDK's
signatures are randomized, so a writer's output is compared up to the footer and its footer
checked by verifying it.

Run once, review, commit: python3 generate_envelope.py > envelope-v1.json
                          python3 generate_envelope.py signed > envelope-signed.json
The test run only reads the file; it never regenerates it.
"""
import hashlib
import json
import base64
import struct
import sys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives.hmac import HMAC

SUITE = 0x0001
SIGNED_SUITE = 0x0002
PUBLIC_KEY = "kms-envelope-public-key"
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


def derive(data_key: bytes, message_id: bytes, suite=SUITE):
    h = HMAC(message_id, hashes.SHA512())  # HKDF-Extract(salt = message id, IKM = data key)
    h.update(data_key)
    prk = h.finalize()
    okm = HKDFExpand(hashes.SHA512(), 64, b"KMSE v1 key and commitment" + struct.pack(">H", suite)).derive(prk)
    return okm[:32], okm[32:]


def header_body(message_id, context, wrapped, frame_length, commitment, unsorted=False, suite=SUITE) -> bytes:
    out = b"KMSE" + b"\x01" + struct.pack(">H", suite) + message_id + encode_context(context, unsorted)
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
            unsorted=False, final_full=False, suite=SUITE) -> bytes:
    key, commitment = derive(data_key, message_id, suite)
    if commitment_key is not None:  # negative vector: commitment of another data key
        commitment = derive(commitment_key, message_id, suite)[1]
    body = header_body(message_id, context, wrapped, frame_length, commitment, unsorted, suite)
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

P384_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973
P384_PRIME = 2**384 - 2**128 - 2**96 + 2**32 - 1
P384_B = 0xB3312FA7E23EE7E4988E056BE3F82D19181D9C6EFE8141120314088F5013875AC656398D8A2ED19D2A85C8EDD3EC2AEF


def signing_key(label: str) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int.from_bytes(fixed("sk:" + label, 48), "big") % (P384_ORDER - 1) + 1, ec.SECP384R1())


def encoded_public_key(key: ec.EllipticCurvePrivateKey) -> str:
    point = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return base64.b64encode(point).decode("ascii")


def sign(key: ec.EllipticCurvePrivateKey, signed: bytes, high_s=False) -> bytes:
    r, s = decode_dss_signature(key.sign(signed, ec.ECDSA(hashes.SHA384(), deterministic_signing=True)))
    # high_s: the other valid signature of the same bytes (ECDSA is malleable; the spec says both verify).
    if high_s == (s <= P384_ORDER // 2):
        s = P384_ORDER - s
    return r.to_bytes(48, "big") + s.to_bytes(48, "big")


def point_with_x_above_the_prime() -> str:
    """A point on P-384 whose x is small, written with x + p: the same point, not its one encoding."""
    x = next(x for x in range(1, 100) if pow((x ** 3 - 3 * x + P384_B) % P384_PRIME, (P384_PRIME - 1) // 2, P384_PRIME) == 1)
    y = pow((x ** 3 - 3 * x + P384_B) % P384_PRIME, (P384_PRIME + 1) // 4, P384_PRIME)
    return base64.b64encode(b"\x04" + (x + P384_PRIME).to_bytes(48, "big") + y.to_bytes(48, "big")).decode("ascii")


def compressed(key: ec.EllipticCurvePrivateKey) -> str:
    point = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    return base64.b64encode(point).decode("ascii")


def signed_case(description, frame_length, plaintext, context=None, associated_data=b"", high_s=False, **bad):
    """Suite 0x0002: the public key in the context, every byte before the footer signed."""
    label = "signed:" + description
    data_key = fixed("dk:" + label, 32)
    message_id = fixed("id:" + label, 32)
    wrapped = [("tenants/vectors/keys/site-1", fixed("wrapped:0:" + label, 77))]
    key = signing_key(label)
    caller_context = dict(context or {})
    full_context = dict(caller_context)
    if not bad.get("no_public_key"):
        full_context[PUBLIC_KEY] = {"compressed": compressed(key), "x_above_prime": point_with_x_above_the_prime()}.get(
            bad.get("public_key"), encoded_public_key(key))
    suite = SUITE if bad.get("unsigned") else SIGNED_SUITE
    message = encrypt(data_key, message_id, full_context, wrapped, frame_length, plaintext, associated_data=associated_data, suite=suite,
                      final_full=bad.get("final_full", False))
    if suite == SIGNED_SUITE:
        # another_body: the signature of this message with one byte of its last tag changed.
        signed = message[:-1] + bytes([message[-1] ^ 1]) if bad.get("another_body") else message
        message += sign(key, signed, high_s)
        if "truncate" in bad:
            message = message[:len(message) - bad["truncate"]]
        message += bad.get("trailing", b"")
    return {
        "description": description,
        "valid": not bad,
        "error": "" if not bad else "opaque",
        "suite": suite,
        "data_key": data_key.hex(),
        "message_id": message_id.hex(),
        "frame_length": frame_length,
        "context": caller_context,
        "public_key": encoded_public_key(key),
        "private_key": format(key.private_numbers().private_value, "096x"),
        "wrapped_keys": [{"key_name": n, "wrapped": b.hex()} for n, b in wrapped],
        "associated_data": associated_data.hex(),
        "plaintext": plaintext.hex(),
        "message": message.hex(),
    }


SIGNED_VECTORS = [
    signed_case("signed: empty plaintext", 64, b""),
    signed_case("signed: exactly one frame", 64, pattern(64)),
    signed_case("signed: many frames, a context, associated data", 64, pattern(64 * 3 + 9), {"table": "orders", "é": "x"},
                associated_data=b"row 17"),
    signed_case("signed: default frame length", 65536, pattern(1000), {"table": "orders"}),
    signed_case("signed: frame length minus one (a final frame only)", 64, pattern(63)),
    signed_case("signed: frame length plus one", 64, pattern(65)),
    signed_case("signed: two full frames and an empty final frame", 64, pattern(128)),
    signed_case("signed: footer with s replaced by n - s (ECDSA is malleable: it verifies too)", 64, pattern(70), high_s=True),
    signed_case("signed: a byte after the footer", 64, pattern(70), trailing=b"\x00"),
    signed_case("signed: final frame as long as the frame length, signed", 64, pattern(128), final_full=True),
    signed_case("signed: public key compressed", 64, pattern(10), public_key="compressed"),
    signed_case("signed: public key's x written as x + p (on the curve, not its one encoding)", 64, pattern(10), public_key="x_above_prime"),
    signed_case("signed: signature of another body", 64, pattern(70), another_body=True),
    signed_case("signed: footer missing", 64, pattern(70), truncate=96),
    signed_case("signed: footer cut by one byte", 64, pattern(70), truncate=1),
    signed_case("signed: no public key in the context", 64, pattern(10), no_public_key=True),
    signed_case("unsigned (0x0001) message whose context holds a public key", 64, pattern(10), unsigned=True),
]

if __name__ == "__main__" and sys.argv[1:] == ["signed"]:
    print(json.dumps({
        "format": "envelope message v1, suite 0x0002 (docs/envelope-format-signed.md)",
        "generator": "tests/Kms.Client.Tests/vectors/generate_envelope.py signed",
        "vectors": SIGNED_VECTORS,
    }, indent=2, ensure_ascii=False))
elif __name__ == "__main__":
    print(json.dumps({
        "format": "envelope message v1, suite 0x0001 (docs/envelope-format.md)",
        "generator": "tests/Kms.Client.Tests/vectors/generate_envelope.py",
        "vectors": VECTORS,
    }, indent=2, ensure_ascii=False))
