"""Batches for many live devices at once.

Devices in the same place (same role, same scope values, same log position, nothing to
reset, no time window due) get the same data after a commit: it is computed once per
group and only their cursors differ. A catalog change to 5,000 terminals of one branch is
a handful of reads and one encoding, not 5,000.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .cursor import Cursor
from .messages import PullResponse
from .reader import WINDOW_STEP_MS, Reader, SharedReads, _state, _values
from .schema import Principal


async def pull_group(reader: Reader, tenant_id: int,
                     members: Sequence[tuple[Principal, bytes | None]]) -> list[PullResponse]:
    """The next batch of each ``(principal, cursor)`` of one tenant, in order, all read in
    one snapshot."""
    async with reader.db.read() as conn:
        return await _pull_group(reader, members, await SharedReads.begin(conn, tenant_id))


async def _pull_group(reader: Reader, members: Sequence[tuple[Principal, bytes | None]],
                      shared: SharedReads) -> list[PullResponse]:
    now = reader.clock()
    results: list[PullResponse | None] = [None] * len(members)
    groups: dict[tuple, list[tuple[int, Cursor]]] = {}
    loners: list[int] = []
    decoded: dict[bytes | None, Cursor | None] = {}  # devices at one cursor: decoded once
    for index, (principal, raw) in enumerate(members):
        if raw not in decoded:
            decoded[raw] = reader.cursors.decode(raw) if raw else None
        cursor = decoded[raw]
        key = await _key(shared.conn, reader, principal, cursor, shared, now) if cursor else None
        if key is None:
            loners.append(index)
        else:
            groups.setdefault(key, []).append((index, cursor))
    for index in loners:
        principal, raw = members[index]
        results[index] = await reader.pull(principal, raw, None, shared)
    for group in groups.values():
        first_index, _ = group[0]
        principal, raw = members[first_index]
        first = await reader.pull(principal, raw, None, shared)
        results[first_index] = first
        seq = reader.cursors.decode(first["cursor"]).seq
        encoded: dict[int, bytes] = {}  # and re-encoded once (members at one cursor share the object)
        for index, cursor in group[1:]:
            if id(cursor) not in encoded:
                cursor.seq = seq
                encoded[id(cursor)] = reader.cursors.encode(cursor)
            results[index] = {**first, "cursor": encoded[id(cursor)]}
    return results  # type: ignore[return-value]


async def _key(conn: Any, reader: Reader, principal: Principal, cursor: Cursor, shared: SharedReads,
               now: int) -> tuple | None:
    """What makes two devices' next batches equal; None when this one must go alone."""
    head, horizon = shared.head
    if (cursor.tenant_id, cursor.user_id) != (principal.tenant_id, principal.user_id) or cursor.snap \
            or not horizon <= cursor.seq <= head or now - cursor.t >= WINDOW_STEP_MS:
        return None
    memo = ("group", principal.role, principal.user_id)
    if memo not in shared.values:  # scope values and dataset states, once per user per wake-up
        found = {ds.name: await _values(conn, ds, principal, shared) for ds in reader.registry.for_role(principal.role)}
        states = {ds.name: _state(ds, found[ds.name]) for ds in reader.registry.for_role(principal.role)}
        shared.values[memo] = [tuple(tuple(v) for v in found.values()), states]
    values, states = shared.values[memo]
    if cursor.datasets != states:
        return None  # a reset is due
    return principal.tenant_id, principal.role, values, cursor.seq
