"""Push: apply a device's mutations exactly once.

A push is applied in groups of consecutive mutations (at most :data:`GROUP`), each group in
one transaction. The group's ledger entries and the device's high-water mark commit with
its writes, so a crash loses the open group whole and nothing of it half: the device
replays its outbox, and the ledger answers what had committed with the results of its
first application. A group commits once: one log position, one COMMIT (one WAL flush), one
fan-out notice and one batch of after-commit work, where each mutation in its own
transaction paid all of these per mutation.

A group is applied optimistically first: its mutations one after another with no
savepoints, the rows they append (:meth:`ChangeSet.append`) written together at its end.
Should any mutation be refused, or any write fail, that attempt is rolled back whole and
the group applied again carefully: a SAVEPOINT per mutation, so a refused one rolls back
only its own writes and its refusal is recorded, and appended rows written at once. Both
run the same handlers in the same order over the same rows, so a group nothing refuses
commits what the careful pass would have, two round trips a mutation cheaper and with one
insert per appended table.

A refusal is final: it is in the ledger too, and shows in the ``rejections`` dataset the
domain declares over the ledger. Why groups, and why this keeps exactly-once:
docs/architecture.md, "Push".
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from .changes import ChangeSet, now_ms
from .errors import AuthError, ErrorCode, MutationRejected
from .messages import Mutation, MutationResult
from .schema import Principal, Registry
from .storage import Database, devices, mutation_ledger

log = logging.getLogger(__name__)

_RETRIES = 3
#: Mutations per transaction. Bounds how long a push holds the rows it locked (other
#: devices' pushes wait on them) and what a deadlock retry redoes; past ~100 the commit
#: it saves is a small part of a mutation's cost.
GROUP = 100


@dataclass
class MutationContext:
    """What a mutation handler gets: its transaction's writer and who sent it."""

    changes: ChangeSet
    principal: Principal
    client_id: str
    mutation_id: int
    at: int  # when the device says the user did it (ms)
    now: int  # when the server applies it (ms)
    #: Run after the transaction commits (enqueue jobs, notify): never for a refusal or a rollback.
    after_commit: list[Callable[[], Any]] = field(default_factory=list)
    #: Blocking work after the commit (a queue write): the push runs all of a group's in one
    #: worker thread, in order, rather than one thread hop per mutation.
    after_commit_blocking: list[Callable[[], None]] = field(default_factory=list)

    @property
    def conn(self) -> AsyncConnection:
        return self.changes.conn


@dataclass
class _AfterCommit:
    """What a group's applied mutations asked to run once it has committed."""

    hooks: list[Callable[[], Any]] = field(default_factory=list)
    blocking: list[Callable[[], None]] = field(default_factory=list)

    def add(self, ctx: MutationContext) -> None:
        self.hooks.extend(ctx.after_commit)
        self.blocking.extend(ctx.after_commit_blocking)

    async def run(self, registry: Registry) -> None:
        if self.blocking:
            await asyncio.to_thread(_run_blocking, registry, self.blocking)
        for hook in self.hooks:
            await _call(hook)


class _Unwind(Exception):
    """An optimistic attempt met a refusal or a failed write: roll it back, go carefully."""


