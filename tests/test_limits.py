"""Limits of a server that faces phones, measured against a real ``fieldsync serve`` process.

Each case is an attack of issue 10 item 4 done with raw sockets (asyncio streams) or a real
WebSocket client: a 32 MB request head, 200 header fields, 300 connections dribbling a head
one byte at a time, a body dribbled the same way, junk frames that used to restart the
WebSocket hello timer, an upload that goes on after its 413, and msgpack length headers
that announce far more than the body holds. Memory is read from ``/proc/<pid>/status`` of
the server (VmRSS, and VmHWM after resetting it through ``/proc/<pid>/clear_refs``).

One server process serves the whole file, with short timeouts so it runs in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import pytest

from server.app import build_services
from server.config import Settings
from server.migrations import upgrade
from sync import wire
from sync.errors import BadRequest, ErrorCode

from .live_support import Server, WsClient, close_all, pack, unpack
from .support import seed, token

pytestmark = pytest.mark.slow

HEADER_TIMEOUT, BODY_TIMEOUT, HELLO_TIMEOUT = 2.0, 3.0, 3.0
MAX_BODY = 65536
ENV = {"FIELDSYNC_HEADER_TIMEOUT": str(HEADER_TIMEOUT), "FIELDSYNC_BODY_TIMEOUT": str(BODY_TIMEOUT),
       "FIELDSYNC_WS_HELLO_TIMEOUT": str(HELLO_TIMEOUT), "FIELDSYNC_MAX_BODY_BYTES": str(MAX_BODY)}
MB = 1 << 20
#: 1,000 nested ``array32(60000)`` headers: 5,000 bytes that announce 60 million items (each
#: under the 64 KB per-body ceiling the old decoder checked against)
BOMB = (b"\xdd" + (60000).to_bytes(4, "big")) * 1000


@dataclass
class Live:
    server: Server
    token: str

    @property
    def port(self) -> int:
        return self.server.port


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Live:
    """One server on a seeded SQLite database (the limits do not depend on the database)."""
    data_dir = tmp_path_factory.mktemp("limits")
    settings = Settings(database_url=f"sqlite:///{data_dir / 'test.db'}", redis_url=None,
                        jwt_secret=b"fieldsync-test-secret-0123456789abcdef", data_dir=data_dir)

    async def prepare() -> str:
        services = build_services(settings)
        try:
            await upgrade(services.db)
            world = await seed(services)
            return token(services, world.sales1, "salesperson")
        finally:
            await services.db.dispose()

    bearer = asyncio.run(prepare())
    server = Server(settings, data_dir, env=ENV, name="limits").start()
    yield Live(server, bearer)
    server.stop()


# -- measuring the server process ------------------------------------------------------------


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} line")


def reset_peak(pid: int) -> None:
    """VmHWM back to the current RSS (Linux 4.0+), so a short spike shows as a new peak."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


# -- raw HTTP ------------------------------------------------------------------------------------


@dataclass
class Upload:
    sent: int  # bytes written after the head before the connection stopped taking them
    sent_at_answer: int | None  # how many had been written when the first answer bytes arrived
    answer: bytes  # the first bytes the server sent (b"" if none before it closed)


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One whole response (head and a Content-Length body); b"" if the server closed first."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        return head + await reader.readexactly(length)
    except (ConnectionError, asyncio.IncompleteReadError):
        return b""


async def flood(port: int, head: bytes, total: int, *, chunk: int = 64 * 1024, stall: float = 1.5) -> Upload:
    """Write ``head`` then up to ``total`` filler bytes as fast as the server takes them,
    reading its answer meanwhile; stop at a reset, at the total, or when the server has
    taken nothing for ``stall`` seconds."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = asyncio.create_task(read_response(reader))
    block, sent, sent_at_answer = b"a" * chunk, 0, None
    try:
        writer.write(head)
        while sent < total:
            if sent_at_answer is None and answer.done():
                sent_at_answer = sent
            writer.write(block)
            await asyncio.wait_for(writer.drain(), stall)
            sent += chunk
    except (ConnectionError, asyncio.TimeoutError):
        pass
    try:
        got = await asyncio.wait_for(answer, 5)
    except (ConnectionError, asyncio.TimeoutError):
        got = b""
    if sent_at_answer is None and got:
        sent_at_answer = sent
    writer.transport.abort()
    return Upload(sent, sent_at_answer, got)


async def exchange(port: int, request: bytes) -> bytes:
    """Send a whole request, return everything up to the server's close (or 5 s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    try:
        return await asyncio.wait_for(read_response(reader), 5)
    finally:
        writer.transport.abort()


