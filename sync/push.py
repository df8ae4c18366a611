"""Push: apply a device's mutations exactly once.

Each mutation runs in its own transaction together with its ledger entry and the
device's high-water mark, so a crash at any point leaves either all of it or none. A
replay (same client, same id) returns the stored result of the first application. A
refusal is final: it is recorded in the ledger too, and shows in the ``rejections``
dataset the domain declares over the ledger.
"""

from __future__ import annotations

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

    @property
    def conn(self) -> AsyncConnection:
        return self.changes.conn


class Pusher:
    def __init__(self, db: Database, registry: Registry) -> None:
        self.db = db
        self.registry = registry

    async def push(self, principal: Principal, client_id: str, mutations: list[Mutation]) -> list[MutationResult]:
        return [await self.apply(principal, client_id, m) for m in mutations]

    async def apply(self, principal: Principal, client_id: str, mutation: Mutation) -> MutationResult:
        refusal: MutationRejected | None = None
        for attempt in range(_RETRIES):
            try:
                return await self._apply_once(principal, client_id, mutation, refusal)
            except _Refused as refused:
                # The handler's writes are rolled back with its transaction; the refusal is
                # recorded in a fresh one (or a concurrent duplicate's result is replayed).
                refusal = refused.refusal
            except sa.exc.DataError as exc:
                # A value the database cannot hold slipped past validation: refuse it
                # for good rather than fail the push, which would block the outbox.
                log.warning("mutation %s:%s refused: %s", client_id, mutation.id, exc.orig)
                refusal = MutationRejected(ErrorCode.INVALID_ARGS, "an argument is out of range for this server")
            except sa.exc.IntegrityError as exc:
                # Either a concurrent push of the same mutation won the race (the next
                # attempt finds its ledger entry and replays it) or the mutation collides
                # with existing rows: then the next attempt records that refusal.
                log.info("mutation %s:%s hit %s; retrying", client_id, mutation.id, str(exc.orig).splitlines()[0])
                refusal = MutationRejected(ErrorCode.CONFLICT, "the mutation conflicts with rows already on the server")
            except sa.exc.DBAPIError as exc:
                if not _is_retryable(exc):
                    raise
                log.info("mutation %s:%s retried after %s", client_id, mutation.id, type(exc.orig).__name__)
        return await self._apply_once(principal, client_id, mutation, refusal)

    async def _apply_once(self, principal: Principal, client_id: str, m: Mutation,
                          refusal: MutationRejected | None) -> MutationResult:
        async with self.db.write() as conn:
            epoch = await _claim(conn, principal, client_id, m.id)
            if epoch is None:
                return await _replay(conn, principal, client_id, m)
            changes = ChangeSet(self.db, conn, self.registry, principal.tenant_id)
            after_commit: list[Callable[[], Any]] = []
            if refusal is None:
                outcome = await self._run(changes, principal, client_id, m, after_commit)
            else:
                outcome = {"id": m.id, "status": "rejected", "code": refusal.code.value, "message": refusal.message}
            await changes.insert(mutation_ledger, [_ledger_row(principal, client_id, epoch, m, outcome)])
            seq = await changes.commit_position()
        if seq is not None:
            self.db.notify(principal.tenant_id, seq, changes.buckets)
        for hook in after_commit:
            await _call(hook)
        return outcome

    async def _run(self, changes: ChangeSet, principal: Principal, client_id: str, m: Mutation,
                   after_commit: list[Callable[[], Any]]) -> MutationResult:
        spec = self.registry.mutations.get(m.name)
        try:
            if spec is None:
                raise MutationRejected(ErrorCode.UNKNOWN_MUTATION, f"no mutation named {m.name!r}")
            if principal.role not in spec.roles:
                raise MutationRejected(ErrorCode.FORBIDDEN, f"role {principal.role} may not {m.name}")
            spec.check_args(m.args)
            _check_storable(m.args)
            ctx = MutationContext(changes, principal, client_id, m.id, m.at, now_ms())
            result = await spec.handler(ctx, m.args)
        except MutationRejected as refusal:
            raise _Refused(refusal) from None
        after_commit.extend(ctx.after_commit)
        outcome: MutationResult = {"id": m.id, "status": "applied"}
        if result is not None:
            outcome["result"] = result
        return outcome


class _Refused(Exception):
    """Internal: unwinds the handler's transaction so the refusal is recorded on its own."""

    def __init__(self, refusal: MutationRejected) -> None:
        self.refusal = refusal


async def _claim(conn: AsyncConnection, principal: Principal, client_id: str, mutation_id: int) -> int | None:
    """Raise the device's high-water mark to this id; returns the device's ledger epoch, or
    None when the mark is already there (or the device is not the principal's).

    The row lock this takes serialises the device's pushes until commit.
    """
    claimed = await conn.execute(
        sa.update(devices)
        .where(devices.c.tenant_id == principal.tenant_id, devices.c.client_id == client_id,
               devices.c.user_id == principal.user_id, devices.c.last_mutation_id < mutation_id)
        .values(last_mutation_id=mutation_id)
        .returning(devices.c.epoch)
    )
    return claimed.scalar()


async def _replay(conn: AsyncConnection, principal: Principal, client_id: str, m: Mutation) -> MutationResult:
    device = (await conn.execute(sa.select(devices.c.user_id, devices.c.epoch, devices.c.last_mutation_id).where(
        devices.c.tenant_id == principal.tenant_id, devices.c.client_id == client_id))).first()
    if device is None:
        raise LookupError(f"device {client_id} is not registered; touch it before pushing")
    if device.user_id != principal.user_id:
        # touch() refused this already; a move of the device since then lands here.
        raise AuthError(ErrorCode.FORBIDDEN, f"device {client_id} belongs to another user")
    row = (await conn.execute(
        sa.select(mutation_ledger).where(
            mutation_ledger.c.tenant_id == principal.tenant_id,
            mutation_ledger.c.client_id == client_id,
            mutation_ledger.c.epoch == device.epoch,
            mutation_ledger.c.mutation_id == m.id,
        )
    )).mappings().first()
    if row is not None:
        return _result_of(row)
    return {"id": m.id, "status": "rejected", "code": ErrorCode.CONFLICT.value,
            "message": f"mutation id {m.id} is not above {device.last_mutation_id}, the last this device sent; "
                       "ids must strictly increase"}


def _result_of(row: Any) -> MutationResult:
    result: MutationResult = {"id": row["mutation_id"], "status": row["status"]}
    if row["code"]:
        result["code"] = row["code"]
        result["message"] = row["message"] or ""
    if row["result"] is not None:
        result["result"] = row["result"]
    return result


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
        "args": m.args if _storable(m.args) else {},
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
