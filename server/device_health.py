"""Device sync health: for every device of a tenant, how far behind the log head it is and why.

Read from the ``devices`` table (last seen, acknowledged position, app version, last error,
revocation) and the change log:

* ``behind_positions`` = the tenant's ``log_head.seq`` − the device's ``acked_seq``;
* ``behind_seconds`` = now − the commit time (``change_log.at``) of the first entry of the
  tenant's log after ``acked_seq`` (0 when there is none: the device is caught up).

Both count the whole tenant's log, not only the device's buckets: a device whose datasets
did not change still "lags" behind commits it would not receive. That overstates the lag
of a quiet device a little and never hides a real one, which is what on-call wants.

Only WebSocket devices acknowledge (``{t: "ack", cursor}``). A device that only pulls over
HTTP has no acknowledged position: its lag is ``None`` (unknown); its ``last_seen`` still
tells when it last pulled or pushed.

Served as ``GET /admin/devices`` (role admin; ``?behind=1h``) and ``fieldsync devices``.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sync.errors import AuthError, BadRequest, ErrorCode
from sync.schema import Principal
from sync.storage import Database, change_log, devices, log_head

from .http import authenticate
from .plugin import Directory, User

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_MAX_DURATION = 100 * 365 * 86_400  # a century: any longer is a typo, and may not be finite
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


@dataclass(frozen=True)
class DeviceHealth:
    client_id: str
    user_id: int
    user: str | None
    role: str | None
    first_seen: int  # ms since the epoch
    last_seen: int  # ms since the epoch: last pull, push, hello or ack
    acked_seq: int | None  # None: the device never acknowledged (HTTP-only)
    behind_positions: int | None  # log positions between its acknowledged cursor and the head
    behind_seconds: float | None  # age of the oldest commit it has not acknowledged; 0 when caught up
    last_mutation_id: int  # highest mutation id of its outbox the server has seen
    app_version: str | None
    last_error: str | None
    revoked: bool
    revoked_at: int | None
    retired_at: int | None  # retired as stale (FIELDSYNC_STALE_DEVICE_DAYS unseen); cleared when it is back

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_duration(text: str) -> float:
    """``90``, ``45s``, ``30m``, ``1h``, ``2d``, ``1w`` → seconds.

    Raises:
        BadRequest: not a duration.
    """
    match = _DURATION.match(text or "")
    if match is None:
        raise BadRequest(f"{text[:40]!r} is not a duration such as 30m, 1h or 2d")
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not math.isfinite(seconds) or seconds > _MAX_DURATION:
        raise BadRequest(f"the duration {text[:40]!r} is longer than 100 years")
    return seconds


async def device_health(db: Database, tenant_id: int, *, behind: float | None = None, now: int | None = None,
                        directory: Directory | None = None) -> tuple[int, list[DeviceHealth]]:
    """``(log head, devices)`` of a tenant, most lagging first; each with its user's name
    and role when the domain has a ``directory``.

    ``behind`` (seconds) keeps the devices whose known lag is at least that long; revoked and
    retired devices and devices of unknown lag are left out of such a filter. Devices of unknown lag
    come after every device of known lag, the longest unseen first.
    """
    now = int(time.time() * 1000) if now is None else now
    first_unacked_at = (
        sa.select(change_log.c.at)
        .where(change_log.c.tenant_id == devices.c.tenant_id, change_log.c.seq > devices.c.acked_seq)
        .order_by(change_log.c.seq)
        .limit(1)
        .correlate(devices)
        .scalar_subquery()
    )
    query = sa.select(devices, first_unacked_at.label("first_unacked_at")).where(devices.c.tenant_id == tenant_id)
    async with db.read() as conn:
        head = await conn.scalar(sa.select(log_head.c.seq).where(log_head.c.tenant_id == tenant_id)) or 0
        rows = (await conn.execute(query)).all()
    people = await directory.users(db, tenant_id, sorted({r.user_id for r in rows})) if directory and rows else {}
    found = [_health(row, head, now, people.get(row.user_id)) for row in rows]
    if behind is not None:
        found = [d for d in found if not d.revoked and d.retired_at is None
                 and d.behind_seconds is not None and d.behind_seconds >= behind]
    found.sort(key=lambda d: (d.behind_seconds is None, -(d.behind_seconds or 0), -(d.behind_positions or 0),
                              d.last_seen, d.client_id))
    return head, found


def _health(row: Any, head: int, now: int, user: User | None) -> DeviceHealth:
    if row.acked_seq is None:
        positions, seconds = None, None
    else:
        positions = max(0, head - row.acked_seq)
        seconds = 0.0 if row.first_unacked_at is None else max(0.0, (now - row.first_unacked_at) / 1000)
    return DeviceHealth(
        client_id=row.client_id, user_id=row.user_id, user=user and user.name, role=user and user.role,
        first_seen=row.first_seen, last_seen=row.last_seen, acked_seq=row.acked_seq,
        behind_positions=positions, behind_seconds=None if seconds is None else round(seconds, 3),
        last_mutation_id=row.last_mutation_id, app_version=row.app_version, last_error=row.last_error,
        revoked=row.revoked_at is not None, revoked_at=row.revoked_at, retired_at=row.retired_at,
    )


async def tenant_id_of(db: Database, name: str, directory: Directory | None) -> int | None:
    """``fieldsync devices --tenant``: a slug the domain's directory knows, or a number."""
    if directory is not None:
        found = await directory.tenant(db, name)
        if found is not None:
            return found
    return int(name) if name.isdigit() else None


