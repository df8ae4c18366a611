"""What the commands check before they start work, so an operator's mistake ends in one line
that names what failed and what to check, not in a driver's traceback."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa

from sync.storage import Database


class StartupError(Exception):
    """A one-line reason the command cannot run; the CLI prints it and exits non-zero."""


async def connect_or_explain(db: Database, url: str) -> None:
    """Open (and return to the pool) one connection.

    Raises:
        StartupError: the database cannot be reached, does not exist or refuses the login.
    """
    try:
        async with db.engine.connect():
            pass
    except (OSError, asyncio.TimeoutError, sa.exc.DBAPIError) as exc:
        raise StartupError(unreachable(url, exc)) from None


def unreachable(url: str, exc: BaseException) -> str:
    where = sa.engine.make_url(url).render_as_string(hide_password=True)
    return f"cannot use the database {where}: {_reason(exc)}; {_hint(url, exc)}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, sa.exc.DBAPIError):
        exc = exc.orig or exc
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "connection timed out"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _hint(url: str, exc: BaseException) -> str:
    if url.startswith("sqlite"):
        return "check FIELDSYNC_DATABASE_URL (its directory must exist and be writable)"
    reason = _reason(exc).lower()
    if "does not exist" in reason and "database" in reason:
        return "create it (createdb) or fix the database name in FIELDSYNC_DATABASE_URL"
    if "password" in reason or "role" in reason or "authentication" in reason:
        return "check the user and password in FIELDSYNC_DATABASE_URL"
    return "check that PostgreSQL is running and FIELDSYNC_DATABASE_URL names its host and port"
