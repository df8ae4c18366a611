"""``/metrics``, request ids and structured logs of a REAL ``fieldsync serve`` process.

A scripted session (one pull, one accepted and one rejected push, a WebSocket session with
a live change and an ack, the jobs the accepted order enqueues) runs between two scrapes;
the exposition is parsed with prometheus-client's own parser and every counter must have
moved by exactly what the session did, every histogram by its number of observations.
Two processes sharing a ``PROMETHEUS_MULTIPROC_DIR`` each serve the sum of both. The
server's stderr is a file (not a tty), so every log line must be one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
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
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from .support import World, seed, token

ROOT = Path(__file__).resolve().parent.parent
MSGPACK = {"Content-Type": "application/msgpack", "Accept-Encoding": "identity"}

pytestmark = pytest.mark.slow


@pytest.fixture
def database_url(tmp_path) -> str:
    """SQLite only: these tests are about the process's exposition, not the storage."""
    return f"sqlite:///{tmp_path / 'test.db'}"


# -- a server process and its scrapes ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Proc:
    """``python -m server.cli serve`` on a free port; stderr (the log) goes to a file."""

    def __init__(self, settings, workdir: Path, name: str = "server", argv: list[str] | None = None,
                 **env: str) -> None:
        self.settings, self.port, self.name = settings, free_port(), name
        self.argv = argv or ["-m", "server.cli", "serve", "--port", str(self.port)]
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = self.workdir / f"{name}.stderr"
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("FIELDSYNC_") and k != "PROMETHEUS_MULTIPROC_DIR"}
        self.env.update({"FIELDSYNC_DATABASE_URL": settings.database_url,
                         "FIELDSYNC_JWT_SECRET": settings.jwt_secret.decode(),
                         # its own: two embedded servers may not share one (cli.cmd_serve)
                         "FIELDSYNC_DATA_DIR": str(self.workdir / "data"), "PYTHONUNBUFFERED": "1", **env})
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> Proc:
        with self.stderr_path.open("ab") as err:
            self.proc = subprocess.Popen([sys.executable, *self.argv], cwd=ROOT, env=self.env,
                                         stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.stderr()[-3000:]}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not start:\n{self.stderr()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def log_lines(self) -> list[dict]:
        """Every stderr line as JSON (fails on the first line that is not)."""
        lines = []
        for line in self.stderr().splitlines():
            if line.strip():
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    pytest.fail(f"{self.name} wrote a log line that is not JSON: {line!r}")
        return lines


@pytest.fixture
def processes():
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop()


Samples = dict[tuple[str, frozenset], float]


def scrape(base: str) -> Samples:
    response = httpx.get(f"{base}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def total(samples: Samples, metric: str, /, **labels: str) -> float:
    """Sum of the samples called ``metric`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for (n, lbls), value in samples.items() if n == metric and wanted <= lbls)


def moved(before: Samples, after: Samples, metric: str, /, **labels: str) -> float:
    return total(after, metric, **labels) - total(before, metric, **labels)


def wait_for(check: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def pull(base: str, bearer: str, client_id: str, cursor: bytes | None = None, **headers: str) -> httpx.Response:
    body = msgpack.packb({"v": 1, "client_id": client_id, "cursor": cursor})
    return httpx.post(f"{base}/sync/pull", content=body, timeout=30,
                      headers={**MSGPACK, "Authorization": f"Bearer {bearer}", **headers})


def push(base: str, bearer: str, client_id: str, mutations: list[dict]) -> list[dict]:
    body = msgpack.packb({"v": 1, "client_id": client_id, "mutations": mutations})
    response = httpx.post(f"{base}/sync/push", content=body, timeout=30,
                          headers={**MSGPACK, "Authorization": f"Bearer {bearer}"})
    assert response.status_code == 200, response.content
    return msgpack.unpackb(response.content)["results"]


def order(mid: int, customer: int, product: int = 1, qty: int = 1) -> dict:
    return {"id": mid, "name": "order.create", "at": int(time.time() * 1000),
            "args": {"id": str(uuid.uuid4()), "customer_id": customer, "lines": [{"product_id": product, "qty": qty}]}}


def rows_in(batch: dict) -> int:
    return sum(len(part["rows"]) + len(part["deletes"]) for part in batch["data"].values())


async def ws_session(base: str, bearer: str, client_id: str,
                     live_write: Callable[[], None] | None = None) -> dict[str, Any]:
    """hello → catch up to more = false → (one live change) → ack → close; what was received."""
    frames: list[dict] = []
    async with connect(base.replace("http://", "ws://") + "/sync/ws", max_size=None, ping_interval=None) as conn:
        await conn.send(msgpack.packb({"t": "hello", "v": 1, "client_id": client_id, "cursor": None,
                                       "token": bearer}))
        while True:
            frame = msgpack.unpackb(await asyncio.wait_for(conn.recv(), 10))
            assert frame["t"] == "changes", frame
            frames.append(frame)
            if not frame["more"]:
                break
        caught_up = len(frames)
        if live_write is not None:
            await asyncio.to_thread(live_write)
            frame = msgpack.unpackb(await asyncio.wait_for(conn.recv(), 10))
            assert frame["t"] == "changes" and "catalog" in frame["data"], frame
            frames.append(frame)
        await conn.send(msgpack.packb({"t": "ack", "cursor": frames[-1]["cursor"]}))
        await conn.send(msgpack.packb({"t": "ping"}))  # the pong proves the ack was processed before it
        while (reply := msgpack.unpackb(await asyncio.wait_for(conn.recv(), 10)))["t"] != "pong":
            frames.append(reply)
    return {"frames": frames, "catch_up": caught_up, "cursor": frames[-1]["cursor"],
            "snapshot_pages": sum(1 for f in frames[:caught_up] if f["reset"]),
            "rows": sum(rows_in(f) for f in frames if f["t"] == "changes")}


# -- the scripted session ---------------------------------------------------------------------


@pytest.fixture
async def world(services) -> World:
    return await seed(services)


async def test_scripted_session_moves_every_counter(services, world, processes, tmp_path):
    w = world
    server = Proc(services.settings, tmp_path / "proc")
    processes.append(server)
    await asyncio.to_thread(server.start)
    pos, sales, admin = (token(services, w.pos1, "pos"), token(services, w.sales1, "salesperson"),
                         token(services, w.admin, "admin"))
    before = scrape(server.base)

    # a WebSocket session: catch-up, one live change from the office, ack, close (first, so that
    # no commit of the pushes below can add a frame to it)
    def office_write() -> None:
        reply = httpx.post(f"{server.base}/admin/products", json={"upsert": [{"id": 3, "name": "Renamed"}]},
                           headers={"Authorization": f"Bearer {admin}"}, timeout=30)
        assert reply.status_code == 200, reply.text

    session = await ws_session(server.base, pos, "till-ws", office_write)
    wait_for(lambda: moved(before, scrape(server.base), "fieldsync_ws_sessions_closed_total") >= 1,
             what="the session's end to be counted")

    # one pull: an initial sync of another till, one snapshot page
    response = pull(server.base, pos, "till-http")
    assert response.status_code == 200
    batch = msgpack.unpackb(response.content)
    # (``more`` may be true: served from hot pages the server's job pre-built every 5 minutes,
    # the snapshot resumes from the pages' position; the counters below hold either way)
    assert batch["reset"]
    pulled_rows = rows_in(batch)

    # one accepted and one rejected push (each its own request)
    accepted = push(server.base, sales, "phone-1", [order(1, customer=1)])
    rejected = push(server.base, sales, "phone-1", [order(2, customer=5)])  # sales2's customer
    assert accepted[0]["status"] == "applied", accepted
    assert rejected[0]["status"] == "rejected", rejected

    # the jobs the accepted order enqueued run in this process's consumer threads
    def attempts(samples: Samples) -> float:
        return (moved(before, samples, "fieldsync_jobs_run_total")
                + moved(before, samples, "fieldsync_jobs_failed_total"))

    wait_for(lambda: attempts(scrape(server.base)) >= 1, timeout=30, what="a job attempt")
    # a raw path no route matches is labelled "unmatched", never with the path itself
    assert httpx.get(f"{server.base}/sync/pull/phone-1/x").status_code == 404
    after = scrape(server.base)

    def http_count(route: str, status: str = "200", method: str = "POST") -> float:
        return moved(before, after, "fieldsync_http_request_duration_seconds_count",
                     route=route, method=method, status=status)

    # HTTP latency histogram: one observation per request, by route template
    assert http_count("/sync/pull") == 1
    assert http_count("/sync/push") == 2
    assert http_count("/admin/{table}") == 1
    assert moved(before, after, "fieldsync_http_request_duration_seconds_count", route="/metrics") == 0
    assert http_count("unmatched", "404", "GET") == 1
    assert (moved(before, after, "fieldsync_http_request_duration_seconds_bucket", route="/sync/pull", le="+Inf")
            == 1)
    assert moved(before, after, "fieldsync_http_request_duration_seconds_sum", route="/sync/pull") > 0
    # outcomes
    assert moved(before, after, "fieldsync_pulls_total", code="ok") == 1
    assert moved(before, after, "fieldsync_pulls_total") == 1
    assert moved(before, after, "fieldsync_pushes_total", code="ok") == 2
    assert moved(before, after, "fieldsync_mutations_total", name="order.create", status="applied", code="") == 1
    assert moved(before, after, "fieldsync_mutations_total", name="order.create", status="rejected",
                 code=rejected[0]["code"]) == 1
    assert moved(before, after, "fieldsync_mutations_total", status="rejected") == 1
    # rows and bytes: pull exactly what the response carried
    assert moved(before, after, "fieldsync_rows_sent_total", framing="pull") == pulled_rows
    assert moved(before, after, "fieldsync_bytes_sent_total", framing="pull") == len(response.content)
    assert moved(before, after, "fieldsync_snapshot_pages_total", framing="pull") == 1
    assert moved(before, after, "fieldsync_snapshot_page_rows_count") == 1 + session["snapshot_pages"]
    # the WebSocket session
    assert moved(before, after, "fieldsync_ws_sessions_opened_total") == 1
    assert moved(before, after, "fieldsync_ws_sessions_closed_total") == 1
    assert moved(before, after, "fieldsync_ws_sessions_closed_total", code="1000") == 1
    assert total(after, "fieldsync_ws_sessions") == 0, "no session may stay open in any state"
    assert moved(before, after, "fieldsync_rows_sent_total", framing="ws") == session["rows"]
    assert moved(before, after, "fieldsync_snapshot_pages_total", framing="ws") == session["snapshot_pages"]
    # commit-to-device lag: the live change was observed once (one device, one frame)
    live_frames = len(session["frames"]) - session["catch_up"]
    lag_count = moved(before, after, "fieldsync_commit_to_device_seconds_count")
    assert 1 <= lag_count <= live_frames
    assert moved(before, after, "fieldsync_live_round_seconds_count") >= 1
    # device lag: the session's one ack, sent at (or a commit or two behind) the head, observed once
    assert moved(before, after, "fieldsync_device_lag_positions_count") == 1
    assert moved(before, after, "fieldsync_device_lag_positions_bucket", le="10.0") == 1
    # fan-out (in-process): every commit published and received
    published = moved(before, after, "fieldsync_pubsub_published_total")
    assert published >= 2  # the order and the office write, at least
    assert moved(before, after, "fieldsync_pubsub_received_total") == published
    assert total(after, "fieldsync_fanout_fallback") == 0
    # jobs: the accepted order enqueued work that ran; nothing failed
    assert moved(before, after, "fieldsync_jobs_enqueued_total") >= 1
    assert attempts(after) >= 1
    assert moved(before, after, "fieldsync_jobs_given_up_total") == 0
    # database pool: connections came back; acquiring one was timed
    assert total(after, "fieldsync_db_pool_in_use") >= 0
    assert moved(before, after, "fieldsync_db_acquire_seconds_count") >= 4

    # no label takes an unbounded value: client ids, user ids, cursors never appear
    ours = [(name, dict(labels)) for name, labels in after if name.startswith("fieldsync_")]
    assert {key for _, labels in ours for key in labels} <= {
        "route", "method", "status", "state", "code", "dataset", "framing", "name", "task", "le", "outcome"}
    values = {value for _, labels in ours for value in labels.values()}
    assert not values & {"till-http", "till-ws", "phone-1", str(w.sales1), str(w.pos1), "/sync/pull/phone-1/x"}
    assert {labels["route"] for name, labels in ours if "route" in labels} <= {
        "/sync/pull", "/sync/push", "/admin/{table}", "/healthz", "unmatched"}

    # the structured log: one JSON line per request and per session end
    lines = server.log_lines()
    pulls = [line for line in lines if line.get("route") == "/sync/pull"]
    assert len(pulls) == 1
    entry = pulls[0]
    assert {"request_id", "route", "method", "status", "ms", "user", "device", "rows", "bytes"} <= entry.keys()
    assert entry["status"] == 200 and entry["device"] == "till-http" and entry["user"] == w.pos1
    assert entry["rows"] == pulled_rows and entry["bytes"] == len(response.content)
    assert entry["request_id"] == response.headers["x-request-id"]
    assert entry["level"] == "info" and entry["logger"] == "fieldsync.access"
    pushes = [line for line in lines if line.get("route") == "/sync/push"]
    assert len(pushes) == 2 and all(p["user"] == w.sales1 and p["device"] == "phone-1" for p in pushes)
    ended = [line for line in lines if line.get("msg") == "session ended"]
    assert len(ended) == 1
    assert ended[0]["device"] == "till-ws" and ended[0]["user"] == w.pos1 and ended[0]["close"] == "1000"
    assert ended[0]["frames"] == len(session["frames"]) + 1  # + the pong
    assert not [line for line in lines if line.get("route") == "/metrics"]


async def test_request_id_accepted_or_made_and_logged(services, world, processes, tmp_path):
    w = world
    server = Proc(services.settings, tmp_path / "proc")
    processes.append(server)
    await asyncio.to_thread(server.start)
    given = pull(server.base, token(services, w.pos1, "pos"), "till", **{"X-Request-ID": "trace-42-abc"})
    assert given.status_code == 200
    assert given.headers["x-request-id"] == "trace-42-abc"
    made = httpx.get(f"{server.base}/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    made_again = httpx.get(f"{server.base}/healthz")
    assert made_again.headers["x-request-id"] != made.headers["x-request-id"]
    refused = httpx.post(f"{server.base}/sync/pull", content=b"\x80", headers={**MSGPACK, "X-Request-ID": "bad-1"})
    assert refused.status_code == 401 and refused.headers["x-request-id"] == "bad-1"

    # stderr is a file, not a tty: JSON, every line. The access line follows the response
    # out, so the last one may land a moment after the client has it.
    deadline = time.monotonic() + 5
    while True:
        by_id = {line.get("request_id"): line for line in server.log_lines() if "request_id" in line}
        if "bad-1" in by_id or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert by_id["trace-42-abc"]["route"] == "/sync/pull" and by_id["trace-42-abc"]["status"] == 200
    assert by_id[made.headers["x-request-id"]]["route"] == "/healthz"
    assert by_id["bad-1"]["status"] == 401 and by_id["bad-1"]["code"] == "AUTH_REQUIRED"
    assert all(isinstance(by_id[k]["ms"], (int, float)) for k in ("trace-42-abc", "bad-1"))


def test_terminal_logs_are_plain_text(monkeypatch, capsys):
    """In a terminal the same record is one human-readable line, not JSON."""
    import logging

    from server import observe

    class Tty:
        def __init__(self) -> None:
            self.lines: list[str] = []

        def isatty(self) -> bool:
            return True

        def write(self, text: str) -> None:
            self.lines.append(text)

        def flush(self) -> None:
            pass

    tty, saved = Tty(), logging.getLogger().handlers[:]
    monkeypatch.setattr(observe.sys, "stderr", tty)
    try:
        observe.configure_logging()
        observe.log.info("POST /sync/pull 200 1.0ms", extra={"fields": {"request_id": "x"}})
    finally:
        logging.getLogger().handlers[:] = saved
    text = "".join(tty.lines)
    assert "INFO fieldsync.access: POST /sync/pull 200 1.0ms" in text
    with pytest.raises(ValueError):
        json.loads(text)


# -- several processes --------------------------------------------------------------------------


async def sharing_processes(services, processes: list, tmp_path: Path) -> tuple[Path, Proc, Proc]:
    """Two servers sharing one PROMETHEUS_MULTIPROC_DIR, started."""
    shared = tmp_path / "prom-multiproc"
    shared.mkdir()
    one, two = (Proc(services.settings, tmp_path / name, name=name, PROMETHEUS_MULTIPROC_DIR=str(shared))
                for name in ("one", "two"))
    processes.extend([one, two])
    await asyncio.gather(asyncio.to_thread(one.start), asyncio.to_thread(two.start))
    return shared, one, two


async def test_two_processes_share_one_exposition(services, world, processes, tmp_path):
    """Multi-process mode: each process writes its samples to the shared directory; the
    /metrics of either one serves the sum."""
    w = world
    shared, one, two = await sharing_processes(services, processes, tmp_path)
    pos = token(services, w.pos1, "pos")
    for server, times in ((one, 2), (two, 3)):
        for n in range(times):
            assert pull(server.base, pos, f"till-{server.name}-{n}").status_code == 200
    assert len(list(shared.glob("*.db"))) >= 2, "each process keeps its own sample files"
    for server in (one, two):
        samples = scrape(server.base)
        assert total(samples, "fieldsync_pulls_total", code="ok") == 5
        assert total(samples, "fieldsync_http_request_duration_seconds_count", route="/sync/pull") == 5
        assert total(samples, "fieldsync_snapshot_pages_total", framing="pull") == 5
        assert total(samples, "fieldsync_ws_sessions") == 0


async def test_single_process_serves_only_its_own(services, world, processes, tmp_path):
    """Without the directory each process has its own registry (scrape each one)."""
    w = world
    one = Proc(services.settings, tmp_path / "one", name="one")
    two = Proc(services.settings, tmp_path / "two", name="two")
    processes.extend([one, two])
    await asyncio.gather(asyncio.to_thread(one.start), asyncio.to_thread(two.start))
    pos = token(services, w.pos1, "pos")
    assert pull(one.base, pos, "till-a").status_code == 200
    assert total(scrape(one.base), "fieldsync_pulls_total", code="ok") == 1
    assert total(scrape(two.base), "fieldsync_pulls_total", code="ok") == 0


# -- the device-lag histogram ----------------------------------------------------------------------


async def test_record_ack_observes_device_lag(services, world):
    """``ws.record_ack`` stores the ack and observes head − acked (no per-device series)."""
    from prometheus_client import REGISTRY

    from server.ws import record_ack
    from server.domain.principals import principal_for
    from sync import devices

    w = world
    principal = await principal_for(services.db, services.tokens.verify(token(services, w.pos1, "pos")))
    await devices.touch(services.db, principal, "till-lag")

    def count(le: str | None = None) -> float:
        name = "fieldsync_device_lag_positions_bucket" if le else "fieldsync_device_lag_positions_count"
        return REGISTRY.get_sample_value(name, {"le": le} if le else {}) or 0

    before, before_zero = count(), count("0.0")
    await record_ack(services.db, principal, "till-lag", 0)  # far behind: the whole seeded log
    await record_ack(services.db, principal, "till-lag", 10**9)  # "ahead": counted as 0 behind
    assert count() - before == 2
    assert count("0.0") - before_zero == 1


async def test_a_killed_process_stops_counting_in_the_live_gauges(services, world, processes, tmp_path):
    """A process killed with a session open left ``fieldsync_ws_sessions`` at 1 for good;
    each scrape now drops the live gauges of processes that are gone (counters stay)."""
    shared, one, two = await sharing_processes(services, processes, tmp_path)
    pos = token(services, world.pos1, "pos")
    assert pull(one.base, pos, "till-dying").status_code == 200
    async with connect(one.base.replace("http://", "ws://") + "/sync/ws", max_size=None, ping_interval=None) as conn:
        await conn.send(msgpack.packb({"t": "hello", "v": 1, "client_id": "till-dying", "cursor": None,
                                       "token": pos}))
        while not msgpack.unpackb(await asyncio.wait_for(conn.recv(), 10))["more"] is False:
            pass
        assert total(scrape(two.base), "fieldsync_ws_sessions") == 1
        one.proc.kill()
        one.proc.wait()
    samples = scrape(two.base)
    assert total(samples, "fieldsync_ws_sessions") == 0, "the dead process's session no longer counts"
    assert total(samples, "fieldsync_pulls_total", code="ok") == 1, "its counters do"
    assert not list(shared.glob(f"gauge_live*_{one.proc.pid}.db"))
