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


def changes_head(cursor: bytes, more: bool, reset: list[str], expected: dict[str, int] | None = None) -> bytes:
    """The bytes of a ``changes`` frame before its packed ``data``."""
    fields = b"\x86" if expected else b"\x85"
    head = fields + pack("t") + pack("changes") + pack("cursor") + pack(cursor) + pack("more") + pack(more)
    head += pack("reset") + pack(reset)
    if expected:
        head += pack("expected") + pack(expected)
    return head + pack("data")


def unpack(data: bytes, *, max_size: int) -> Any:
    """Decode one msgpack document, refusing anything malformed or larger than ``max_size``.

    Raises:
        BadRequest: BAD_REQUEST for malformed input, PAYLOAD_TOO_LARGE for oversize.
    """
    if len(data) > max_size:
        raise BadRequest(f"body of {len(data)} bytes exceeds the {max_size} byte limit", ErrorCode.PAYLOAD_TOO_LARGE)
    check_lengths(data)
    try:
        # Belt and braces after check_lengths: no length can exceed the body.
        value = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=len(data),
            max_bin_len=len(data),
            max_array_len=len(data),
            max_map_len=len(data),
            max_ext_len=0,
        )
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, TypeError) as exc:
        raise BadRequest(f"body is not valid msgpack: {exc or type(exc).__name__}") from exc
    check_values(value)
    return value


# Bytes taken by a value that is whole after its first byte (0: a length or count follows).
_FIXED = [0] * 256
for _first in [*range(0x00, 0x80), *range(0xE0, 0x100), 0xC0, 0xC2, 0xC3]:
    _FIXED[_first] = 1
for _first in range(0xA0, 0xC0):
    _FIXED[_first] = 1 + (_first & 0x1F)  # fixstr
for _first, _size in {0xCA: 5, 0xCB: 9, 0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9, 0xD0: 2, 0xD1: 3, 0xD2: 5,
                      0xD3: 9, 0xD4: 3, 0xD5: 4, 0xD6: 6, 0xD7: 10, 0xD8: 18}.items():
    _FIXED[_first] = _size
# str, bin and ext with a length: (bytes of the length, bytes between it and the payload)
_SIZED = {0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0), 0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1),
          0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0)}
# array16/32 and map16/32: (bytes of the count, items per counted entry)
_COUNTED = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}


def check_lengths(data: bytes) -> None:
    """Walk the document's headers without building anything: every container's count must
    fit in the bytes that follow, together with what the open containers still announce
    (each item takes at least one byte).

    msgpack allocates a container from its header before reading the items, so 1,000
    nested 5-byte headers announcing 60,000 items each cost ~70 MB before it finds the
    input short; after this walk every announced item is backed by a byte of the body.
    Strings, bins and scalars that overrun are left to msgpack, which refuses them before
    allocating; so is nesting, bounded by msgpack's stack and then by ``check_values``.

    Raises:
        BadRequest: BAD_REQUEST, for the first count that overruns.
    """
    end, pos, pending = len(data), 0, 1
    fixed, sized, counted = _FIXED, _SIZED, _COUNTED  # locals: this loop runs once per value
    while pending and pos < end:
        first = data[pos]
        pending -= 1
        if fixed[first]:
            pos += fixed[first]
            continue
        if first in sized:
            width, gap = sized[first]
            pos += 1 + width + gap + int.from_bytes(data[pos + 1:pos + 1 + width], "big")
            continue
        if 0x80 <= first <= 0x9F:
            width, count, per = 0, first & 0x0F, 2 if first < 0x90 else 1
        elif first in counted:
            width, per = counted[first]
            count = int.from_bytes(data[pos + 1:pos + 1 + width], "big")
        else:
            return  # 0xc1, never used: msgpack refuses it
        pos += 1 + width
        pending += count * per
        if pending > end - pos:
            raise BadRequest(f"body is not valid msgpack: a header announces {count} items, more than"
                             f" the {max(end - pos, 0)} bytes that follow")


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