class Pusher:
    def __init__(self, db: Database, registry: Registry, *, group: int = GROUP,
                 on_redo: Callable[[], None] | None = None) -> None:
        self.db = db
        self.registry = registry
        self.group = group
        self.on_redo = on_redo  # told of each group applied again carefully (a metric)

    async def push(self, principal: Principal, client_id: str, mutations: list[Mutation]) -> list[MutationResult]:
        """Results per mutation, in order; ids strictly increase (the wire parser checks)."""
        results: list[MutationResult] = []
        for start in range(0, len(mutations), self.group):
            results += await self._push_group(principal, client_id, mutations[start:start + self.group])
        return results

    async def _push_group(self, principal: Principal, client_id: str, group: list[Mutation]) -> list[MutationResult]:
        for attempt in range(_RETRIES):
            try:
                try:
                    return await self._apply_group(principal, client_id, group, careful=False)
                except _Unwind:
                    if self.on_redo is not None:
                        self.on_redo()
                    return await self._apply_group(principal, client_id, group, careful=True)
            except sa.exc.DBAPIError as exc:
                # A deadlock with another push: the group's locks are taken mutation by
                # mutation, so two groups can wait on each other. All of it rolled back.
                if not _is_retryable(exc) or (len(group) == 1 and attempt == _RETRIES - 1):
                    raise
                log.info("push group %s:%s.. retried after %s", client_id, group[0].id,
                         str(exc.orig).splitlines()[0][:120])
        # Deadlocked every time: groups of one hold the locks of one mutation only, taken in
        # a stable order, and cannot deadlock with their own kind.
        return [result for m in group for result in await self._push_group(principal, client_id, [m])]

    async def _apply_group(self, principal: Principal, client_id: str, group: list[Mutation], *,
                           careful: bool) -> list[MutationResult]:
        """Raises:
            _Unwind: not careful, and a mutation was refused or a write failed."""
        after = _AfterCommit()
        apply = self._apply_in_savepoint if careful else self._apply_directly
        async with self.db.write() as conn:
            device = await _lock_device(conn, self.db, principal, client_id)
            epoch, mark = device.epoch, device.last_mutation_id
            stored = await _stored(conn, principal, client_id, epoch, [m.id for m in group if m.id <= mark])
            changes = ChangeSet(self.db, conn, self.registry, principal.tenant_id, deferring=not careful)
            results, ledger = [], []
            for m in group:
                if m.id <= mark:  # a replay: the first application's result, or a refusal
                    results.append(stored.get(m.id) or _not_above(m, mark, device.forgot_through))
                    continue
                outcome = await apply(changes, principal, client_id, m, after)
                results.append(outcome)
                ledger.append(_ledger_row(principal, client_id, epoch, m, outcome))
            await _flush(changes)
            if ledger:
                await changes.insert(mutation_ledger, ledger)
                await conn.execute(_RAISE_MARK, {"tenant": principal.tenant_id, "client": client_id,
                                                 "mark": group[-1].id, "seen": now_ms()})
            seq = await changes.commit_position()
        if seq is not None:
            self.db.notify(principal.tenant_id, seq, changes.buckets)
        await after.run(self.registry)
        return results

    async def _apply_directly(self, changes: ChangeSet, principal: Principal, client_id: str, m: Mutation,
                              after: _AfterCommit) -> MutationResult:
        """Run one mutation with no savepoint: nothing may refuse or fail in this attempt."""
        try:
            outcome, ctx = await self._run(changes, principal, client_id, m)
        except (MutationRejected, sa.exc.DataError, sa.exc.IntegrityError) as exc:
            raise _Unwind from exc
        if ctx is not None:
            after.add(ctx)
        return outcome

    async def _apply_in_savepoint(self, changes: ChangeSet, principal: Principal, client_id: str, m: Mutation,
                                  after: _AfterCommit) -> MutationResult:
        """Run one mutation under its own savepoint; a refusal rolls back its writes only."""
        try:
            async with changes.conn.begin_nested():
                outcome, ctx = await self._run(changes, principal, client_id, m)
        except MutationRejected as refusal:  # its savepoint rolled back the handler's writes
            return _refusal(m, refusal)
        except sa.exc.DataError as exc:
            # A value the database cannot hold slipped past validation: refuse it for good
            # rather than fail the push, which would block the outbox.
            log.warning("mutation %s:%s refused: %s", client_id, m.id, exc.orig)
            return _refusal(m, MutationRejected(ErrorCode.INVALID_ARGS, "an argument is out of range for this server"))
        except sa.exc.IntegrityError as exc:
            # Rows already on the server (another device made the same id meanwhile): this
            # device's own replays cannot race here, its row is locked for the group.
            log.info("mutation %s:%s hit %s", client_id, m.id, str(exc.orig).splitlines()[0])
            return _refusal(m, MutationRejected(ErrorCode.CONFLICT, "the mutation conflicts with rows already on the server"))
        if ctx is not None:
            after.add(ctx)
        return outcome

    async def _run(self, changes: ChangeSet, principal: Principal, client_id: str,
                   m: Mutation) -> tuple[MutationResult, MutationContext | None]:
        """The handler's outcome and its context (what it asked to run after commit).

        Raises:
            MutationRejected: the mutation is refused (unknown, not the role's, bad
                arguments, or by its handler).
        """
        spec = self.registry.mutations.get(m.name)
        if spec is None:
            raise MutationRejected(ErrorCode.UNKNOWN_MUTATION, f"no mutation named {m.name!r}")
        if principal.role not in spec.roles:
            raise MutationRejected(ErrorCode.FORBIDDEN, f"role {principal.role} may not {m.name}")
        spec.check_args(m.args)
        _check_storable(m.args)
        ctx = MutationContext(changes, principal, client_id, m.id, m.at, now_ms())
        result = await spec.handler(ctx, m.args)
        outcome: MutationResult = {"id": m.id, "status": "applied"}
        if result is not None:
            outcome["result"] = result
        return outcome, ctx


async def _flush(changes: ChangeSet) -> None:
    """Write the rows the group appended; one refused (a key taken) unwinds the attempt."""
    try:
        await changes.flush()
    except (sa.exc.DataError, sa.exc.IntegrityError) as exc:
        raise _Unwind from exc


def _refusal(m: Mutation, refusal: MutationRejected) -> MutationResult:
    return {"id": m.id, "status": "rejected", "code": refusal.code.value, "message": refusal.message}


async def _lock_device(conn: AsyncConnection, db: Database, principal: Principal, client_id: str) -> Any:
    """The device's ledger epoch, high-water mark and what its retirement forgot, its row
    locked until commit: that serialises the device's pushes, so two copies of one push
    cannot both apply a mutation."""
    device = (await conn.execute(db.locking(_device_query(principal, client_id)))).first()
    _check_device(device, principal, client_id)
    return device


