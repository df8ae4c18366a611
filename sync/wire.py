"""All msgpack packing and unpacking of protocol v1 lives here.

Maps have string keys, byte strings travel as msgpack ``bin`` (``use_bin_type``) and
strings are decoded as ``str`` (``raw=False``), so Python and Dart agree byte for byte
(see ``tests/vectors``).
"""

from __future__ import annotations

from typing import Any

import msgpack

from .errors import BadRequest, ErrorCode

MAX_SAFE_INT = 2**53 - 1  # JavaScript's Number.MAX_SAFE_INTEGER: Dart on the web has no wider ints
MAX_DEPTH = 32

_packer_options = {"use_bin_type": True, "datetime": False}


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, **_packer_options)


def pack_changes(cursor: bytes, more: bool, reset: list[str], packed_data: bytes) -> bytes:
    """A ``changes`` frame around ``data`` packed once and shared by many devices; equal,
    byte for byte, to ``pack({"t": "changes", "cursor": ..., "more": ..., "reset": ..., "data": ...})``."""
    return changes_head(cursor, more, reset) + packed_data


def changes_head(cursor: bytes, more: bool, reset: list[str]) -> bytes:
    """The bytes of a ``changes`` frame before its packed ``data``."""
    head = b"\x85" + pack("t") + pack("changes") + pack("cursor") + pack(cursor) + pack("more") + pack(more)
    return head + pack("reset") + pack(reset) + pack("data")


def unpack(data: bytes, *, max_size: int) -> Any:
    """Decode one msgpack document, refusing anything malformed or larger than ``max_size``.

    Raises:
        BadRequest: BAD_REQUEST for malformed input, PAYLOAD_TOO_LARGE for oversize.
    """
    if len(data) > max_size:
        raise BadRequest(f"body of {len(data)} bytes exceeds the {max_size} byte limit", ErrorCode.PAYLOAD_TOO_LARGE)
    try:
        # The *_len limits stop a 5-byte header from announcing a 4 GB array.
        value = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=max_size,
            max_bin_len=max_size,
            max_array_len=max_size,
            max_map_len=max_size,
            max_ext_len=0,
        )
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, TypeError) as exc:
        raise BadRequest(f"body is not valid msgpack: {exc or type(exc).__name__}") from exc
    check_values(value)
    return value


def check_values(value: Any, depth: int = 0) -> None:
    """Refuse what protocol v1 rules out even when msgpack allows it: ints beyond
    ±2^53, NaN and infinities, U+0000 in strings (PostgreSQL cannot store it), map keys
    that are not strings, nesting deeper than MAX_DEPTH.

    Raises:
        BadRequest: naming the first offending value.
    """
    if depth > MAX_DEPTH:
        raise BadRequest(f"values nest deeper than {MAX_DEPTH} levels")
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            raise BadRequest(f"integer {value} is outside ±(2^53-1); send large ids as strings")
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise BadRequest("NaN and infinities are not allowed")
    elif isinstance(value, str):
        if "\x00" in value:
            raise BadRequest("strings may not contain U+0000")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise BadRequest("map keys must be strings")
            check_values(key, depth + 1)
            check_values(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_values(item, depth + 1)
