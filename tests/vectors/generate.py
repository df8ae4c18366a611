"""Write the shared msgpack test vectors (msgpack.json, malformed.json).

Every encoder of the project (sync/ in Python, clients/dart_protocol in Dart)
must reproduce these bytes exactly: they are python msgpack 1.x
`packb(value, use_bin_type=True)`. See README.md for the JSON tagging
convention. Deterministic: no randomness, no clock; rerun and diff.

    .venv/bin/python tests/vectors/generate.py
"""

from __future__ import annotations

import json
import math
import pathlib
import sys

import msgpack

HERE = pathlib.Path(__file__).resolve().parent
JS_SAFE = 2**53 - 1
# python msgpack (and so the Dart codec) accepts at most 1024 nested containers.
MAX_DEPTH = 1024


def to_json(v):
    """Python value -> tagged JSON value (see README.md)."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return v if -JS_SAFE <= v <= JS_SAFE else {"$int": str(v)}
    if isinstance(v, float):
        if math.isnan(v):
            return {"$float": "NaN"}
        if math.isinf(v):
            return {"$float": "Infinity" if v > 0 else "-Infinity"}
        return {"$float": v}
    if isinstance(v, bytes):
        return {"$bin": v.hex()}
    if isinstance(v, (list, tuple)):
        return [to_json(x) for x in v]
    if isinstance(v, dict):
        plain = all(isinstance(k, str) for k in v) and not (
            len(v) == 1 and next(iter(v)).startswith("$")
        )
        if plain:
            return {k: to_json(x) for k, x in v.items()}
        return {"$map": [[to_json(k), to_json(x)] for k, x in v.items()]}
    raise TypeError(f"no JSON form for {type(v).__name__}")


def same(a, b) -> bool:
    """Deep equality that tells int from float and bool from int, and NaN == NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


def nested(depth: int):
    v = None
    for _ in range(depth):
        v = [v]
    return v


CURSOR = bytes.fromhex("0100000000000004d2000000000000002a")  # opaque to clients
T0 = 1_732_270_000_000  # 2024-11-22T10:06:40Z in ms
UUID_A = "6f1c2d3e-4b5a-4c6d-8e7f-901a2b3c4d5e"
UUID_B = "0a9b8c7d-6e5f-4a3b-9c2d-1e0f9a8b7c6d"

PULL_RESPONSE = {
    "v": 1,
    "cursor": CURSOR,
    "more": True,
    "reset": ["customers"],
    "data": {
        "customers": {
            "cols": ["id", "name", "credit_limit", "currency", "updated_at"],
            "rows": [
                [101, "Café Müller", 500_000, "EUR", T0],
                [102, "北京贸易", 0, "CNY", T0 + 1],
            ],
            "deletes": [],
        },
        "stock": {
            "cols": ["id", "product_id", "on_hand", "reserved", "negative"],
            "rows": [[3007, 7, -2, 0, True]],
            "deletes": [3009],
        },
    },
}
MUTATIONS = [
    {
        "id": 41,
        "name": "order.create",
        "args": {
            "id": UUID_A,
            "customer_id": 101,
            "lines": [{"product_id": 7, "qty": 3, "price": 1250}],
        },
        "at": T0,
    },
    {
        "id": 42,
        "name": "payment.record",
        "args": {"id": UUID_B, "customer_id": 101, "amount": 3750, "currency": "EUR", "method": "cash"},
        "at": T0 + 60_000,
    },
]
RESULTS = [
    {"id": 41, "status": "applied", "result": {"order_id": UUID_A, "number": "SO-000123", "total": 3750, "currency": "EUR"}},
    {"id": 42, "status": "rejected", "code": "CREDIT_LIMIT_EXCEEDED", "message": "over the limit by 12.50 EUR"},
]

# (name, value): the encoder must produce packb(value) and the decoder must
# return value from it.
ROUND_TRIP = [
    ("nil", None),
    ("false", False),
    ("true", True),
]
for n in [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**53 - 1, 2**53, 2**63 - 1]:
    ROUND_TRIP.append((f"int {n}", n))
for n in [-1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**53) + 1, -(2**53), -(2**63)]:
    ROUND_TRIP.append((f"int {n}", n))
for f in [0.0, -0.0, 1.0, -1.5, 0.1, 3.141592653589793, 1e300, -2.5e-308, 5e-324, 2.0**53, math.inf, -math.inf, math.nan]:
    ROUND_TRIP.append((f"float {f!r}", f))
