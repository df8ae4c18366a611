"""The local store and the outbox: interfaces (``typing.Protocol``) and in-memory versions.

A :class:`LocalStore` holds the device's datasets and its cursor and applies one batch (a
pull response or a ``changes`` frame) in one transaction: reset, upserts, deletes and the
cursor together, or nothing (protocol section 5.3). An :class:`Outbox` holds the device's
mutations in order, assigns their ids at enqueue (never reused) and keeps their results;
rejected mutations stay visible until the app dismisses them (section 6.4).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .replica import Replica

Key = Any  # int or str in protocol v1
Row = dict[str, Any]
MAX_INT = 2**53 - 1
MAX_DEPTH = 32
PENDING, APPLIED, REJECTED = "pending", "applied", "rejected"


@runtime_checkable
class LocalStore(Protocol):
    """Where a device keeps its datasets. ``apply`` is all-or-nothing."""

    @property
    def cursor(self) -> bytes | None: ...

    def apply(self, batch: Mapping[str, Any]) -> None: ...

    def rows(self, name: str) -> dict[Key, Row]: ...

    def datasets(self) -> list[str]: ...


@dataclass
class OutboxEntry:
    """One mutation of the device, with its result once the server answered."""

    id: int
    name: str
    args: dict[str, Any]
    at: int
    status: str = PENDING  # pending | applied | rejected
    code: str | None = None
    message: str | None = None
    result: dict[str, Any] | None = None
    dismissed: bool = False

    def wire(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "args": self.args, "at": self.at}


@runtime_checkable
class Outbox(Protocol):
    """Durable, ordered mutations: ids assigned at enqueue, results kept."""

    def enqueue(self, name: str, args: dict[str, Any], at: int | None = None) -> OutboxEntry: ...

    def pending(self, limit: int = 500) -> list[OutboxEntry]: ...

    def mark(self, results: Iterable[Mapping[str, Any]]) -> list[OutboxEntry]: ...

    def entries(self) -> list[OutboxEntry]: ...

    def rejected(self) -> list[OutboxEntry]: ...

    def pending_count(self) -> int: ...

    def dismiss(self, mutation_id: int) -> None: ...


# -- batch checks shared by the stores ------------------------------------------------------


@dataclass
class Part:
    name: str
    cols: list[str]
    keys: list[Key]
    rows: list[list[Any]]
    deletes: list[Key]


@dataclass
class Plan:
    reset: list[str]
    parts: list[Part] = field(default_factory=list)
    cursor: bytes | None = None


def plan_batch(batch: Mapping[str, Any], keys: Mapping[str, str]) -> Plan:
    """Check a batch before touching a store: a key at most once per dataset, rows as long
    as ``cols``, a ``bytes`` cursor. Raises ``ValueError`` (the store stays as it was)."""
    cursor = batch["cursor"]
    if not isinstance(cursor, bytes):
        raise ValueError("a batch's cursor must be bin")
    plan = Plan(reset=list(batch.get("reset") or ()), cursor=cursor)
    for name, part in (batch.get("data") or {}).items():
        cols = list(part["cols"])
        key = keys.get(name, "id")
        if key not in cols:
            raise ValueError(f"{name}: key column {key!r} missing from cols")
        index, width = cols.index(key), len(cols)
        rows = part.get("rows") or []
        if any(len(row) != width for row in rows):
            raise ValueError(f"{name}: a row does not match its {width} cols")
        row_keys = [row[index] for row in rows]
        seen = set(row_keys)
        if len(seen) != len(row_keys):
            raise ValueError(f"{name}: a key appears twice in one batch")
        deletes = list(part.get("deletes") or ())
        for deleted in deletes:
            if deleted in seen:
                raise ValueError(f"{name}: key {deleted!r} twice in one batch")
            seen.add(deleted)
        plan.parts.append(Part(name, cols, row_keys, rows, deletes))
    return plan


def check_value(value: Any, depth: int = 0) -> None:
    """Refuse what the server would refuse in mutation args (section 2): ints beyond ±2^53-1,
    NaN/inf, bin, U+0000, non-string map keys, nesting deeper than 32. Raises ``ValueError``."""
    if depth > MAX_DEPTH:
        raise ValueError("nested deeper than 32 levels")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not -MAX_INT <= value <= MAX_INT:
            raise ValueError(f"int {value} is outside ±(2^53 - 1)")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("NaN and infinity are not allowed")
    elif isinstance(value, str):
        if "\x00" in value:
            raise ValueError("U+0000 is not allowed in strings")
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_value(item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError("map keys must be strings")
            check_value(key, depth + 1)
            check_value(item, depth + 1)
    else:
        raise ValueError(f"{type(value).__name__} cannot be sent in mutation args")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- in-memory versions ------------------------------------------------------------------


class MemoryStore(Replica):
    """In-memory :class:`LocalStore` (tests, benchmarks). Checks the whole batch first and
    then changes the dicts with operations that cannot fail, so ``apply`` is atomic."""

    def apply(self, batch: Mapping[str, Any]) -> None:
        plan = plan_batch(batch, self.keys)
        data = self.data
        for name in plan.reset:
            data[name] = {}
        for part in plan.parts:
            rows = data.setdefault(part.name, {})
            cols = part.cols
            rows.update(zip(part.keys, [dict(zip(cols, row)) for row in part.rows]))
            for deleted in part.deletes:
                rows.pop(deleted, None)
        self.cursor = plan.cursor


class MemoryOutbox:
    """In-memory :class:`Outbox`; ``start_id`` continues a device's id sequence."""

    def __init__(self, start_id: int = 1) -> None:
        self._entries: dict[int, OutboxEntry] = {}
        self._next = start_id

    def enqueue(self, name: str, args: dict[str, Any], at: int | None = None) -> OutboxEntry:
        check_value(args)
        entry = OutboxEntry(self._next, name, dict(args), now_ms() if at is None else at)
        self._next += 1
        self._entries[entry.id] = entry
        return entry

    def pending(self, limit: int = 500) -> list[OutboxEntry]:
        return [e for e in self._entries.values() if e.status == PENDING][:limit]

    def mark(self, results: Iterable[Mapping[str, Any]]) -> list[OutboxEntry]:
        marked = []
        for result in results:
            entry = self._entries.get(result["id"])
            if entry is None or entry.status != PENDING:
                continue
            entry.status = result["status"]
            entry.code, entry.message, entry.result = result.get("code"), result.get("message"), result.get("result")
            marked.append(entry)
        return marked

    def entries(self) -> list[OutboxEntry]:
        return list(self._entries.values())

    def rejected(self) -> list[OutboxEntry]:
        return [e for e in self._entries.values() if e.status == REJECTED and not e.dismissed]

    def pending_count(self) -> int:
        return sum(1 for e in self._entries.values() if e.status == PENDING)

    def dismiss(self, mutation_id: int) -> None:
        if mutation_id in self._entries:
            self._entries[mutation_id].dismissed = True
