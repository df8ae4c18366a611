"""uvicorn's WebSocket protocol, made lighter for many sessions: permessage-deflate that
compresses a frame once, whichever sessions it goes to, and a small receive queue.

A catalog price change is one frame for the 5,000 terminals of a chain, and a reconnect
storm sends the same catch-up batches to every terminal of a shop (both are shared
upstream: :mod:`server.live` and :mod:`sync.shared_pulls`). Plain permessage-deflate
compresses each copy again, with a zlib state per connection that lives as long as the
session: it was the largest single cost of a broadcast and half the memory of an idle
session.

Here the server negotiates ``server_no_context_takeover`` and ``client_no_context_takeover``
(RFC 7692 §7.1.1; a server may ask for both, and every conforming client accepts): each
message is compressed on its own, so the same payload compresses to the same bytes on
every connection, and compressed payloads are kept in a small process-wide cache keyed
by the payload. Idle sessions hold no zlib state at all. The price is a little ratio on
small frames (no dictionary carried over from the previous message).
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import PerMessageDeflate, ServerPerMessageDeflateFactory
from websockets.frames import CTRL_OPCODES, Frame
from websockets.server import ServerProtocol
from websockets.typing import ExtensionParameter

WINDOW_BITS = 12  # as uvicorn's own defaults: 4 KB windows, memLevel 5
COMPRESS_SETTINGS = {"memLevel": 5}
SMALL = 64  # smaller messages are sent uncompressed
CACHED = 1024  # smaller ones are compressed without going through the cache


class CompressedCache:
    """Compressed payloads by (window bits, payload), least recently used out first."""

    def __init__(self, max_bytes: int = 32 << 20, max_entries: int = 512) -> None:
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self._items: OrderedDict[tuple[int, bytes], bytes] = OrderedDict()
        self._bytes = 0
        self.misses = 0  # compressions done (tests count them)

    def compress(self, data: bytes, bits: int, settings: dict[str, Any]) -> bytes:
        key = (bits, data)  # hashing bytes is done once per object: CPython caches it
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
            return found
        self.misses += 1
        out = _deflate(data, bits, settings)[:-4]  # the message's final sync marker goes (RFC 7692 §7.2.1)
        if len(data) + len(out) <= self.max_bytes // 4:  # a huge one-off is not worth evicting for
            self._items[key] = out
            self._bytes += len(data) + len(out)
            while self._bytes > self.max_bytes or len(self._items) > self.max_entries:
                (_, old_data), old = self._items.popitem(last=False)
                self._bytes -= len(old_data) + len(old)
        return out


CACHE = CompressedCache()


class SharedTail(bytes):
    """A frame whose last bytes, ``tail``, are one object shared with other frames: a live
    ``changes`` frame is a per-device head (its cursor) and the data its group shares."""

    tail: bytes

    def __new__(cls, head: bytes, tail: bytes) -> SharedTail:
        frame = super().__new__(cls, head + tail)
        frame.tail = tail
        return frame


def _stored(data: bytes) -> bytes:
    """``data`` as stored deflate blocks (RFC 1951 §3.2.4): a zero header byte (not
    final, type 00, padding), LEN and its complement, the bytes as they are."""
    return b"".join(b"\x00" + struct.pack("<HH", len(part), len(part) ^ 0xFFFF) + part
                    for part in (data[at:at + 0xFFFF] for at in range(0, len(data), 0xFFFF)))


def _deflate(data: bytes, bits: int, settings: dict[str, Any]) -> bytes:
    """``data`` compressed on its own, ending on a byte boundary (sync flush kept)."""
    encoder = zlib.compressobj(wbits=-bits, **settings)
    return encoder.compress(data) + encoder.flush(zlib.Z_SYNC_FLUSH)


class SharedDeflate(PerMessageDeflate):
    """PerMessageDeflate without context takeover, with compression through :data:`CACHE`."""

    def encode(self, frame: Frame) -> Frame:
        if frame.opcode in CTRL_OPCODES or not frame.fin or not isinstance(frame.data, bytes) \
                or not self.local_no_context_takeover:
            return super().encode(frame)  # fragments and odd payloads: the library's own way
        bits, settings, payload = self.local_max_window_bits, self.compress_settings, frame.data
        if isinstance(payload, SharedTail):
            # Deflate blocks that end on a byte boundary concatenate: the device's own head
            # as a stored (uncompressed) block, then the tail its group shares, compressed once.
            data = _stored(payload[:len(payload) - len(payload.tail)]) + CACHE.compress(payload.tail, bits, settings)
        elif len(payload) < SMALL:
            return frame  # a message may go uncompressed (RSV1 clear): a pong gains nothing
        elif len(payload) < CACHED:
            data = _deflate(payload, bits, settings)[:-4]
        else:
            data = CACHE.compress(payload, bits, settings)
        return Frame(frame.opcode, data, frame.fin, True, frame.rsv2, frame.rsv3)


class SharedDeflateFactory(ServerPerMessageDeflateFactory):
    """Negotiates no context takeover both ways and hands out :class:`SharedDeflate`."""

    def __init__(self) -> None:
        super().__init__(server_no_context_takeover=True, client_no_context_takeover=True,
                         server_max_window_bits=WINDOW_BITS, client_max_window_bits=WINDOW_BITS,
                         compress_settings=COMPRESS_SETTINGS)

    def process_request_params(self, params: Sequence[ExtensionParameter],
                               accepted_extensions: Sequence[Extension]) -> tuple[list[ExtensionParameter], Extension]:
        response, plain = super().process_request_params(params, accepted_extensions)
        return response, SharedDeflate(plain.remote_no_context_takeover, plain.local_no_context_takeover,
                                       plain.remote_max_window_bits, plain.local_max_window_bits,
                                       plain.compress_settings)


class Inbox:
    """What uvicorn needs of its per-connection receive queue, in a list and one future:
    an ``asyncio.Queue`` is four deques, ~3 KB per idle session."""

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


_FACTORY = SharedDeflateFactory()  # configuration only: one for every connection


class SharedDeflateProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol with :class:`SharedDeflateFactory` as its
    only extension (uvicorn builds its own factory, with context takeover), and a lighter
    receive queue."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = Inbox()  # type: ignore[assignment]
        self.writable = Flag()  # type: ignore[assignment]
        self.writable.set()
        if self.config.ws_per_message_deflate:
            self.conn = ServerProtocol(extensions=[_FACTORY], max_size=self.config.ws_max_size, logger=self.logger)

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept":
            self.request = self.response = None  # the handshake's headers (~3 KB) are done with


class Flag:
    """What uvicorn needs of its ``writable`` event, without the event's deque."""

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        await waiter
