"""A bench device on a bare asyncio socket, cheap enough that one process holds 10,000.

The ``websockets`` client spends ~100 µs of Python per received frame (protocol objects,
a decoder, a full msgpack decode to find one tag): at 5,000 devices in one process that
is half a second of the load generator's own time, measured as if it were the server's.
This one does what a device needs and no more: the HTTP upgrade (offering
permessage-deflate, as the Flutter app does), frames parsed by hand, compressed messages
inflated with zlib, a catch-up frame read up to its ``more`` flag, and a live frame only
searched for a tag (or kept, to be decoded once the measurement is over). The server
under test is the same either way.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
import zlib
from urllib.parse import urlsplit

import msgpack

_SYNC_TAIL = b"\x00\x00\xff\xff"


def _client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked, unfragmented client frame (RFC 6455 §5.3)."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    key = (mask * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")
    return header + mask + masked


def _head_of(payload: bytes) -> dict:
    """The fields of a frame before ``data``, without decoding the rows."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(payload)
    head = {}
    for _ in range(unpacker.read_map_header()):
        key = unpacker.unpack()
        if key == "data":
            break
        head[key] = unpacker.unpack()
    return head


class RawDevice(asyncio.Protocol):
    """One device: connects, says hello from ``cursor``, notes when it is caught up and
    when a live frame first carries ``watch``."""

    def __init__(self, url: str, token: str, cursor: bytes | None, client_id: str) -> None:
        self.url = urlsplit(url.replace("http://", "ws://") + "/sync/ws")
        self.token, self.cursor, self.client_id = token, cursor, client_id
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.opened = asyncio.get_running_loop().create_future()
        self.live = asyncio.Event()
        self.watch: bytes | None = None
        self.hit: float | None = None
        self.hit_event = asyncio.Event()
        self.errors = 0
        self.closed_code: int | None = None
        self.keep = False  # keep every live payload with its arrival time, to decode after the run
        self.kept: list[tuple[float, bytes]] = []

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: self, self.url.hostname, self.url.port)
        await asyncio.wait_for(self.opened, 60)
        hello = {"t": "hello", "v": 1, "client_id": self.client_id, "cursor": self.cursor}
        self.transport.write(_client_frame(0x2, msgpack.packb(hello, use_bin_type=True)))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write((  # type: ignore[attr-defined]
            f"GET {self.url.path} HTTP/1.1\r\nHost: {self.url.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
            f"Authorization: Bearer {self.token}\r\n\r\n").encode())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed before the upgrade: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self.buf[:self.buf.find(b"\r\n")])
            del self.buf[:end + 4]
            if b" 101 " not in status:
                self.opened.set_exception(ConnectionError(status.decode(errors="replace")))
                return
            self.upgraded = True
            self.opened.set_result(None)
        self._frames()

    def _frames(self) -> None:
        buf = self.buf
        while len(buf) >= 2:
            first, second = buf[0], buf[1]
            size, at = second & 0x7F, 2
            if size == 126:
                if len(buf) < 4:
                    return
                size, at = struct.unpack_from("!H", buf, 2)[0], 4
            elif size == 127:
                if len(buf) < 10:
                    return
                size, at = struct.unpack_from("!Q", buf, 2)[0], 10
            if len(buf) < at + size:
                return
            payload = bytes(buf[at:at + size])
            del buf[:at + size]
            self._message(first & 0x0F, bool(first & 0x40), payload)

    def _message(self, opcode: int, compressed: bool, payload: bytes) -> None:
        arrived = time.perf_counter()
        if opcode == 0x8:
            self.closed_code = struct.unpack_from("!H", payload)[0] if len(payload) >= 2 else 1005
            return
        if opcode == 0x9:
            self.transport.write(_client_frame(0xA, payload))
            return
        if compressed:  # each message on its own: the server does not take context over
            payload = zlib.decompressobj(-15).decompress(payload + _SYNC_TAIL)
        if not self.live.is_set():
            head = _head_of(payload)
            if head.get("t") == "error":
                self.errors += 1
            elif head.get("t") == "changes":
                self.cursor = head["cursor"]
                if not head["more"]:
                    self.live.set()
        elif self.keep:
            self.kept.append((arrived, payload))
        elif self.watch is not None and self.hit is None and self.watch in payload:
            self.hit = arrived
            self.hit_event.set()
