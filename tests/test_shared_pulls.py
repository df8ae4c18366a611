"""``sync.shared_pulls``: one computation per key and moment, whatever the callers do."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync.schema import Principal
from sync.shared_pulls import SharedPulls, pull_key


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def counting(results: dict[str, int]):
    """A computation per key that counts how often it ran and yields to the loop meanwhile."""
    def compute(key: str):
        async def run() -> tuple[str, int]:
            results[key] = results.get(key, 0) + 1
            await asyncio.sleep(0.001)
            return key, results[key]
        return run
    return compute


async def test_callers_of_one_key_at_once_share_one_computation():
    ran: dict[str, int] = {}
    seen: list[bool] = []
    pulls = SharedPulls(on_result=seen.append)
    compute = counting(ran)
    results = await asyncio.gather(*(pulls.run("a", compute("a")) for _ in range(50)),
                                   *(pulls.run("b", compute("b")) for _ in range(5)))
    assert ran == {"a": 1, "b": 1}
    assert set(results) == {("a", 1), ("b", 1)}
    assert seen.count(False) == 2 and seen.count(True) == 53


async def test_a_result_is_kept_for_the_ttl_only():
    clock, ran = Clock(), {}
    pulls = SharedPulls(ttl_s=2.0, clock=clock)
    compute = counting(ran)
    assert await pulls.run("a", compute("a")) == ("a", 1)
    clock.now = 1.9
    assert await pulls.run("a", compute("a")) == ("a", 1)
    clock.now = 2.0
    assert await pulls.run("a", compute("a")) == ("a", 2)


async def test_a_failure_reaches_the_waiting_callers_and_is_not_remembered():
    pulls: SharedPulls[int] = SharedPulls()
    attempts = []

    async def failing() -> int:
        attempts.append(1)
        await asyncio.sleep(0.001)
        raise RuntimeError("database away")

    outcomes = await asyncio.gather(*(pulls.run("k", failing) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes) and len(attempts) == 1
    assert len(pulls) == 0

    async def fine() -> int:
        return 7

    assert await pulls.run("k", fine) == 7


async def test_the_first_caller_going_away_does_not_cancel_the_others():
    pulls: SharedPulls[str] = SharedPulls()
    release = asyncio.Event()

    async def slow() -> str:
        await release.wait()
        return "batch"

    first = asyncio.create_task(pulls.run("k", slow))
    await asyncio.sleep(0)
    second = asyncio.create_task(pulls.run("k", slow))
    await asyncio.sleep(0)
    first.cancel()  # the first device disconnected mid catch-up
    release.set()
    assert await second == "batch"
    with pytest.raises(asyncio.CancelledError):
        await first


def test_the_key_tells_users_cursors_limits_and_enrolments_apart():
    pos = Principal(1, 10, "pos", {"branch_id": 3})
    same = Principal(1, 10, "pos", {"branch_id": 3})
    assert pull_key(pos, b"c", None, None) == pull_key(same, b"c", None, None)
    others = [pull_key(Principal(2, 10, "pos", {"branch_id": 3}), b"c", None, None),
              pull_key(Principal(1, 11, "pos", {"branch_id": 3}), b"c", None, None),
              pull_key(Principal(1, 10, "pos", {"branch_id": 4}), b"c", None, None),
              pull_key(pos, b"d", None, None), pull_key(pos, None, None, None),
              pull_key(pos, b"c", 100, None), pull_key(pos, b"c", None, 5)]
    assert len({pull_key(pos, b"c", None, None), *others}) == 1 + len(others)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.floats(0, 1.5), st.integers(1, 4)), max_size=40),
       st.integers(1, 4))
def test_bounded_and_never_stale_beyond_the_ttl(steps, max_entries):
    """Whatever the order of calls: at most ``max_entries`` finished results are kept, and a
    caller never gets a result finished more than ``ttl_s`` before it asked."""
    async def scenario() -> None:
        clock, ran = Clock(), {}
        pulls = SharedPulls(ttl_s=1.0, max_entries=max_entries, clock=clock)
        finished: dict[tuple[str, int], float] = {}

        def compute(key: str):
            async def run() -> tuple[str, int]:
                ran[key] = ran.get(key, 0) + 1
                generation = ran[key]
                await asyncio.sleep(0)
                finished[(key, generation)] = clock.now
                return key, generation
            return run

        for key, advance, callers in steps:
            clock.now += advance
            asked = clock.now
            results = await asyncio.gather(*(pulls.run(key, compute(key)) for _ in range(callers)))
            assert len(set(results)) == 1 and results[0][0] == key
            assert asked - finished[results[0]] < 1.0
            assert len(pulls) <= max_entries

    asyncio.run(scenario())
