"""Plumbing for the live-sync tests: real ``fieldsync serve`` processes on free ports, a private
``redis-server``, and a small msgpack WebSocket client on the ``websockets`` library.

Nothing here is mocked: a server is the CLI in its own process, pointed at the test's
database through ``FIELDSYNC_*`` variables, and Redis is a real ``redis-server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from fieldsync_client import Replica

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REDIS_URL = os.environ.get("FIELDSYNC_TEST_REDIS", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


# -- server processes -----------------------------------------------------------------------


class Server:
    """One ``python -m server.cli serve`` process; its output goes to a log file in its data dir."""

    def __init__(self, settings, data_dir: Path, *, env: dict[str, str] | None = None, port: int | None = None,
                 name: str = "server") -> None:
        self.settings = settings
        self.data_dir = Path(data_dir)
        self.extra = dict(env or {})
        self.port = port or free_port()
        self.name = name
        self.log_path = self.data_dir / f"{name}-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/sync/ws"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def env(self) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("FIELDSYNC_")}
        return {**inherited, "FIELDSYNC_DATABASE_URL": self.settings.database_url,
                "FIELDSYNC_JWT_SECRET": self.settings.jwt_secret.decode(),
                "FIELDSYNC_DATA_DIR": str(self.data_dir), "PYTHONUNBUFFERED": "1",
                "FIELDSYNC_MAX_DEVICES_PER_USER": str(self.settings.max_devices_per_user),
                "FIELDSYNC_RATE_LIMITS": "1" if self.settings.rate_limits else "0",
                "FIELDSYNC_MAX_SNAPSHOTS": str(self.settings.max_snapshots), **self.extra}

    def start(self, timeout: float = 30) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--port", str(self.port)],
                                         cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not start within {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_kb(self) -> int:
        """Resident memory of the process (VmRSS, kB)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS line")

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- a private redis-server -----------------------------------------------------------------


class RedisServer:
    """``redis-server`` on a free port, no persistence; killable and restartable on that port."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.workdir = Path(workdir)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            if IN_CI:
                pytest.fail("redis-server is required in CI but not on PATH")
            pytest.skip("redis-server is not installed; install it to run the Redis fault test")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            if redis_ping(self.url):
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        """SIGKILL: the way a crashed or unplugged Redis goes away."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None