# -- GET /admin/devices -----------------------------------------------------------------------


async def list_devices(request: Request) -> Response:
    """The calling admin's tenant's devices as JSON, most lagging first (``?behind=1h``)."""
    principal = await authenticate(request)
    if principal.role != "admin":
        raise AuthError(ErrorCode.FORBIDDEN, "the device list needs the admin role")
    raw = request.query_params.get("behind")
    behind = parse_duration(raw) if raw else None
    now = int(time.time() * 1000)
    services = request.app.state.services
    head, found = await device_health(services.db, principal.tenant_id, behind=behind, now=now,
                                      directory=services.domain.directory)
    return JSONResponse({"tenant_id": principal.tenant_id, "head": head, "now": now, "behind": behind,
                         "devices": [d.as_json() for d in found]})


# -- `fieldsync devices` ----------------------------------------------------------------------


def format_age(seconds: float | None) -> str:
    """``0s``, ``45s``, ``12m``, ``3h05m``, ``2d04h``; ``?`` for unknown."""
    if seconds is None:
        return "?"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86_400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86_400}d{s % 86_400 // 3600:02d}h"


def format_table(head: int, found: list[DeviceHealth], now: int) -> str:
    """An aligned plain-text table, one device a line, with a legend for unknown lag."""
    header = ("CLIENT", "USER", "ROLE", "LAST SEEN", "ACKED", "BEHIND", "LAG", "APP", "ERROR", "REVOKED")
    lines = [header]
    for d in found:
        lines.append((
            d.client_id, d.user or f"#{d.user_id}", d.role or "-", format_age((now - d.last_seen) / 1000) + " ago",
            "-" if d.acked_seq is None else str(d.acked_seq),
            "?" if d.behind_positions is None else str(d.behind_positions),
            format_age(d.behind_seconds), d.app_version or "-", d.last_error or "-", "yes" if d.revoked else "no",
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    numeric = {4, 5}
    text = ["  ".join(cell.rjust(w) if i in numeric else cell.ljust(w)
                      for i, (cell, w) in enumerate(zip(line, widths))).rstrip() for line in lines]
    text.append(f"{len(found)} device(s); log head {head}. LAG ? = never acknowledged (HTTP-only devices "
                "do not ack): see LAST SEEN.")
    return "\n".join(text)
