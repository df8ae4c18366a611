"""Reference Python client of the fieldsync protocol v1 (used by tests, benchmarks and the simulator).

* :class:`SyncClient`: live sync over WebSocket with an explicit state machine
  (``offline → connecting → catching_up → live``, ``closed``), reconnect with back-off and
  jitter, HTTP pull/push as the fallback;
* :class:`LocalStore` / :class:`Outbox`: the interfaces it syncs through, with in-memory
  (:class:`MemoryStore`, :class:`MemoryOutbox`) and SQLite (:class:`SqliteStore`,
  :class:`SqliteOutbox`) versions;
* :class:`Replica` and :class:`HttpSync`: the small in-memory copy and HTTP pull/push helper
  the server's tests use directly.
"""

from .client import ConnectionLost, SyncClient, SyncFatal
from .http import HttpSync, SyncHttpError
from .replica import Replica
from .sqlite import SqliteOutbox, SqliteStore
from .state import Backoff, IllegalTransition, State, StateMachine, Status
from .store import LocalStore, MemoryOutbox, MemoryStore, Outbox, OutboxEntry, check_value, plan_batch

__all__ = [
    "Backoff", "ConnectionLost", "HttpSync", "IllegalTransition", "LocalStore", "MemoryOutbox", "MemoryStore",
    "Outbox", "OutboxEntry", "Replica", "SqliteOutbox", "SqliteStore", "State", "StateMachine", "Status",
    "SyncClient", "SyncFatal", "SyncHttpError", "check_value", "plan_batch",
]