ROUND_TRIP += [
    ("str empty", ""),
    ("str short", "hello"),
    ("str 31 (fixstr max)", "a" * 31),
    ("str 32 (str8)", "b" * 32),
    ("str 255 (str8 max)", "c" * 255),
    ("str 256 (str16)", "d" * 256),
    ("str 65535 (str16 max)", "e" * 65535),
    ("str 65536 (str32)", "f" * 65536),
    ("str accents", "Crème brûlée, Ærøskøbing, Łódź"),
    ("str emoji", "order ok 👍🏽 🇩🇪"),
    ("str CJK", "東京都渋谷区 北京市 서울"),
    ("str NUL and control", "a\x00b\n\t\x7f"),
    ("str leading BOM kept", "\ufeffBOM"),  # Dart's utf8.decode would drop it
    ("bin empty", b""),
    ("bin 3", b"\x00\xff\x80"),
    ("bin 255 (bin8 max)", bytes(range(255))),
    ("bin 256 (bin16)", bytes(i % 256 for i in range(256))),
    ("bin 65536 (bin32)", bytes(i % 251 for i in range(65536))),
    ("array empty", []),
    ("array 15 (fixarray max)", list(range(15))),
    ("array 16 (array16)", list(range(16))),
    ("array 65536 (array32)", [0] * 65536),
    ("array mixed", [None, True, -1, 1.5, "x", b"\x01", [], {}]),
    ("map empty", {}),
    ("map 15 (fixmap max)", {f"k{i:02}": i for i in range(15)}),
    ("map 16 (map16)", {f"k{i:02}": i for i in range(16)}),
    ("map keeps insertion order", {"z": 1, "a": 2, "m": 3}),
    ("map int keys", {1: "one", -1: "minus one", 300: "big"}),
    ("map mixed keys", {"s": 1, 2: "two", None: False, b"\x01": [1]}),
    ("map with key that looks like a tag", {"$bin": "not bytes"}),
    ("nested", {"a": [1, {"b": [None, {"c": b"\xca\xfe"}]}], "d": {"e": {}}}),
    (f"nested {MAX_DEPTH} deep (max)", nested(MAX_DEPTH)),
    # Protocol-shaped messages (see docs/protocol.md, "Wire protocol v1").
    ("pull request nil cursor", {"v": 1, "client_id": "dev-7f3a", "cursor": None}),
    ("pull request with cursor and limit", {"v": 1, "client_id": "dev-7f3a", "cursor": CURSOR, "limit": 500}),
    ("pull response reset + rows + deletes", PULL_RESPONSE),
    ("pull response empty batch", {"v": 1, "cursor": CURSOR, "more": False, "reset": [], "data": {}}),
    (
        "pull response deletes only",
        {
            "v": 1,
            "cursor": CURSOR,
            "more": False,
            "reset": [],
            "data": {"orders": {"cols": ["id", "status"], "rows": [], "deletes": [UUID_A, UUID_B]}},
        },
    ),
    ("push request 2 mutations", {"v": 1, "client_id": "dev-7f3a", "mutations": MUTATIONS}),
    ("push response applied + rejected", {"v": 1, "results": RESULTS}),
    ("error body", {"error": {"code": "AUTH_INVALID", "message": "token expired"}}),
    ("error body unavailable", {"error": {"code": "UNAVAILABLE", "message": "draining", "retry_after": 5}}),
    ("ws hello", {"t": "hello", "v": 1, "client_id": "dev-7f3a", "cursor": CURSOR, "token": "eyJhbGciOiJIUzI1NiJ9.e30.sig"}),
    ("ws hello nil cursor", {"t": "hello", "v": 1, "client_id": "dev-7f3a", "cursor": None}),
    ("ws push", {"t": "push", "mutations": MUTATIONS[:1]}),
    ("ws ack", {"t": "ack", "cursor": CURSOR}),
    ("ws changes", {"t": "changes", **{k: PULL_RESPONSE[k] for k in ("cursor", "more", "reset", "data")}}),
    ("ws results", {"t": "results", "results": RESULTS}),
    ("ws error", {"t": "error", "code": "FORBIDDEN", "message": "dataset not allowed"}),
    ("ws ping", {"t": "ping"}),
    ("ws pong", {"t": "pong"}),
]

