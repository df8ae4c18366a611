"""What the commands check before they start work, so an operator's mistake ends in one line
that names what failed and what to check, not in a driver's traceback."""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path
from typing import IO

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


def hold_data_dir(data_dir: Path) -> IO[str]:
    """Claim the embedded data directory for this ``serve`` until the process ends (the
    caller keeps the file open). The embedded default is one process: a second one on the
    same ``var/`` would share its job queue and schedule every periodic job twice, and its
    devices would hear of the first one's writes only at the safety poll.

    Raises:
        StartupError: another process holds it; names that process.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = (data_dir / "serve.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise StartupError(f"{data_dir} is in use by fieldsync serve (pid {holder}); the embedded default is one "
                           "process: stop that one, or give this one its own FIELDSYNC_DATA_DIR") from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
