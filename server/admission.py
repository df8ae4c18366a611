"""Admission control: who may be served now, decided before any database work.

Two refusals, both with ``retry_after`` and both changing nothing:

* **Rate limits** (``RATE_LIMITED``, HTTP 429): every device (tenant, ``client_id``) and every
  user (tenant, user id) has a token bucket of requests. A pull, a push, a WebSocket
  ``hello`` or a ``push`` frame takes one token from both; a request that finds either
  empty is refused with the seconds until a token is back. The user bucket is what stops
  one token from minting fresh ``client_id``\\s to get fresh device buckets.
* **Snapshot slots** (``UNAVAILABLE``, HTTP 503): at most ``max_snapshots`` snapshot pages
  are read and encoded at once in this process. A storm of fresh devices otherwise queues
  for the database pool behind one another (and in front of every push and incremental
  pull) until the pool's timeout fails them all; refused early, they come back after
  ``retry_after`` plus their own jitter.

Both are per process: with N ``web`` processes behind a balancer a device gets up to N
times its rate at worst (a sticky balancer keeps it to one). No Redis round trip per
request; a shared limiter is not needed to stop the overloads above.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Any

from sync.errors import ErrorCode, SyncError

from . import metrics


class TokenBucket:
    """``burst`` tokens, refilled continuously at ``rate`` a second; the clock is the caller's."""

    __slots__ = ("rate", "burst", "tokens", "at")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.at = float(burst), now

    def refill(self, now: float) -> None:
        if now > self.at:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now

    def wait(self, now: float) -> float:
        """Seconds until one token is there (0: one is there now)."""
        self.refill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def take(self) -> None:
        self.tokens -= 1


class RateLimiter:
    """Token buckets by key, at most ``max_keys`` of them: the least recently used goes first.

    A bucket untouched for ``burst / rate`` seconds is full, the same as a new one, so
    forgetting it loses nothing; only past ``max_keys`` active keys does a forgotten
    bucket give its key a fresh burst early.
    """

    def __init__(self, rate: float, burst: int, *, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.max_keys, self.clock = rate, burst, max_keys, clock
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    def bucket(self, key: Hashable, now: float) -> TokenBucket:
        found = self._buckets.get(key)
        if found is None:
            found = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return found

    def __len__(self) -> int:
        return len(self._buckets)


class SnapshotSlots:
    """A counter of snapshot pages in flight, refused (never queued) past ``limit``."""

    def __init__(self, limit: int, retry_after: int) -> None:
        self.limit, self.retry_after = limit, retry_after
        self.in_flight = 0

    @contextlib.contextmanager
    def hold(self, framing: str) -> Iterator[None]:
        """One slot for the ``with`` block, or UNAVAILABLE with ``retry_after`` at once."""
        if self.in_flight >= self.limit:
            metrics.ADMISSION_REFUSED.labels("snapshots", framing).inc()
            raise SyncError(ErrorCode.UNAVAILABLE, f"{self.limit} snapshots are being served; retry in "
                            f"{self.retry_after}s", retry_after=self.retry_after)
        self.in_flight += 1
        metrics.SNAPSHOTS_IN_FLIGHT.inc()
        try:
            yield
        finally:
            self.in_flight -= 1
            metrics.SNAPSHOTS_IN_FLIGHT.dec()


class Admission:
    """The rate limits and snapshot slots of one process, built from the settings."""

    def __init__(self, settings: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = settings.rate_limits
        self.clock = clock
        self.devices = RateLimiter(settings.device_rate, settings.device_burst, clock=clock)
        self.users = RateLimiter(settings.user_rate, settings.user_burst, clock=clock)
        self.snapshots = SnapshotSlots(settings.max_snapshots, settings.snapshot_retry_after)

    def admit(self, tenant_id: int, user_id: int, client_id: str, framing: str) -> None:
        """Take a token from the device's and the user's bucket, or raise RATE_LIMITED.

        Neither is taken unless both have one: a device refused by its own limit does not
        spend its user's tokens for the user's other devices.
        """
        if not self.enabled:
            return
        now = self.clock()
        device = self.devices.bucket((tenant_id, client_id), now)
        user = self.users.bucket((tenant_id, user_id), now)
        for limit, bucket in (("device", device), ("user", user)):
            wait = bucket.wait(now)
            if wait > 0:
                metrics.ADMISSION_REFUSED.labels(limit, framing).inc()
                seconds = max(1, math.ceil(wait))  # Retry-After is whole seconds
                raise SyncError(ErrorCode.RATE_LIMITED, f"too many requests from this {limit}; retry in {seconds}s",
                                retry_after=seconds)
        device.take()
        user.take()