# (name, hex, value): valid msgpack that python never writes (non-minimal
# headers, float32). Decoders must accept it; encoders won't reproduce it.
DECODE_ONLY = [
    ("float32 1.5", "ca3fc00000", 1.5),
    ("float32 -0.25", "cabe800000", -0.25),
    ("float32 NaN", "ca7fc00000", math.nan),
    ("uint8 holding 1", "cc01", 1),
    ("uint64 holding 1", "cf0000000000000001", 1),
    ("int8 holding 5", "d005", 5),
    ("int64 holding -1", "d3ffffffffffffffff", -1),
    ("str8 holding 'a'", "d90161", "a"),
    ("str32 holding 'a'", "db0000000161", "a"),
    ("bin32 holding 1 byte", "c600000001ff", b"\xff"),
    ("array16 with 1 element", "dc000101", [1]),
    ("map32 with 1 entry", "df00000001a16101", {"a": 1}),
]

# (name, hex, why): every decoder must reject these.
MALFORMED = [
    ("empty input", "", "no value at all"),
    ("truncated fixstr", "a36162", "fixstr says 3 bytes, 2 follow"),
    ("truncated str8 header", "d9", "length byte missing"),
    ("truncated str16 length", "da00", "length needs 2 bytes"),
    ("truncated str32 body", "db00000005616263", "5 bytes announced, 3 follow"),
    ("truncated uint8", "cc", "value missing"),
    ("truncated uint16", "cd01", "1 of 2 bytes"),
    ("truncated uint32", "ce000001", "3 of 4 bytes"),
    ("truncated uint64", "cf00000000000000", "7 of 8 bytes"),
    ("truncated int8", "d0", "value missing"),
    ("truncated int64", "d3ffffff", "4 of 8 bytes"),
    ("truncated float32", "ca3fc0", "3 of 4 bytes"),
    ("truncated float64", "cb3ff00000", "4 of 8 bytes"),
    ("truncated bin8", "c40500", "5 bytes announced, 1 follows"),
    ("bin32 huge length", "c6ffffffff", "4 GiB announced; must fail fast, not allocate"),
    ("never used 0xc1", "c1", "0xc1 is reserved"),
    ("0xc1 inside array", "9201c1", ""),
    ("0xc1 as map key", "81c101", ""),
    ("trailing byte", "c0c0", "one value, then extra data"),
    ("trailing bytes after map", "80ffff", ""),
    ("map missing value", "81a161", "key without value"),
    ("fixmap 2 with 1 entry", "82a16101", ""),
    ("array missing elements", "9201", "2 announced, 1 follows"),
    ("array32 huge length", "ddffffffff", "must fail fast, not allocate"),
    ("map32 huge length", "dfffffffff", "must fail fast, not allocate"),
    ("str invalid utf8", "a1ff", ""),
    ("str overlong utf8", "a2c080", "overlong NUL"),
    ("str utf8 surrogate", "a3eda080", "UTF-16 surrogates are not valid UTF-8"),
    ("str truncated utf8 sequence", "a2e282", "first 2 bytes of '€'"),
    (f"nested {MAX_DEPTH + 1} deep", "91" * (MAX_DEPTH + 1) + "c0", "deeper than the limit"),
]


def unpack(data: bytes):
    # strict_map_key=False: the vectors include non-string keys on purpose.
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def build():
    vectors, names = [], set()

    def add(name, data: bytes, value, decode_only=False):
        assert name not in names, name
        names.add(name)
        assert same(unpack(data), value), f"{name}: python decodes to something else"
        entry = {"name": name, "hex": data.hex(), "value": to_json(value)}
        if decode_only:
            entry["decode_only"] = True
        vectors.append(entry)

    for name, value in ROUND_TRIP:
        add(name, msgpack.packb(value, use_bin_type=True), value)
    for name, hexstr, value in DECODE_ONLY:
        data = bytes.fromhex(hexstr)
        assert msgpack.packb(value, use_bin_type=True) != data, f"{name}: not decode-only"
        add(name, data, value, decode_only=True)

    malformed = []
    for name, hexstr, why in MALFORMED:
        try:
            unpack(bytes.fromhex(hexstr))
        except Exception:  # any rejection will do; the kind differs by decoder
            pass
        else:
            raise AssertionError(f"{name}: python msgpack accepts it")
        malformed.append({"name": name, "hex": hexstr, "why": why})
    return vectors, malformed


def write(path: pathlib.Path, items):
    # One entry per line: readable diffs, stable output.
    lines = ",\n".join(json.dumps(x, ensure_ascii=False) for x in items)
    path.write_text("[\n" + lines + "\n]\n", encoding="utf-8")


def main():
    # The 1024-deep vector recurses ~2 Python frames per level (same, to_json, json).
    sys.setrecursionlimit(10_000)
    vectors, malformed = build()
    write(HERE / "msgpack.json", vectors)
    write(HERE / "malformed.json", malformed)
    print(f"wrote {len(vectors)} vectors, {len(malformed)} malformed")


if __name__ == "__main__":
    main()
