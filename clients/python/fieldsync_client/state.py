"""The client's state machine, its status snapshot and the reconnect back-off."""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass


class State(str, enum.Enum):
    OFFLINE = "offline"  # not connected: waiting for the network or for the back-off delay
    CONNECTING = "connecting"  # opening the WebSocket (or falling back to HTTP)
    CATCHING_UP = "catching_up"  # applying batches until one says more = false
    LIVE = "live"  # at a consistent checkpoint; live frames (WS) or polling (HTTP)
    CLOSED = "closed"  # stopped for good: closed by the app or a fatal error (revoked, bad token)


TRANSITIONS: dict[State, frozenset[State]] = {
    State.OFFLINE: frozenset({State.CONNECTING, State.CLOSED}),
    State.CONNECTING: frozenset({State.CATCHING_UP, State.OFFLINE, State.CLOSED}),
    State.CATCHING_UP: frozenset({State.LIVE, State.OFFLINE, State.CLOSED}),
    State.LIVE: frozenset({State.OFFLINE, State.CLOSED}),
    State.CLOSED: frozenset(),
}


class IllegalTransition(RuntimeError):
    pass


class StateMachine:
    """``offline → connecting → catching_up → live``, back to ``offline`` on any failure,
    ``closed`` from anywhere and never left. Any other step raises :class:`IllegalTransition`."""

    def __init__(self, state: State = State.OFFLINE) -> None:
        self.state = state

    def step(self, new: State) -> State:
        old = self.state
        if new not in TRANSITIONS[old]:
            raise IllegalTransition(f"illegal client transition {old.value} -> {new.value}")
        self.state = new
        return old


@dataclass(frozen=True)
class Status:
    """What a sync status bar shows; a snapshot (``SyncClient.status``)."""

    state: State
    transport: str | None  # "ws", "http" or None when not connected
    catchup_batches: int  # batches applied since the current connection began
    catchup_rows: int  # rows (upserts + deletes) applied since then: the catch-up progress
    batches: int  # batches applied in the client's lifetime
    rows: int
    connects: int  # sessions opened (WS or HTTP)
    last_applied_at: float | None  # time.time() of the last applied batch
    checkpoint_at: float | None  # time.time() when the store was last at more = false
    pending: int  # mutations waiting in the outbox
    in_flight: int  # of which sent and not answered yet
    rejected: int  # rejected mutations not dismissed by the app
    last_error: str | None
    fatal: str | None  # the error code that closed the client (REVOKED, AUTH_INVALID, ...)

    @property
    def in_sync(self) -> bool:
        """Live, and nothing left to push."""
        return self.state is State.LIVE and self.pending == 0


class Backoff:
    """Exponential back-off with "equal jitter": attempt n waits between d/2 and d, where
    d = min(cap, base * factor**n). ``reset`` after a session that reached live."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, factor: float = 2.0,
                 rng: random.Random | None = None) -> None:
        self.base, self.cap, self.factor = base, cap, factor
        self.attempt = 0
        self.rng = rng or random.Random()

    def next(self, at_least: float = 0.0) -> float:
        ceiling = min(self.cap, self.base * self.factor ** self.attempt)
        self.attempt += 1
        return max(at_least, ceiling / 2 + self.rng.uniform(0, ceiling / 2))

    def after(self, retry_after: float) -> float:
        """The server said when (``retry_after``, RATE_LIMITED or UNAVAILABLE): that long plus
        up to as long again, so devices refused together do not all come back together."""
        return retry_after + self.rng.uniform(0, retry_after)

    def reset(self) -> None:
        self.attempt = 0
