"""Unit tests of the wire layer: codec, cursors, message validation, error table. No event
loop and no database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import pytest

from sync import wire
from sync.cursor import Cursor, CursorCodec
from sync.errors import AuthError, BadRequest, ErrorCode, MutationRejected, RevokedError, StorageError, SyncError
from sync.messages import (
    PROTOCOL_VERSION, Mutation, PullRequest, PushRequest, check_version, parse_pull, parse_push,
)

VECTORS = Path(__file__).parent / "vectors"
LIMIT = 64 * 1024


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def refused(data: bytes, code: ErrorCode = ErrorCode.BAD_REQUEST, max_size: int = LIMIT) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        wire.unpack(data, max_size=max_size)
    assert info.value.code is code, (info.value.code, info.value.message)
    assert info.value.message
    return info.value


# -- sync.wire ---------------------------------------------------------------------


MALFORMED = json.loads((VECTORS / "malformed.json").read_text())


@pytest.mark.parametrize("vector", MALFORMED, ids=[v["name"] for v in MALFORMED])
def test_unpack_refuses_every_shared_malformed_vector(vector):
    refused(bytes.fromhex(vector["hex"]))


@pytest.mark.parametrize("data", [
    b"\xc0\xc0",  # nil, nil
    pack({"v": 1}) + b"\x00",
    pack({"v": 1}) + pack({"v": 1}),
    pack([1, 2, 3]) + b"\xff",
], ids=["nil nil", "map + byte", "two maps", "array + byte"])
def test_unpack_refuses_trailing_bytes(data):
    assert "valid msgpack" in refused(data).message


@pytest.mark.parametrize("data", [
    b"\xc1", b"\x92\x01", b"\xa5abc", b"\x81\xa1v", b"\xd9", b"\xdb\x00\x00\x00\x05abc",
], ids=["reserved c1", "short array", "short str", "key without value", "str8 no length", "str32 short"])
def test_unpack_refuses_malformed(data):
    refused(data)


@pytest.mark.parametrize("data", [
    pack({1: "int key"}), pack({None: 1}), b"\x81\x92\x01\x02\x01",
    pack({"ok": {2.5: "float key"}}),
], ids=["int key", "nil key", "array key", "nested float key"])
def test_unpack_refuses_non_string_map_keys(data):
    refused(data)


@pytest.mark.parametrize("data", [
    b"\xd4\x01\x00",  # fixext 1
    b"\xd6\xff\x00\x00\x00\x00",  # timestamp 32 (ext -1)
    b"\xc7\x01\x05\x00",  # ext 8
], ids=["fixext1", "timestamp", "ext8"])
def test_unpack_refuses_ext_types(data):
    refused(data)


def test_unpack_refuses_oversized_input_before_decoding():
    body = pack({"v": 1, "pad": "x" * 200})
    error = refused(body, ErrorCode.PAYLOAD_TOO_LARGE, max_size=len(body) - 1)
    assert str(len(body)) in error.message
    assert wire.unpack(body, max_size=len(body)) == {"v": 1, "pad": "x" * 200}  # the limit is inclusive
    # oversize wins over malformed: a huge garbage body is not even parsed
    refused(b"\xc1" * (LIMIT + 1), ErrorCode.PAYLOAD_TOO_LARGE)


@pytest.mark.parametrize("header", [
    b"\xdd\x00\x10\x00\x00",  # array32 of 1 Mi elements
    b"\xdf\x00\x10\x00\x00",  # map32 of 1 Mi entries
    b"\xdb\x00\x10\x00\x00",  # str32 of 1 MiB
    b"\xc6\x00\x10\x00\x00",  # bin32 of 1 MiB
], ids=["array32", "map32", "str32", "bin32"])
def test_unpack_refuses_a_small_body_announcing_more_than_the_limit(header):
    refused(header + b"\x00" * 16, max_size=1024)


def test_unpack_refuses_deep_nesting():
    refused(b"\x91" * 2000 + b"\xc0", max_size=LIMIT)


VALUES = [
    None, True, False, 0, -1, 127, 128, -33, 2**31, 2**53 - 1, -(2**53) + 1, 1.5, -0.0, "", "é€😀",
    "x" * 300, b"", b"\x00\xff" * 100, [], [1, [2, [3]]], {}, {"a": {"b": [None, b"\x01", "c"]}},
    {"v": 1, "client_id": "dev", "cursor": b"\x00" * 40, "mutations": [{"id": 1, "name": "n", "args": {}, "at": 0}]},
]


@pytest.mark.parametrize("value", VALUES, ids=[f"v{i}" for i in range(len(VALUES))])
def test_pack_unpack_round_trip(value):
    data = wire.pack(value)
    back = wire.unpack(data, max_size=LIMIT)
    assert back == value and type(back) is type(value)
    assert data == pack(value)  # the same bytes as the reference packer (and the Dart vectors)


def test_pack_keeps_str_and_bin_apart():
    assert wire.pack("ab") == b"\xa2ab"
    assert wire.pack(b"ab") == b"\xc4\x02ab"
    assert isinstance(wire.unpack(b"\xc4\x02ab", max_size=10), bytes)
    assert isinstance(wire.unpack(b"\xa2ab", max_size=10), str)


def _vectors() -> list[dict]:
    """msgpack.json holds one vector per line; a few are nested deeper than ``json`` parses."""
    found = []
    for line in (VECTORS / "msgpack.json").read_text().splitlines():
        line = line.strip().rstrip(",")
        if not line.startswith("{"):
            continue
        try:
            found.append(json.loads(line))
        except RecursionError:
            continue
    return found


def test_pack_matches_the_shared_vectors():
    plain = [v for v in _vectors() if "value" in v and _plain(v["value"])]
    assert len(plain) > 30, "expected untagged vectors"
    for vector in plain:
        data = bytes.fromhex(vector["hex"])
        if not vector.get("decode_only"):
            assert wire.pack(vector["value"]) == data, vector["name"]
        assert msgpack.unpackb(data, raw=False) == vector["value"], vector["name"]
        try:  # codec vectors include msgpack that protocol v1 refuses (2^63, NaN, ...)
            wire.check_values(vector["value"])
        except BadRequest:
            continue
        assert wire.unpack(data, max_size=len(data) + 1) == vector["value"], vector["name"]


def _plain(value: Any, depth: int = 0) -> bool:
    """A JSON value with no ``$`` tags (so it is its own Python value)."""
    if depth > 100:
        return False
    if isinstance(value, dict):
        return all(not k.startswith("$") and _plain(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v, depth + 1) for v in value)
    return value is None or isinstance(value, (bool, int, str))


# -- sync.cursor -------------------------------------------------------------------

SECRET = b"unit-test-secret-0123456789abcdef"


def cursor() -> Cursor:
    return Cursor(tenant_id=7, user_id=11, seq=12345, t=1_700_000_000_000,
                  datasets={"customers": (123456, 987654), "catalog": (1, 2)},
                  snap=["orders", "catalog"], after="8d0c1a8e-5b1c-4bb5-9a3b-3c3a1c1e0f01")


@pytest.mark.parametrize("after", [None, 42, "key", 2**40])
def test_cursor_round_trips(after):
    codec = CursorCodec(SECRET)
    original = cursor()
    original.after = after
    raw = codec.encode(original)
    assert isinstance(raw, bytes)
    assert codec.decode(raw) == original
    assert CursorCodec(SECRET).decode(raw) == original  # any process with the secret
    empty = Cursor(1, 2, 0, 0)
    assert codec.decode(codec.encode(empty)) == empty


def test_cursor_is_deterministic_and_changes_with_its_content():
    codec = CursorCodec(SECRET)
    assert codec.encode(cursor()) == codec.encode(cursor())
    later = cursor()
    later.seq += 1
    assert codec.encode(later) != codec.encode(cursor())


def test_cursor_with_any_flipped_byte_is_refused():
    codec = CursorCodec(SECRET)
    raw = codec.encode(cursor())
    for index in range(len(raw)):
        for bit in (0x01, 0x80):
            bad = bytearray(raw)
            bad[index] ^= bit
            assert codec.decode(bytes(bad)) is None, (index, bit)


def test_truncated_or_extended_cursor_is_refused():
    codec = CursorCodec(SECRET)
    raw = codec.encode(cursor())
    for length in range(len(raw)):
        assert codec.decode(raw[:length]) is None, length
    assert codec.decode(raw + b"\x00") is None
    assert codec.decode(b"\x00" + raw) is None


def test_cursor_signed_with_another_secret_is_refused():
    raw = CursorCodec(b"another-secret-0123456789abcdef!").encode(cursor())
    assert CursorCodec(SECRET).decode(raw) is None


def test_cursor_seq_cannot_be_forged():
    """Re-packing the body with another seq and keeping the old MAC gets nothing."""
    codec = CursorCodec(SECRET)
    raw = codec.encode(cursor())
    body, mac = raw[:-12], raw[-12:]
    fields = msgpack.unpackb(body, raw=False)
    fields[3] = 0  # seq: rewind to replay the whole log
    assert codec.decode(pack(fields) + mac) is None
    fields[1] = 8  # tenant
    assert codec.decode(pack(fields) + mac) is None


@pytest.mark.parametrize("junk", [b"", b"\x00", b"x" * 12, b"x" * 13, b"\xc1" * 64, pack({"seq": 1}) * 3])
def test_cursor_junk_is_refused_not_raised(junk):
    assert CursorCodec(SECRET).decode(junk) is None


# -- sync.messages -----------------------------------------------------------------


def test_parse_pull_accepts_good_bodies():
    assert parse_pull({"v": 1, "client_id": "dev-1", "cursor": None}) == PullRequest("dev-1", None, None)
    assert parse_pull({"v": 1, "client_id": "dev-1"}) == PullRequest("dev-1", None, None)  # cursor optional
    assert parse_pull({"v": 1, "client_id": "d", "cursor": b"\x01\x02", "limit": 500}) \
        == PullRequest("d", b"\x01\x02", 500)
    assert parse_pull({"v": PROTOCOL_VERSION, "client_id": "x" * 128, "cursor": b""}).client_id == "x" * 128
    # unknown keys are ignored (forward compatibility)
    assert parse_pull({"v": 1, "client_id": "d", "future": [1]}) == PullRequest("d", None, None)


BAD_PULL_BODIES: dict[str, tuple[Any, ErrorCode]] = {
    "not a map": ([1, "d", None], ErrorCode.BAD_REQUEST),
    "nil": (None, ErrorCode.BAD_REQUEST),
    "v missing": ({"client_id": "d"}, ErrorCode.BAD_REQUEST),
    "v str": ({"v": "1", "client_id": "d"}, ErrorCode.BAD_REQUEST),
    "v bool": ({"v": True, "client_id": "d"}, ErrorCode.BAD_REQUEST),
    "v float": ({"v": 1.0, "client_id": "d"}, ErrorCode.BAD_REQUEST),
    "v 2": ({"v": 2, "client_id": "d"}, ErrorCode.UNSUPPORTED_VERSION),
    "v 0": ({"v": 0, "client_id": "d"}, ErrorCode.UNSUPPORTED_VERSION),
    "v -1": ({"v": -1, "client_id": "d"}, ErrorCode.UNSUPPORTED_VERSION),
    "client_id missing": ({"v": 1}, ErrorCode.BAD_REQUEST),
    "client_id int": ({"v": 1, "client_id": 5}, ErrorCode.BAD_REQUEST),
    "client_id nil": ({"v": 1, "client_id": None}, ErrorCode.BAD_REQUEST),
    "client_id bin": ({"v": 1, "client_id": b"d"}, ErrorCode.BAD_REQUEST),
    "client_id empty": ({"v": 1, "client_id": ""}, ErrorCode.BAD_REQUEST),
    "client_id 129": ({"v": 1, "client_id": "x" * 129}, ErrorCode.BAD_REQUEST),
    "cursor str": ({"v": 1, "client_id": "d", "cursor": "abc"}, ErrorCode.BAD_REQUEST),
    "cursor list": ({"v": 1, "client_id": "d", "cursor": [1]}, ErrorCode.BAD_REQUEST),
    "limit 0": ({"v": 1, "client_id": "d", "limit": 0}, ErrorCode.BAD_REQUEST),
    "limit -1": ({"v": 1, "client_id": "d", "limit": -1}, ErrorCode.BAD_REQUEST),
    "limit str": ({"v": 1, "client_id": "d", "limit": "x"}, ErrorCode.BAD_REQUEST),
    "limit bool": ({"v": 1, "client_id": "d", "limit": True}, ErrorCode.BAD_REQUEST),
    "limit float": ({"v": 1, "client_id": "d", "limit": 5.0}, ErrorCode.BAD_REQUEST),
}


@pytest.mark.parametrize("case", list(BAD_PULL_BODIES))
def test_parse_pull_refuses_bad_bodies(case):
    body, code = BAD_PULL_BODIES[case]
    with pytest.raises(BadRequest) as info:
        parse_pull(body)
    assert info.value.code is code, info.value.message


def test_version_is_checked_before_anything_else():
    with pytest.raises(BadRequest) as info:
        parse_pull({"v": 2, "client_id": 5, "cursor": "x"})
    assert info.value.code is ErrorCode.UNSUPPORTED_VERSION
    assert "2" in info.value.message  # names the version it refused
    check_version({"v": 1})


def m(mid: int = 1, **over: Any) -> dict[str, Any]:
    return {"id": mid, "name": "order.create", "args": {"customer_id": 1}, "at": 1_700_000_000_000, **over}


def test_parse_push_accepts_good_bodies():
    req = parse_push({"v": 1, "client_id": "dev", "mutations": [m(1), m(2, name="visit.checkin", args={}), m(10)]},
                     max_mutations=3)
    assert req == PushRequest("dev", [
        Mutation(1, "order.create", {"customer_id": 1}, 1_700_000_000_000),
        Mutation(2, "visit.checkin", {}, 1_700_000_000_000),
        Mutation(10, "order.create", {"customer_id": 1}, 1_700_000_000_000),
    ])
    assert parse_push({"v": 1, "client_id": "dev", "mutations": []}, max_mutations=3).mutations == []
    assert parse_push({"v": 1, "client_id": "dev", "mutations": [m(2**53 - 1)]}, max_mutations=1).mutations[0].id \
        == 2**53 - 1
    # a mutation name the server does not know is not a request error: it is rejected per mutation
    assert parse_push({"v": 1, "client_id": "d", "mutations": [m(1, name="nope")]}, max_mutations=1).mutations[0].name \
        == "nope"


BAD_PUSH_BODIES: dict[str, tuple[Any, ErrorCode]] = {
    "not a map": ([1], ErrorCode.BAD_REQUEST),
    "v 2": ({"v": 2, "client_id": "d", "mutations": []}, ErrorCode.UNSUPPORTED_VERSION),
    "client_id missing": ({"v": 1, "mutations": []}, ErrorCode.BAD_REQUEST),
    "mutations missing": ({"v": 1, "client_id": "d"}, ErrorCode.BAD_REQUEST),
    "mutations map": ({"v": 1, "client_id": "d", "mutations": {"1": m()}}, ErrorCode.BAD_REQUEST),
    "too many": ({"v": 1, "client_id": "d", "mutations": [m(i) for i in range(1, 5)]}, ErrorCode.PAYLOAD_TOO_LARGE),
    "mutation list": ({"v": 1, "client_id": "d", "mutations": [[1, "n", {}, 0]]}, ErrorCode.BAD_REQUEST),
    "id missing": ({"v": 1, "client_id": "d", "mutations": [{k: v for k, v in m().items() if k != "id"}]},
                   ErrorCode.BAD_REQUEST),
    "id 0": ({"v": 1, "client_id": "d", "mutations": [m(0)]}, ErrorCode.BAD_REQUEST),
    "id negative": ({"v": 1, "client_id": "d", "mutations": [m(-3)]}, ErrorCode.BAD_REQUEST),
    "id 2^53": ({"v": 1, "client_id": "d", "mutations": [m(2**53)]}, ErrorCode.BAD_REQUEST),
    "id bool": ({"v": 1, "client_id": "d", "mutations": [m(True)]}, ErrorCode.BAD_REQUEST),
    "id str": ({"v": 1, "client_id": "d", "mutations": [m("1")]}, ErrorCode.BAD_REQUEST),
    "ids equal": ({"v": 1, "client_id": "d", "mutations": [m(1), m(1)]}, ErrorCode.BAD_REQUEST),
    "ids decreasing": ({"v": 1, "client_id": "d", "mutations": [m(2), m(1)]}, ErrorCode.BAD_REQUEST),
    "ids dip later": ({"v": 1, "client_id": "d", "mutations": [m(1), m(5), m(3)]}, ErrorCode.BAD_REQUEST),
    "name int": ({"v": 1, "client_id": "d", "mutations": [m(name=5)]}, ErrorCode.BAD_REQUEST),
    "args list": ({"v": 1, "client_id": "d", "mutations": [m(args=[1])]}, ErrorCode.BAD_REQUEST),
    "args nil": ({"v": 1, "client_id": "d", "mutations": [m(args=None)]}, ErrorCode.BAD_REQUEST),
    "args str": ({"v": 1, "client_id": "d", "mutations": [m(args="{}")]}, ErrorCode.BAD_REQUEST),
    "at str": ({"v": 1, "client_id": "d", "mutations": [m(at="now")]}, ErrorCode.BAD_REQUEST),
    "at float": ({"v": 1, "client_id": "d", "mutations": [m(at=1.5)]}, ErrorCode.BAD_REQUEST),
    "at bool": ({"v": 1, "client_id": "d", "mutations": [m(at=True)]}, ErrorCode.BAD_REQUEST),
}


@pytest.mark.parametrize("case", list(BAD_PUSH_BODIES))
def test_parse_push_refuses_bad_bodies(case):
    body, code = BAD_PUSH_BODIES[case]
    with pytest.raises(BadRequest) as info:
        parse_push(body, max_mutations=3)
    assert info.value.code is code, info.value.message


def test_max_mutations_is_inclusive():
    body = {"v": 1, "client_id": "d", "mutations": [m(i) for i in range(1, 4)]}
    assert len(parse_push(body, max_mutations=3).mutations) == 3
    with pytest.raises(BadRequest) as info:
        parse_push(body, max_mutations=2)
    assert info.value.code is ErrorCode.PAYLOAD_TOO_LARGE


def test_parsed_bodies_survive_the_wire():
    """What the reference client packs, the server unpacks and parses to the same values."""
    body = {"v": 1, "client_id": "dév-1", "mutations": [m(1, args={"lines": [{"product_id": 3, "qty": 2}],
                                                                   "note": "ünï", "blob": b"\x00"})]}
    req = parse_push(wire.unpack(pack(body), max_size=LIMIT), max_mutations=5)
    assert req.client_id == "dév-1"
    assert req.mutations[0].args == body["mutations"][0]["args"]


# -- sync.errors -------------------------------------------------------------------

REQUEST_CODES = {"AUTH_REQUIRED": 401, "AUTH_INVALID": 401, "FORBIDDEN": 403, "BAD_REQUEST": 400,
                 "UNSUPPORTED_VERSION": 400, "PAYLOAD_TOO_LARGE": 413, "RATE_LIMITED": 429, "UNAVAILABLE": 503}
MUTATION_CODES = {"UNKNOWN_MUTATION", "INVALID_ARGS", "NOT_FOUND", "FORBIDDEN", "CREDIT_LIMIT_EXCEEDED",
                  "INSUFFICIENT_STOCK", "PRICE_CHANGED", "CONFLICT"}


def test_every_code_of_the_brief_exists_with_its_status():
    codes = {c.value: c for c in ErrorCode}
    for name, status in REQUEST_CODES.items():
        assert codes[name].http == status, name
    assert MUTATION_CODES <= set(codes)


@pytest.mark.parametrize("code", list(ErrorCode), ids=[c.value for c in ErrorCode])
def test_every_error_code_has_status_close_code_and_meaning(code):
    assert code.value == code.name and code.value.isupper()
    assert isinstance(code, str) and code == code.value  # travels as its plain string
    assert isinstance(code.http, int) and isinstance(code.close, int)
    assert isinstance(code.meaning, str) and len(code.meaning) > 15 and code.meaning.endswith(".")
    request_level = code.http != 200
    if request_level:
        assert 400 <= code.http <= 599
        # a WebSocket close code: an application code (4000-4999) or a standard one a
        # server may send (never 1005/1006/1015, which are reserved for local use)
        assert 4000 <= code.close <= 4999 or code.close in (1008, 1009, 1011, 1013), code.close
        if 4000 <= code.close <= 4999 and code.http in (400, 401, 403, 429):
            assert code.close % 1000 in (code.http, 426, 410), (code.http, code.close)
    else:
        assert code.value in MUTATION_CODES
        assert code.close == 0  # only ever inside push results, never closes a socket


def test_error_codes_are_unique_and_lookup_by_value():
    assert len({c.value for c in ErrorCode}) == len(list(ErrorCode))
    for c in ErrorCode:
        assert ErrorCode(c.value) is c


def test_sync_errors_render_to_the_wire_shape():
    assert BadRequest("nope").to_wire() == {"code": "BAD_REQUEST", "message": "nope"}
    assert BadRequest("big", ErrorCode.PAYLOAD_TOO_LARGE).code is ErrorCode.PAYLOAD_TOO_LARGE
    assert AuthError(ErrorCode.AUTH_REQUIRED, "who?").to_wire() == {"code": "AUTH_REQUIRED", "message": "who?"}
    unavailable = StorageError()
    assert unavailable.code is ErrorCode.UNAVAILABLE and unavailable.to_wire()["retry_after"] > 0
    assert RevokedError("gone").to_wire() == {"code": "REVOKED", "message": "gone"}
    limited = SyncError(ErrorCode.RATE_LIMITED, "slow down", retry_after=7)
    assert limited.to_wire() == {"code": "RATE_LIMITED", "message": "slow down", "retry_after": 7}
    assert wire.unpack(wire.pack({"error": limited.to_wire()}), max_size=100) == {"error": limited.to_wire()}
    rejected = MutationRejected(ErrorCode.NOT_FOUND, "no such customer")
    assert (rejected.code, rejected.message) == (ErrorCode.NOT_FOUND, "no such customer")
    assert not isinstance(rejected, SyncError)  # a refusal is not a request failure
    for error in (BadRequest("x"), AuthError(ErrorCode.FORBIDDEN, "x"), StorageError(), RevokedError("x")):
        assert isinstance(error, SyncError)
