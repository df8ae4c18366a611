"""``server.ws_protocol`` and ``server.outbox``: what the shared deflate sends decodes, with
the websockets library's own client extension, to exactly the frame the server meant; its
cache stays bounded; the lighter queue, event and outbox keep their promises."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode

OP_BINARY, OP_PING = Opcode.BINARY, Opcode.PING

from server import ws_protocol
from server.outbox import Outbox
from server.ws_protocol import CompressedCache, Flag, Inbox, SharedDeflateFactory, SharedTail


def negotiated():
    """Both ends of one negotiation, as a default client offers it."""
    client_factory = ClientPerMessageDeflateFactory(client_max_window_bits=True)
    offer = client_factory.get_request_params()
    response, server_side = SharedDeflateFactory().process_request_params(offer, [])
    client_side = client_factory.process_response_params(response, [])
    return server_side, client_side, dict(response)


def roundtrip(payload: bytes) -> tuple[Frame, bytes]:
    server_side, client_side, _ = negotiated()
    sent = server_side.encode(Frame(OP_BINARY, payload))
    return sent, client_side.decode(sent).data


def test_both_ways_without_context_takeover():
    server_side, client_side, response = negotiated()
    assert "server_no_context_takeover" in response and "client_no_context_takeover" in response
    assert not hasattr(server_side, "encoder") and not hasattr(server_side, "decoder"), \
        "an idle session keeps no zlib state"


@settings(max_examples=80, deadline=None)
@given(head=st.binary(min_size=1, max_size=300), tail=st.binary(max_size=70_000),
       repeat=st.integers(1, 3))
def test_shared_tail_frames_decode_to_head_and_tail(head, tail, repeat):
    tail = tail * repeat  # compressible as well as random tails
    sent, received = roundtrip(SharedTail(head, tail))
    assert received == head + tail and sent.rsv1


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=5000) | st.text(max_size=3000).map(str.encode))
def test_plain_frames_decode_to_themselves(payload):
    sent, received = roundtrip(payload)
    assert received == payload
    assert sent.rsv1 == (len(payload) >= ws_protocol.SMALL)


def test_control_frames_pass_untouched():
    server_side, _, _ = negotiated()
    ping = Frame(OP_PING, b"x")
    assert server_side.encode(ping) is ping


def test_a_shared_payload_is_compressed_once():
    data = b"catalog rows " * 500
    before = ws_protocol.CACHE.misses
    outputs = set()
    for n in range(20):  # twenty sessions, each with its own cursor in the head
        server_side, client_side, _ = negotiated()
        frame = SharedTail(b"head %d" % n, data)
        sent = server_side.encode(Frame(OP_BINARY, frame))
        assert client_side.decode(sent).data == frame
        outputs.add(bytes(sent.data[5 + len(b"head %d" % n):]))  # after the stored head block
    assert ws_protocol.CACHE.misses - before == 1 and len(outputs) == 1


def test_the_cache_keeps_within_its_bounds():
    cache = CompressedCache(max_bytes=200_000, max_entries=8)
    for n in range(100):
        cache.compress(bytes([n % 256]) * 10_000, 12, {"memLevel": 5})
        assert len(cache._items) <= 8 and cache._bytes <= 200_000
    huge = bytes(range(256)) * 1000  # more than a quarter of the budget: compressed, not kept
    cache.compress(huge, 12, {"memLevel": 5})
    assert all(key[1] is not huge for key in cache._items)


# -- the lighter per-connection parts ---------------------------------------------------------------

async def test_inbox_hands_items_over_in_order_and_wakes_a_waiting_reader():
    inbox = Inbox()
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait("connect")
    inbox.put_nowait("receive")
    assert await reader == "connect"
    assert not inbox.empty() and await inbox.get() == "receive" and inbox.empty()


async def test_flag_releases_every_waiter_when_set():
    flag = Flag()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    flag.set()
    await asyncio.gather(*waiters)
    flag.clear()
    assert not flag.is_set()


class Socket:
    """A socket stand-in that records what is sent and can be told to stop accepting."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.open = asyncio.Event()
        self.open.set()

    async def send(self, frame: bytes) -> None:
        await self.open.wait()
        self.sent.append(frame)


def outbox_on(socket: Socket, slow_after: float = 0.2):
    events: list[str] = []

    async def stalled() -> None:
        events.append("stalled")

    box = Outbox(socket.send, limit=2, slow_after=slow_after, on_drained=lambda: events.append("drained"),
                 on_stalled=stalled)
    return box, events


async def test_outbox_sends_in_order_and_holds_no_task_while_idle():
    socket = Socket()
    box, events = outbox_on(socket)
    for n in range(5):
        await box.put(b"%d" % n)
    await asyncio.sleep(0.01)
    assert socket.sent == [b"0", b"1", b"2", b"3", b"4"] and box.frames_sent == 5
    assert box._sender is None and events == []


async def test_outbox_marks_a_device_behind_then_catches_it_up_when_drained():
    socket = Socket()
    socket.open.clear()  # the device stops reading
    box, events = outbox_on(socket, slow_after=5)
    box.offer(b"a")
    box.offer(b"b")
    assert not box.has_room() and box.behind_since is not None
    socket.open.set()
    await asyncio.sleep(0.01)
    assert socket.sent == [b"a", b"b"] and box.behind_since is None and events == ["drained"]


async def test_outbox_gives_up_on_a_socket_that_accepts_nothing():
    socket = Socket()
    socket.open.clear()
    box, events = outbox_on(socket, slow_after=0.05)
    box.offer(b"a")
    await asyncio.sleep(0.2)
    assert events == ["stalled"] and socket.sent == []
    await box.close()