def redis_ping(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def require_redis(url: str = REDIS_URL) -> str:
    """The shared Redis for normal tests: skip with a message when absent (fail when CI=true)."""
    if not redis_ping(url):
        message = f"Redis not reachable at {url}"
        if IN_CI:
            pytest.fail(f"{message}; it is required in CI")
        pytest.skip(f"{message}; start it (or set FIELDSYNC_TEST_REDIS) to run these cases")
    return url


def redis_prefix() -> str:
    """A unique channel/key prefix per test, so concurrent runs never hear each other (it is
    also the Huey queue name's prefix: alphanumerics and ``_`` only)."""
    return f"fieldsync_test_{uuid.uuid4().hex[:12]}"


def forget_prefix(url: str, prefix: str) -> None:
    """Delete the keys a test left under its prefix in a shared Redis."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass
    finally:
        client.close()


# -- HTTP helpers -------------------------------------------------------------------------------


async def admin_write(base: str, token: str, table: str, upsert: list[dict] | None = None,
                      delete: list[int] | None = None, *, client: httpx.AsyncClient | None = None) -> dict:
    body: dict[str, Any] = {"upsert": upsert or []}
    if delete:
        body["delete"] = delete
    async with contextlib.AsyncExitStack() as stack:
        http = client or await stack.enter_async_context(httpx.AsyncClient(timeout=30))
        response = await http.post(f"{base}/admin/{table}", json=body, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, f"admin write {table}: {response.status_code} {response.text}"
    return response.json()


async def admin_post(base: str, token: str, path: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(f"{base}{path}", headers={"Authorization": f"Bearer {token}"})


async def fresh_pull(base: str, token: str, client_id: str | None = None) -> Replica:
    """What a brand-new device of this user holds after syncing to ``more = false`` over HTTP."""
    from fieldsync_client import HttpSync

    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        device = HttpSync(http, token, client_id or f"verifier-{uuid.uuid4().hex[:8]}")
        await device.sync()
        return device.replica


# -- the WebSocket client -----------------------------------------------------------------------


class WsClosed(Exception):
    def __init__(self, code: int | None, reason: str, frames: list[dict]) -> None:
        super().__init__(f"closed with {code} {reason!r}")
        self.code, self.reason, self.frames = code, reason, frames


class WsClient:
    """One device on ``/sync/ws``: msgpack maps in binary frames."""

    #: every client not closed yet: :func:`close_all` ends them when a test ends, failed or not
    opened: set[WsClient] = set()

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.received: list[dict] = []
        WsClient.opened.add(self)

    @classmethod
    async def open(cls, url: str, token: str | None = None, *, header: bool = True, **kwargs: Any) -> WsClient:
        headers = {"Authorization": f"Bearer {token}"} if token and header else None
        kwargs.setdefault("max_size", None)
        kwargs.setdefault("ping_interval", None)  # the app's own ping/idle rules are under test
        kwargs.setdefault("open_timeout", 10)
        kwargs.setdefault("close_timeout", 2)
        conn = await connect(url, additional_headers=headers, **kwargs)
        return cls(conn)

    async def send(self, frame: Any) -> None:
        await self.conn.send(pack(frame))

    async def send_raw(self, data: bytes | str) -> None:
        await self.conn.send(data)

    async def hello(self, client_id: str, cursor: bytes | None = None, *, token: str | None = None,
                    v: int = 1) -> None:
        frame: dict[str, Any] = {"t": "hello", "v": v, "client_id": client_id, "cursor": cursor}
        if token is not None:
            frame["token"] = token
        await self.send(frame)

    async def recv(self, timeout: float = 5.0) -> dict:
        """The next frame, or :class:`WsClosed` with the close code."""
        try:
            data = await asyncio.wait_for(self.conn.recv(), timeout)
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else None
            reason = closed.rcvd.reason if closed.rcvd is not None else ""
            raise WsClosed(code, reason, self.received) from None
        assert isinstance(data, bytes), f"the server sent a text frame: {data!r}"
        frame = unpack(data)
        assert isinstance(frame, dict) and isinstance(frame.get("t"), str), f"not a frame: {frame!r}"
        self.received.append(frame)
        return frame

    async def recv_until(self, predicate: Callable[[dict], bool], timeout: float = 5.0,
                         replica: Replica | None = None) -> dict:
        """Frames until one matches; ``changes`` frames on the way are applied to ``replica``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching frame within {timeout}s")
            frame = await self.recv(remaining)
            if replica is not None and frame["t"] == "changes":
                replica.apply(frame)
            if predicate(frame):
                return frame

    async def catch_up(self, replica: Replica, timeout: float = 15.0) -> list[dict]:
        """Apply ``changes`` frames until one says ``more = false``; returns them."""
        start = len(self.received)
        await self.recv_until(lambda f: f["t"] == "changes" and not f["more"], timeout, replica)
        return [f for f in self.received[start:] if f["t"] == "changes"]

    async def closed(self, timeout: float = 5.0) -> WsClosed:
        """Read (and keep) frames until the server closes; returns the close."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"the server did not close within {timeout}s")
            try:
                await self.recv(remaining)
            except WsClosed as closed:
                return closed
            except asyncio.TimeoutError:
                continue

    async def close(self) -> None:
        WsClient.opened.discard(self)
        with contextlib.suppress(Exception):
            await self.conn.close()


async def close_all() -> None:
    """Close every client a test left open (a failed assertion skips its own close)."""
    await asyncio.gather(*(client.close() for client in list(WsClient.opened)))


@contextlib.asynccontextmanager
async def launching(settings, directory: Path, base_env: dict[str, str] | None = None):
    """``start(**env)`` runs a ``fieldsync serve`` on the test's database, with ``base_env``
    under ``env``; every client and server is stopped on the way out."""
    started: list[Server] = []

    async def start(**env: str) -> Server:
        server = Server(settings, directory / f"server{len(started)}", env={**(base_env or {}), **env},
                        name=f"server{len(started)}")
        started.append(server)
        return await asyncio.to_thread(server.start)

    try:
        yield start
    finally:
        await close_all()
        for server in started:
            await asyncio.to_thread(server.stop)


async def connect_device(url: str, token: str, client_id: str, replica: Replica, *, header: bool = True,
                         timeout: float = 15.0) -> WsClient:
    """Open, say hello from the replica's cursor and catch up to ``more = false``."""
    client = await WsClient.open(url, token if header else None)
    await client.hello(client_id, replica.cursor, token=None if header else token)
    await client.catch_up(replica, timeout)
    return client


async def converge(client: WsClient, replica: Replica, want: Callable[[], Any], timeout: float = 10.0) -> None:
    """Apply live frames until the replica equals ``await want()`` (re-asked whenever the socket is quiet)."""
    deadline = time.monotonic() + timeout
    expected = await want()
    while not same(replica, expected):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            frame = await client.recv(min(remaining, 0.3))
        except asyncio.TimeoutError:
            expected = await want()
            continue
        if frame["t"] == "changes":
            replica.apply(frame)
    assert_same(replica, expected)


def _nonempty(replica: Replica) -> dict:
    return {name: rows for name, rows in replica.data.items() if rows}


def same(replica: Replica, expected: Replica) -> bool:
    """Equal data, dataset by dataset (an empty dataset counts as absent)."""
    return _nonempty(replica) == _nonempty(expected)


def assert_same(replica: Replica, expected: Replica) -> None:
    """:func:`same`, with a readable diff."""
    mine, theirs = _nonempty(replica), _nonempty(expected)
    if mine == theirs:
        return
    lines = []
    for name in sorted(set(mine) | set(theirs)):
        a, b = mine.get(name, {}), theirs.get(name, {})
        if a != b:
            missing = sorted(set(b) - set(a), key=repr)[:5]
            extra = sorted(set(a) - set(b), key=repr)[:5]
            differ = [k for k in sorted(set(a) & set(b), key=repr) if a[k] != b[k]][:3]
            lines.append(f"{name}: missing {missing}, extra {extra}, differ "
                         + "; ".join(f"{k}: {a[k]} != {b[k]}" for k in differ))
    raise AssertionError("the device's copy differs from a fresh pull:\n" + "\n".join(lines))
