"""A live round that fails on the database is tried again, and its sessions stay due.

The database here is a real PostgreSQL URL on a port nothing listens on: every round
fails the way it would while the server restarts.
"""

from __future__ import annotations

import asyncio

from server import live
from server.fanout import Notice
from server.live import Hub
from sync.cursor import CursorCodec
from sync.reader import Reader
from sync.schema import Principal
from sync.storage import Database

from .live_support import free_port


class Terminal:
    """The part of a WebSocket session the hub uses."""

    def __init__(self) -> None:
        self.principal = Principal(1, 1, "pos", {})
        self.client_id = "till-1"
        self.cursor = None
        self.buckets = frozenset({"catalog"})
        self.dirty = False
        self.asked = 0

    def is_live(self) -> bool:
        self.asked += 1
        return True

    def has_room(self) -> bool:
        return True

    def offer(self, frame: bytes, reset: bool = False) -> None:
        raise AssertionError("no frame can be built without the database")

    async def close_for(self, code: object, message: str) -> None:
        return None


async def test_a_failed_round_keeps_its_sessions_due_and_retries(monkeypatch):
    monkeypatch.setattr(live, "RETRY_ROUND_S", 0.05)
    db = Database(f"postgresql://postgres@127.0.0.1:{free_port()}/nothing")
    hub = Hub(db, Reader(db, None, CursorCodec(b"k" * 32)))  # the registry is never reached
    till = Terminal()
    hub.add(till)
    try:
        hub.notify(Notice(1, 5, frozenset({"catalog"}), at=1.0))
        await asyncio.sleep(0.5)
        assert till.dirty, "the failed round dropped what woke the session"
        assert till.asked >= 2, "the round was not tried again"
    finally:
        await hub.stop()
        await db.dispose()
