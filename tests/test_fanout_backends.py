"""One contract for every fan-out backend (server.fanout.Fanout), picked by URL: what one
subscriber publishes, every subscriber hears; ping answers; stop ends it. Run over the
in-process backend and Redis, on both databases (the safety poll reads the log head)."""

from __future__ import annotations

import asyncio

import pytest

from server.fanout import Fanout, MemoryFanout, Notice, RedisFanout, fanout_for

from .live_support import REDIS_URL, redis_prefix, require_redis


@pytest.fixture(params=["memory", "redis"])
async def backends(request, services) -> list[Fanout]:
    """Two subscribers of one backend, as two processes would be (memory: one process)."""
    if request.param == "redis":
        require_redis()
        prefix = redis_prefix()
        made = [fanout_for(REDIS_URL, services.db, prefix=prefix, poll_interval=0.5) for _ in range(2)]
    else:
        made = [fanout_for(None, services.db, prefix="unused", poll_interval=0.5)]
    yield made
    for fanout in made:
        await fanout.stop()


def test_the_url_picks_the_backend(services):
    assert isinstance(fanout_for(None, services.db, prefix="p", poll_interval=1), MemoryFanout)
    assert isinstance(fanout_for("memory://", services.db, prefix="p", poll_interval=1), MemoryFanout)
    assert isinstance(fanout_for("redis://127.0.0.1:6379/0", services.db, prefix="p", poll_interval=1), RedisFanout)
    with pytest.raises(ValueError, match="no fan-out backend"):
        fanout_for("kafka://broker", services.db, prefix="p", poll_interval=1)


async def test_every_subscriber_hears_what_one_publishes(backends):
    heard: list[asyncio.Queue] = [asyncio.Queue() for _ in backends]
    for fanout, queue in zip(backends, heard):
        await fanout.start(queue.put_nowait, lambda: [], None)
    await asyncio.sleep(0.2)  # subscriptions are in place
    sent = Notice.of_commit(7, 42, ["products:*:active=True#"])
    await backends[0].publish(sent)
    for queue in heard:
        got = await asyncio.wait_for(queue.get(), 5)
        assert (got.tenant_id, got.seq, got.buckets) == (7, 42, sent.buckets)
    revoke = Notice(7, revoke_client="phone-1")
    await backends[-1].publish(revoke)
    for queue in heard:
        got = await asyncio.wait_for(queue.get(), 5)
        assert got.revoke_client == "phone-1"
    for fanout in backends:
        await fanout.ping()