def _device_query(principal: Principal, client_id: str) -> sa.Select:
    return sa.select(devices.c.user_id, devices.c.epoch, devices.c.last_mutation_id, devices.c.forgot_through).where(
        devices.c.tenant_id == principal.tenant_id, devices.c.client_id == client_id)


def _check_device(device: Any, principal: Principal, client_id: str) -> None:
    if device is None:
        raise LookupError(f"device {client_id} is not registered; touch it before pushing")
    if device.user_id != principal.user_id:
        # touch() refused this already; a move of the device since then lands here.
        raise AuthError(ErrorCode.FORBIDDEN, f"device {client_id} belongs to another user")


# The device row is written here anyway: its ``last_seen`` comes along, so a push needs no
# registration write of its own (``devices.touch`` only reads for a known, fresh device).
_RAISE_MARK = sa.update(devices).where(
    devices.c.tenant_id == sa.bindparam("tenant"), devices.c.client_id == sa.bindparam("client"),
    devices.c.last_mutation_id < sa.bindparam("mark"),
).values(last_mutation_id=sa.bindparam("mark"), last_seen=sa.bindparam("seen"))


async def _stored(conn: AsyncConnection, principal: Principal, client_id: str, epoch: int,
                  ids: list[int]) -> dict[int, MutationResult]:
    """The ledger's results of the given mutation ids (a replayed push): one statement."""
    if not ids:
        return {}
    rows = (await conn.execute(sa.select(mutation_ledger).where(
        mutation_ledger.c.tenant_id == principal.tenant_id,
        mutation_ledger.c.client_id == client_id,
        mutation_ledger.c.epoch == epoch,
        mutation_ledger.c.mutation_id.in_(ids),
    ))).mappings()
    return {row["mutation_id"]: _result_of(row) for row in rows}


def _not_above(m: Mutation, mark: int, forgot_through: int) -> MutationResult:
    if m.id <= forgot_through:  # its entry went with the device's retirement
        return {"id": m.id, "status": "rejected", "code": ErrorCode.CONFLICT.value,
                "message": f"mutation id {m.id} was handled before this device was retired as stale, and its "
                           "result is no longer kept; it was not applied again"}
    return {"id": m.id, "status": "rejected", "code": ErrorCode.CONFLICT.value,
            "message": f"mutation id {m.id} is not above {mark}, the last this device sent; "
                       "ids must strictly increase"}


def _result_of(row: Any) -> MutationResult:
    result: MutationResult = {"id": row["mutation_id"], "status": row["status"]}
    if row["code"]:
        result["code"] = row["code"]
        result["message"] = row["message"] or ""
    if row["result"] is not None:
        result["result"] = row["result"]
    return result


def _run_blocking(registry: Registry, calls: list[Callable[[], None]]) -> None:
    try:
        with registry.after_commit_batch():
            for call in calls:
                try:
                    call()
                except Exception:  # noqa: BLE001 - logged; the mutations are committed whatever the work does
                    log.exception("after-commit work failed")
    except Exception:  # noqa: BLE001 - the batch itself failed to write: as above
        log.exception("after-commit work failed")


async def _call(hook: Callable[[], Any]) -> None:
    """After-commit hooks must not turn an applied mutation into a failed push."""
    try:
        outcome = hook()
        if hasattr(outcome, "__await__"):
            await outcome
    except Exception:  # noqa: BLE001 - logged; the mutation is committed whatever the hook does
        log.exception("after-commit hook failed")


def _ledger_row(principal: Principal, client_id: str, epoch: int, m: Mutation,
                outcome: MutationResult) -> dict[str, Any]:
    # Ledger ids are global while client ids are per tenant (and per epoch once moved):
    # "<tenant>:<client>:<id>", or "<tenant>/<epoch>:<client>:<id>" from the first move on.
    # Unambiguous whatever the client id holds: digits, then ":" or "/", then digits.
    namespace = f"{principal.tenant_id}/{epoch}" if epoch else str(principal.tenant_id)
    return {
        "id": f"{namespace}:{client_id}:{m.id}",
        "client_id": client_id,
        "epoch": epoch,
        "mutation_id": m.id,
        "user_id": principal.user_id,
        "name": m.name[:64],
        # An applied mutation's arguments passed _check_storable: no second JSON encoding.
        "args": m.args if outcome["status"] == "applied" or _storable(m.args) else {},
        "at": m.at,
        "status": outcome["status"],
        "code": outcome.get("code"),
        "message": outcome.get("message"),
        "result": outcome.get("result"),
        "applied_at": now_ms(),
    }


def _storable(args: Any) -> bool:
    try:
        json.dumps(args, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _check_storable(args: Any) -> None:
    if not _storable(args):
        raise MutationRejected(ErrorCode.INVALID_ARGS, "arguments may hold only maps, arrays, strings, numbers, bools and nil")


def _is_retryable(exc: sa.exc.DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return "deadlock" in text or "could not serialize" in text
