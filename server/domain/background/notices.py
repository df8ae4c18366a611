"""The notice outbox: deliver a ``notices`` row by SMTP, or to a file in the embedded default.

At least once, never twice: the row's tenant and id are the de-duplication key. A row
already ``sent`` is not sent again, so a retried or duplicated job is harmless; the file
sink names its file after the key (a second write is skipped); SMTP mail carries the key
as its ``Message-ID``, so the one remaining window (the server accepted the mail but the
worker died before recording it) leaves a duplicate the mail system can recognise.
"""

from __future__ import annotations

import os
import re
import smtplib
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import sqlalchemy as sa

from server.domain.job_tables import notices
from sync.changes import now_ms
from sync.storage import Database


class Transport(Protocol):
    def send(self, message: EmailMessage, key: str) -> None: ...


def safe_key(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", key)


def delivery_key(tenant_id: int, notice_id: str) -> str:
    """The key a transport sees: notice ids are unique per tenant only (two tenants' orders
    may share a UUID), while files of the outbox and Message-IDs are one namespace."""
    return f"t{tenant_id}-{notice_id}"


class FileTransport:
    """Writes each notice to ``<dir>/<key>.eml`` (written whole, then renamed)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def send(self, message: EmailMessage, key: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{safe_key(key)}.eml"
        if path.exists():
            return
        partial = path.with_suffix(f".tmp{os.getpid()}")
        partial.write_bytes(message.as_bytes())
        os.replace(partial, path)


class SmtpTransport:
    """``smtp://user:password@host:port`` (``?starttls=1``), or ``smtps://`` for TLS."""

    def __init__(self, url: str, timeout: float = 15.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("FIELDSYNC_SMTP_URL must look like smtp://user:password@host:port")
        self.tls = parts.scheme == "smtps"
        self.starttls = parse_qs(parts.query).get("starttls", ["0"])[0] in ("1", "true", "yes")
        self.host, self.port = parts.hostname, parts.port or (465 if self.tls else 25)
        self.user = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.timeout = timeout

    def send(self, message: EmailMessage, key: str) -> None:
        kind = smtplib.SMTP_SSL if self.tls else smtplib.SMTP
        with kind(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.user:
                smtp.login(self.user, self.password or "")
            smtp.send_message(message)


def transport_for(smtp_url: str | None, data_dir: str) -> Transport:
    return SmtpTransport(smtp_url) if smtp_url else FileTransport(Path(data_dir) / "outbox")


def compose(row: dict[str, Any], sender: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = row["recipient"]
    message["Subject"] = row["subject"]
    message["Date"] = formatdate(row["created_at"] / 1000, usegmt=True)
    message["Message-ID"] = f"<{safe_key(delivery_key(row['tenant_id'], row['id']))}@fieldsync>"
    message.set_content(row["body"])
    return message


async def _set(db: Database, tenant_id: int, notice_id: str, **values: Any) -> None:
    async with db.write() as conn:
        await conn.execute(sa.update(notices).where(
            notices.c.tenant_id == tenant_id, notices.c.id == notice_id).values(**values))


async def deliver(db: Database, tenant_id: int, notice_id: str, transport: Transport, sender: str) -> str:
    """Send one notice unless it was sent already. Returns its status afterwards.

    Raises whatever the transport raises (Huey retries the job), after recording it."""
    async with db.read() as conn:
        row = (await conn.execute(sa.select(notices).where(
            notices.c.tenant_id == tenant_id, notices.c.id == notice_id))).mappings().first()
    if row is None or row["status"] != "pending" or not row["recipient"]:
        return "missing" if row is None else row["status"]
    await _set(db, tenant_id, notice_id, attempts=notices.c.attempts + 1)
    try:
        transport.send(compose(dict(row), sender), delivery_key(tenant_id, notice_id))
    except Exception as exc:
        await _set(db, tenant_id, notice_id, last_error=f"{type(exc).__name__}: {exc}"[:300])
        raise
    await _set(db, tenant_id, notice_id, status="sent", sent_at=now_ms(), last_error=None)
    return "sent"


async def mark_failed(db: Database, tenant_id: int, notice_id: str) -> None:
    async with db.write() as conn:
        await conn.execute(sa.update(notices).where(
            notices.c.tenant_id == tenant_id, notices.c.id == notice_id, notices.c.status == "pending",
        ).values(status="failed"))