def post(path: str, bearer: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {bearer}\r\n"
            f"Content-Type: application/msgpack\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


async def _until_eof(reader: asyncio.StreamReader) -> tuple[float, bytes]:
    """Everything the server sends until it closes (a reset ends it too), and when it closed."""
    data = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            data += chunk
    return time.monotonic(), data


async def dribble(port: int, data: bytes, *, prefix: bytes = b"", every: float = 0.5,
                  give_up: float) -> tuple[float | None, bytes]:
    """Send ``prefix``, then ``data`` one byte per ``every`` seconds; returns when the server
    closed the connection (seconds after connecting; None if still open at ``give_up``) and
    what it answered. The clock starts before the connect: the server's timer cannot start
    earlier, while the moment this coroutine resumes after it can be late (300 connects at
    once), which made an on-time close look early."""
    opened = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    ended = asyncio.create_task(_until_eof(reader))
    try:
        writer.write(prefix)
        for byte in data:
            if ended.done() or time.monotonic() - opened > give_up:
                break
            writer.write(bytes([byte]))
            await asyncio.wait([ended], timeout=every)
        if not ended.done():
            await asyncio.wait([ended], timeout=max(0.0, give_up - (time.monotonic() - opened)))
        if not ended.done():
            return None, b""
        closed_at, answer = ended.result()
        return closed_at - opened, answer
    finally:
        ended.cancel()
        writer.transport.abort()


def status_of(answer: bytes) -> int | None:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None


# -- request heads ---------------------------------------------------------------------------


async def test_huge_request_heads_are_cut_off_without_growing_the_process(live):
    """Four 32 MB heads: each gets a 431 (or a reset) long before its end, and the process
    does not grow by what they sent. Before: the whole 128 MB was taken and stayed resident."""
    assert status_of(await exchange(live.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")) == 200
    before = status_kb(live.server.pid, "VmRSS")
    head = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Junk: "
    uploads = await asyncio.gather(*(flood(live.port, head, 32 * MB) for _ in range(4)))
    grown_mb = (status_kb(live.server.pid, "VmRSS") - before) / 1024
    for upload in uploads:
        assert status_of(upload.answer) in (431, None), upload.answer[:80]
        assert upload.sent < 16 * MB, f"the server took {upload.sent / MB:.1f} MB of one head"
    assert any(status_of(u.answer) == 431 for u in uploads)
    assert grown_mb < 24, f"the process grew by {grown_mb:.0f} MB"
    print(f"\n32 MB heads x4: taken {[round(u.sent / MB, 1) for u in uploads]} MB, RSS +{grown_mb:.1f} MB")


async def test_too_many_header_fields_get_431(live):
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(200))
    answer = await exchange(live.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + fields + b"\r\n")
    assert status_of(answer) == 431, answer[:200]
    few = b"".join(b"X-F%d: v\r\n" % i for i in range(40))
    assert status_of(await exchange(live.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + few + b"\r\n")) == 200


async def test_slow_heads_are_closed_at_the_header_timeout(live):
    """300 connections dribbling a head one byte every 0.5 s are all closed soon after the
    header timeout. Before: all still open (they would be forever)."""
    head = b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"X-Slow: " + b"z" * 200
    give_up = HEADER_TIMEOUT + 5
    started = time.monotonic()
    results = await asyncio.gather(*(dribble(live.port, head, every=0.5, give_up=give_up) for _ in range(300)))
    still_open = sum(closed is None for closed, _ in results)
    assert still_open == 0, f"{still_open} of 300 slow connections still open after {give_up:.0f}s"
    times = sorted(closed for closed, _ in results)
    assert times[0] >= HEADER_TIMEOUT - 0.2, f"closed before the timeout: {times[0]:.2f}s"
    assert times[-1] < HEADER_TIMEOUT + 3, f"the last one closed after {times[-1]:.2f}s"
    assert {status_of(answer) for _, answer in results} <= {408, None}
    print(f"\n300 slow heads: closed after {times[0]:.2f}..{times[-1]:.2f}s "
          f"(run {time.monotonic() - started:.1f}s)")
    assert status_of(await exchange(live.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")) == 200


async def test_silent_connections_are_closed_at_the_header_timeout(live):
    opened = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
    try:
        data = await asyncio.wait_for(reader.read(), HEADER_TIMEOUT + 3)
    finally:
        writer.transport.abort()
    assert data == b"", "a connection that sent nothing needs no answer"
    assert HEADER_TIMEOUT - 0.2 <= time.monotonic() - opened < HEADER_TIMEOUT + 2


async def test_kept_alive_connections_still_serve_and_idle_out_silently(live):
    """The head deadline restarts after each response; an idle kept-alive connection is
    closed without an answer (a stray 408 would be read as the reply to the next request)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
    try:
        for _ in range(3):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            assert status_of(await asyncio.wait_for(read_response(reader), 5)) == 200
            await asyncio.sleep(HEADER_TIMEOUT * 0.6)  # each head is due anew after a response
        idle = time.monotonic()
        assert await asyncio.wait_for(reader.read(), HEADER_TIMEOUT + 6) == b""
        assert time.monotonic() - idle < HEADER_TIMEOUT + 1
    finally:
        writer.transport.abort()


async def test_slow_bodies_are_closed_at_the_body_timeout(live):
    """A pull whose 10,000-byte body comes one byte every 0.5 s: 408 and closed once the
    body timeout passes. Before: open for as long as the body takes (83 minutes here)."""
    head = (f"POST /sync/pull HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {live.token}\r\n"
            "Content-Type: application/msgpack\r\nContent-Length: 10000\r\n\r\n").encode()
    give_up = BODY_TIMEOUT + 5

    results = await asyncio.gather(*(dribble(live.port, b"\x90" * 10000, prefix=head, give_up=give_up)
                                     for _ in range(20)))
    assert all(closed is not None for closed, _ in results), "slow bodies still open"
    times = sorted(closed for closed, _ in results)
    assert BODY_TIMEOUT - 0.2 <= times[0] and times[-1] < BODY_TIMEOUT + 3, times
    assert {status_of(answer) for _, answer in results} == {408}
    print(f"\n20 slow bodies: closed after {times[0]:.2f}..{times[-1]:.2f}s")


async def test_upload_past_a_413_is_not_drained(live):
    """Content-Length of 64 MiB on a 64 KB server: the 413 comes at once and the server
    stops reading: the client can push only what socket buffers hold before the reset.
    Before: the server read and discarded all 64 MiB after answering."""
    head = (f"POST /sync/push HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {live.token}\r\n"
            f"Content-Type: application/msgpack\r\nContent-Length: {64 * MB}\r\n\r\n").encode()
    upload = await flood(live.port, head, 64 * MB)
    assert status_of(upload.answer) == 413, upload.answer[:200]
    assert b"PAYLOAD_TOO_LARGE" in upload.answer
    after = upload.sent - (upload.sent_at_answer or 0)
    assert after < 16 * MB, f"the server took {after / MB:.1f} MB after its 413"
    print(f"\n413: {after / MB:.1f} MB written after the answer (buffers), {upload.sent / MB:.1f} MB in all")
    # a chunked upload that passes the limit half-way: the same
    chunked = (f"POST /sync/push HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {live.token}\r\n"
               "Content-Type: application/msgpack\r\nTransfer-Encoding: chunked\r\n\r\n"
               "100000\r\n").encode()  # one 1 MiB chunk, then filler the parser takes as its data
    upload = await flood(live.port, chunked, 64 * MB)
    assert status_of(upload.answer) == 413, upload.answer[:200]
    assert upload.sent < 24 * MB, f"the server took {upload.sent / MB:.1f} MB of a refused chunked upload"


# -- the WebSocket hello deadline ------------------------------------------------------------


async def test_ws_hello_deadline_is_fixed_from_the_connect(live):
    """Junk frames every second before hello: each gets an error frame, and the socket is
    closed with IDLE_TIMEOUT at the hello timeout after connecting. Before: every junk frame
    restarted the timer, so the unauthenticated socket stayed open for good."""
    client = await WsClient.open(live.server.ws_url)
    opened = time.monotonic()

    async def junk() -> None:
        while True:
            await asyncio.sleep(1.0)
            await client.send_raw(b"\xc1")  # never valid msgpack: an error frame, the session goes on

    sender = asyncio.create_task(junk())
    try:
        closed = await client.closed(timeout=HELLO_TIMEOUT + 4)
    finally:
        sender.cancel()
        await close_all()
    elapsed = time.monotonic() - opened
    assert closed.code == ErrorCode.IDLE_TIMEOUT.close, closed
    assert HELLO_TIMEOUT - 0.3 <= elapsed < HELLO_TIMEOUT + 1.0, f"closed after {elapsed:.2f}s"
    errors = [f for f in closed.frames if f["t"] == "error"]
    assert sum(f["code"] == "BAD_REQUEST" for f in errors) >= 2, "the junk frames were answered"
    assert errors[-1]["code"] == "IDLE_TIMEOUT"
    print(f"\nhello deadline: closed {elapsed:.2f}s after connect despite junk every second")


# -- msgpack length headers ------------------------------------------------------------------


def test_length_headers_beyond_the_body_are_refused_without_allocating():
    tracemalloc.start()
    try:
        for body in (BOMB, b"\xdf" + (30000).to_bytes(4, "big") + b"\xa1k\xc0",
                     b"\x91\xdb" + (1 << 30).to_bytes(4, "big") + b"x", b"\x92\xc6\x00\x00\x00\x10xy"):
            tracemalloc.reset_peak()
            with pytest.raises(BadRequest) as refused:
                wire.unpack(body, max_size=4 * MB)
            _, peak = tracemalloc.get_traced_memory()
            assert peak < 64 * 1024, f"{body[:6]!r}: peak {peak} bytes"
            assert refused.value.code is ErrorCode.BAD_REQUEST
    finally:
        tracemalloc.stop()
    # announced items spread over levels count against what remains, not one level at a time
    with pytest.raises(BadRequest, match="announces 4 items"):
        wire.unpack(b"\x93" + b"\xdc\x00\x04" * 3, max_size=4 * MB)


def test_legitimate_documents_still_decode():
    doc = {"v": 1, "client_id": "c", "cursor": None, "list": [[], [1, [2, [3]]], {}],
           "bin": b"\x00" * 300, "s": "é" * 40, "n": [None] * 70000, "f": 1.5, "neg": -(2**40)}
    assert wire.unpack(wire.pack(doc), max_size=4 * MB) == doc
    deep = 1
    for _ in range(wire.MAX_DEPTH):
        deep = [deep]
    assert wire.unpack(wire.pack(deep), max_size=MB) == deep
    with pytest.raises(BadRequest, match="deeper"):
        wire.unpack(wire.pack([deep]), max_size=MB)
    for bad in (b"\xc1", b"\x92\x01", b"\x01\x02", b"\xa5ab"):
        with pytest.raises(BadRequest):
            wire.unpack(bad, max_size=MB)


async def _peak_growth_mb(live: Live, attack) -> tuple[float, object]:
    pid = live.server.pid
    reset_peak(pid)
    before = status_kb(pid, "VmHWM")
    outcome = await attack()
    await asyncio.sleep(0.2)
    return (status_kb(pid, "VmHWM") - before) / 1024, outcome


async def test_length_bombs_are_refused_cheaply_on_pull_push_and_ws(live):
    """5,000 bytes of nested array headers: a 400 (or an error frame) with no memory spike.
    Before: the server's peak RSS rose by ~70 MB per request before the 400."""
    figures = {}
    for path in ("/sync/pull", "/sync/push"):
        grown, answer = await _peak_growth_mb(live, lambda p=path: exchange(live.port, post(p, live.token, BOMB)))
        assert status_of(answer) == 400, answer[:200]
        assert unpack(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "BAD_REQUEST"
        figures[path] = grown

    async def over_ws() -> dict:
        client = await WsClient.open(live.server.ws_url)
        try:
            await client.send_raw(BOMB)
            return await client.recv()
        finally:
            await close_all()

    grown, frame = await _peak_growth_mb(live, over_ws)
    assert frame["t"] == "error" and frame["code"] == "BAD_REQUEST", frame
    figures["ws"] = grown
    print(f"\npeak RSS growth per bomb (MB): { {k: round(v, 1) for k, v in figures.items()} }")
    assert all(v < 20 for v in figures.values()), figures
    # the server is fine afterwards
    pull = pack({"v": 1, "client_id": "c1", "cursor": None})
    assert status_of(await exchange(live.port, post("/sync/pull", live.token, pull))) == 200


def test_limit_settings_are_validated():
    base = {"FIELDSYNC_JWT_SECRET": "x" * 32, "FIELDSYNC_DATA_DIR": "/tmp/unused"}
    settings = Settings.from_env(base)
    assert (settings.max_header_bytes, settings.max_headers) == (32768, 100)
    assert (settings.header_timeout, settings.body_timeout, settings.ws_hello_timeout) == (10.0, 30.0, 10.0)
    for name, value in (("HEADER_TIMEOUT", "0"), ("BODY_TIMEOUT", "-1"), ("MAX_HEADER_BYTES", "100"),
                        ("MAX_HEADERS", "100000"), ("WS_HELLO_TIMEOUT", "nan"), ("HEADER_TIMEOUT", "soon")):
        with pytest.raises(ValueError, match=f"FIELDSYNC_{name}"):
            Settings.from_env({**base, f"FIELDSYNC_{name}": value})

