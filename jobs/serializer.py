"""Huey's messages as msgpack instead of pickle.

Whatever crosses Redis is data, never code: a pickle from a compromised or shared Redis
would run in the worker. Tasks take ids (ints and strings), so msgpack carries everything
they need; Huey's own message envelope and its times travel as extension types. Anything
else is refused at enqueue time rather than half-serialized.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgpack
from huey.registry import Message
from huey.serializer import Serializer

_MESSAGE, _DATETIME, _TIMEDELTA = 1, 2, 3


def _default(value: Any) -> Any:
    if isinstance(value, Message):  # a namedtuple: strict_types keeps msgpack from flattening it
        return msgpack.ExtType(_MESSAGE, _pack(list(value)))
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dt.datetime):
        return msgpack.ExtType(_DATETIME, value.isoformat().encode())
    if isinstance(value, dt.timedelta):
        return msgpack.ExtType(_TIMEDELTA, _pack(value.total_seconds()))
    raise TypeError(f"a job argument of type {type(value).__name__} cannot cross the queue; pass ids")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _MESSAGE:
        fields = _unpack(data)
        message = Message(*fields)
        return message._replace(args=tuple(message.args or ()))
    if code == _DATETIME:
        return dt.datetime.fromisoformat(data.decode())
    if code == _TIMEDELTA:
        return dt.timedelta(seconds=_unpack(data))
    return msgpack.ExtType(code, data)


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, default=_default, use_bin_type=True, strict_types=True)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)


class MsgpackSerializer(Serializer):
    """Huey serializer: msgpack with Huey's envelope as extension types (no pickle)."""

    def _serialize(self, data: Any) -> bytes:
        return _pack(data)

    def _deserialize(self, data: bytes) -> Any:
        return _unpack(data)
