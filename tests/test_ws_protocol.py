"""``server.ws_protocol``: what it sends decodes, with the websockets library's own client
extension, to exactly the frame the server meant; and its cache stays bounded."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode

OP_BINARY, OP_PING = Opcode.BINARY, Opcode.PING

from server import ws_protocol
from server.ws_protocol import CompressedCache, SharedDeflateFactory, SharedTail


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
