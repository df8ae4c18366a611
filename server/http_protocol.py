"""uvicorn's httptools HTTP/1.1 protocol with the limits a server facing phones needs: a
bounded request head, deadlines for the head and the body, and no draining of an upload
that has already been answered.

uvicorn 0.54 offers none of these for httptools, its fastest parser (h11's
``h11_max_incomplete_event_size`` bounds only the head's size, and h11 parses in Python):

* httptools gathers a header field in Python ``bytes`` however long it grows, so a 32 MB
  header costs 32 MB (more while it is concatenated), and the number of fields is free;
* a connection is timed only between requests (``timeout_keep_alive``): one that connects
  and sends nothing, or a byte of head or body now and then, stays open for good;
* after a response sent before the request body ended (a 413 on ``Content-Length``, a 401
  before the body is read), uvicorn reads and discards the rest of the upload so that the
  connection can serve another request.

Here a refused head gets ``431``, a late head or body ``408``, and an upload answered early
ends the connection. Each is closed the way Go's net/http does it: stop reading, send the
answer and a FIN, close a moment later. Closing at once with unread upload in the socket
makes the kernel send a reset, which can destroy the answer before the client reads it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

LINGER_S = 0.5  # between the FIN after a refusal and the close


@dataclass(frozen=True)
class HttpLimits:
    """What a request may take; see the ``FIELDSYNC_*`` HTTP limits in ``server/config.py``."""

    max_head_bytes: int = 32 * 1024
    max_headers: int = 100
    head_timeout: float = 10.0
    body_timeout: float = 30.0

    @classmethod
    def from_settings(cls, settings: Any) -> HttpLimits:
        return cls(settings.max_header_bytes, settings.max_headers, settings.header_timeout, settings.body_timeout)


class _HeadRefused(Exception):
    """Raised from a parser callback to stop httptools; the refusal is already sent."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` under :class:`HttpLimits` (pass them with ``functools.partial``:
    uvicorn builds one protocol per connection, also in worker processes)."""

    def __init__(self, *args: Any, limits: HttpLimits = HttpLimits(), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._head: int | None = None  # bytes of the request head being received; None between heads
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._finishing = False  # answered for good: reading stopped, closing soon

    # -- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._finishing:
            return
        super().data_received(data)
        # Counted after parsing: a read that also holds the end of the head is not a big head.
        # httptools buffers at most one read (64-256 KB) past the limit before this check. (A
        # read holding a request and the start of a pipelined one counts whole; phones do not
        # pipeline.)
        if self._head is not None and not self._finishing and not self.transport.is_closing():
            self._head += len(data)
            if self._head > self.limits.max_head_bytes:
                self._refuse(431, f"the request head exceeds {self.limits.max_head_bytes} bytes")

    def handle_websocket_upgrade(self) -> None:
        self._cancel_timers()  # the WebSocket protocol times its own handshake (hello)
        super().handle_websocket_upgrade()

    def send_400_response(self, msg: str) -> None:
        if not self._finishing:  # a refusal of ours stopped the parser: it is answered
            super().send_400_response(msg)

    # -- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head = 0
        if self._head_timer is None:  # a pipelined request: its head is due now
            self._head_timer = self.loop.call_later(self.limits.head_timeout, self._head_too_slow)

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= self.limits.max_headers:
            self._refuse(431, f"more than {self.limits.max_headers} header fields")
            raise _HeadRefused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head = None
        self._cancel(self._head_timer)
        self._head_timer = None
        # Armed for every request; one without a body completes in this same parse.
        self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_too_slow)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._cancel(self._body_timer)
        self._body_timer = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if not self.pipeline and self.cycle.more_body and not self.cycle.disconnected \
                and not self.transport.is_closing():
            # Answered before the upload ended: draining it would let a client make the server
            # read without bound; the connection ends instead (the client sees the FIN).
            self.server_state.total_requests += 1
            self._finish()
            return
        waiting = not self.pipeline
        super().on_response_complete()
        if waiting and self._head_timer is None and not self.transport.is_closing():
            self._await_head()  # the next head is due within the timeout (keep-alive idles less)

    # -- limits ----------------------------------------------------------------------------

    def _await_head(self) -> None:
        self._head_timer = self.loop.call_later(self.limits.head_timeout, self._head_too_slow)

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._head is None:  # not a byte of a request: an idle connection needs no answer
            self.transport.close()
        else:
            self._refuse(408, f"the request head did not arrive within {self.limits.head_timeout:g}s")

    def _body_too_slow(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if cycle is None or cycle.response_started:
            self._finish()
            return
        # The app sees a disconnect and whatever it sends later goes nowhere.
        cycle.disconnected, cycle.waiting_for_100_continue = True, False
        cycle.message_event.set()
        self._refuse(408, f"the request body did not arrive within {self.limits.body_timeout:g}s")

    def _refuse(self, status: int, message: str) -> None:
        body = message.encode()
        head = [STATUS_LINE[status]]
        head += [b"%s: %s\r\n" % pair for pair in self.server_state.default_headers]
        head.append(b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
                    % len(body))
        self.logger.info("%s: %s", status, message)
        self.transport.write(b"".join(head) + body)
        self._finish()

    def _finish(self) -> None:
        """Stop reading, send a FIN after what is written, and close shortly after."""
        if self._finishing or self.transport.is_closing():
            return
        self._finishing = True
        self._cancel_timers()
        self.transport.pause_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def _cancel_timers(self) -> None:
        self._cancel(self._head_timer)
        self._cancel(self._body_timer)
        self._head_timer = self._body_timer = None

    @staticmethod
    def _cancel(timer: asyncio.TimerHandle | None) -> None:
        if timer is not None:
            timer.cancel()
