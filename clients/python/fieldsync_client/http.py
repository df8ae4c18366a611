"""HTTP transport: pull to ``more = false`` and push with replays."""

from __future__ import annotations

import itertools
import time
from typing import Any

import httpx
import msgpack

from .replica import Replica

MSGPACK = "application/msgpack"


class SyncHttpError(Exception):
    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message
        self.retry_after = retry_after


class HttpSync:
    """One device talking to a server over HTTP (sync or async httpx client underneath)."""

    def __init__(self, client: httpx.AsyncClient, token: str, client_id: str, replica: Replica | None = None) -> None:
        self.client = client
        self.token = token
        self.client_id = client_id
        self.replica = replica or Replica()
        self._ids = itertools.count(1)

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.client.post(
            path, content=msgpack.packb(body, use_bin_type=True),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": MSGPACK, "Accept": MSGPACK},
        )
        try:
            decoded = msgpack.unpackb(response.content, raw=False)
        except Exception:  # noqa: BLE001 - any undecodable body
            if response.status_code == 200:
                raise
            decoded = None  # e.g. a proxy's HTML error page
        if response.status_code != 200:
            error = decoded.get("error", {}) if isinstance(decoded, dict) else {}
            raise SyncHttpError(response.status_code, error.get("code", "?"), error.get("message", response.text[:200]),
                                error.get("retry_after"))
        return decoded

    async def pull_once(self, limit: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"v": 1, "client_id": self.client_id, "cursor": self.replica.cursor}
        if limit is not None:
            body["limit"] = limit
        response = await self.call("/sync/pull", body)
        self.replica.apply(response)
        return response

    async def sync(self, limit: int | None = None, max_rounds: int = 10_000) -> int:
        """Pull until ``more = false``; returns the number of round trips."""
        for rounds in range(1, max_rounds + 1):
            if not (await self.pull_once(limit))["more"]:
                return rounds
        raise RuntimeError("pull did not reach more = false")

    def mutation(self, name: str, args: dict[str, Any], at: int | None = None) -> dict[str, Any]:
        """A new outbox entry with the next mutation id."""
        return {"id": next(self._ids), "name": name, "args": args, "at": at or time.time_ns() // 1_000_000}

    async def push(self, mutations: list[dict[str, Any]]) -> list[dict[str, Any]]:
        response = await self.call("/sync/push", {"v": 1, "client_id": self.client_id, "mutations": mutations})
        return response["results"]
