"""Issue 3 figures: live latency through Redis and a second process, idle sessions per
process, a catalog change to thousands of terminals, sustained change rate, reconnect storm.

    .venv/bin/python bench/ws_bench.py                 # full sizes
    .venv/bin/python bench/ws_bench.py --smoke         # seconds; what CI runs
PostgreSQL and Redis local; servers are `fieldsync serve` processes, this process is the load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
import uuid
from pathlib import Path

import httpx
import msgpack
import websockets
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median, percentile, scratch_database, server_process  # noqa: E402
from bench.http_sync_bench import prepare  # noqa: E402
from bench.raw_ws import RawDevice  # noqa: E402

REDIS = "redis://127.0.0.1:6379/0"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Device:
    """A WebSocket device that records when each frame arrived."""

    def __init__(self, base: str, token: str, cursor: bytes | None) -> None:
        self.url = base.replace("http://", "ws://") + "/sync/ws"
        self.token, self.cursor = token, cursor
        self.client_id = f"bench-{uuid.uuid4().hex[:10]}"
        self.frames: list[tuple[float, dict]] = []
        self.live = asyncio.Event()
        self.ws = None
        self.watch: str | None = None  # a tag to time: when a frame first carries it
        self.hit: float | None = None
        self.hit_event = asyncio.Event()

    async def connect(self) -> None:
        self.ws = await websockets.connect(self.url, additional_headers={"Authorization": f"Bearer {self.token}"},
                                           max_size=2**24, open_timeout=60, ping_interval=None)
        await self.ws.send(msgpack.packb({"t": "hello", "v": 1, "client_id": self.client_id, "cursor": self.cursor}))
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                frame = msgpack.unpackb(raw, raw=False)
                arrived = time.perf_counter()
                self.frames.append((arrived, frame))
                if self.watch is not None and self.hit is None and frame_has(frame, self.watch):
                    self.hit = arrived
                    self.hit_event.set()
                if frame.get("t") == "changes":
                    self.cursor = frame["cursor"]
                    if not frame["more"]:
                        self.live.set()

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
            self.reader.cancel()


async def connect_all(devices: list[Device] | list[RawDevice], parallel: int = 200) -> float:
    started = time.perf_counter()
    for start in range(0, len(devices), parallel):
        group = devices[start:start + parallel]
        await asyncio.gather(*(d.connect() for d in group))
        await asyncio.gather(*(d.live.wait() for d in group))
    return time.perf_counter() - started


async def caught_up_cursor(base: str, token: str) -> bytes:
    client_id = f"bench-seed-{uuid.uuid4().hex[:8]}"  # a device belongs to one user: one per call
    async with httpx.AsyncClient(base_url=base, timeout=120) as http:
        cursor = None
        while True:
            body = msgpack.packb({"v": 1, "client_id": client_id, "cursor": cursor, "limit": 10000})
            batch = msgpack.unpackb((await http.post("/sync/pull", content=body, headers={
                "Authorization": f"Bearer {token}", "Content-Type": "application/msgpack"})).content)
            cursor = batch["cursor"]
            if not batch["more"]:
                return cursor


async def rename(http: httpx.AsyncClient, admin: str, product_ids: list[int], tag: str) -> None:
    rows = [{"id": p, "name": f"{tag} {p}"} for p in product_ids]
    response = await http.post("/admin/products", json={"upsert": rows}, headers={"Authorization": f"Bearer {admin}"})
    response.raise_for_status()


def frame_has(frame: dict, tag: str) -> bool:
    rows = frame.get("data", {}).get("catalog", {}).get("rows", [])
    return any(isinstance(r[2], str) and r[2].startswith(tag) for r in rows)


async def latency(a: str, b: str, tokens: dict, samples: int) -> dict:
    """One change written through process A, delivered by process B (Redis in between)."""
    device = Device(b, tokens["pos1"], await caught_up_cursor(b, tokens["pos1"]))
    await device.connect()
    await device.live.wait()
    times, after_reply = [], []
    async with httpx.AsyncClient(base_url=a) as http:
        for n in range(samples):
            tag, seen = f"L{n}x", len(device.frames)
            started = time.perf_counter()
            await rename(http, tokens["admin"], [1 + n % 50], tag)
            replied = time.perf_counter()
            while not any(frame_has(f, tag) for _, f in device.frames[seen:]):
                await asyncio.sleep(0.0002)
            arrived = next(t for t, f in device.frames[seen:] if frame_has(f, tag))
            times.append((arrived - started) * 1000)
            after_reply.append((arrived - replied) * 1000)
            await asyncio.sleep(0.01)
    await device.close()
    async with httpx.AsyncClient(base_url=b) as http:
        text = (await http.get("/metrics")).text
    return {"p50": median(times), "p99": percentile(times, 99), "samples": samples,
            "reply_p50": median(after_reply), "reply_p99": percentile(after_reply, 99),
            "round_ms": mean_of(text, "fieldsync_live_round_seconds") * 1000,
            "queued_ms": mean_of(text, "fieldsync_commit_to_device_seconds") * 1000,
            "within_5ms": share_within(text, "fieldsync_commit_to_device_seconds", "0.005"),
            "within_20ms": share_within(text, "fieldsync_commit_to_device_seconds", "0.02")}


def histogram(metrics_text: str, name: str) -> dict:
    """One histogram of a process's ``/metrics`` text: its ``sum``, ``count`` and buckets
    by upper bound (cumulative), parsed by prometheus_client's own parser."""
    found: dict = {"sum": 0.0, "count": 0.0, "buckets": {}}
    for family in text_string_to_metric_families(metrics_text):
        if family.name == name:
            for sample in family.samples:
                if sample.name == name + "_bucket":
                    found["buckets"][sample.labels["le"]] = sample.value
                elif sample.name in (name + "_sum", name + "_count"):
                    found[sample.name[len(name) + 1:]] = sample.value
    return found


def mean_of(metrics_text: str, name: str) -> float:
    h = histogram(metrics_text, name)
    return h["sum"] / h["count"] if h["count"] else float("nan")


def share_within(metrics_text: str, name: str, le: str) -> float:
    """The share of a histogram's observations at or below the bucket bound ``le``."""
    h = histogram(metrics_text, name)
    return h["buckets"].get(le, 0.0) / h["count"] if h["count"] else float("nan")


async def idle_and_broadcast(base: str, pid: int, tokens: dict, sessions: int) -> dict:
    users = ["pos1", "pos2", "pos3", "pos4"]
    cursors = {u: await caught_up_cursor(base, tokens[u]) for u in users}
    before = rss_mb(pid)
    devices = [RawDevice(base, tokens[users[i % 4]], cursors[users[i % 4]], f"bench-{uuid.uuid4().hex[:10]}")
               for i in range(sessions)]
    connect_s = await connect_all(devices)
    await asyncio.sleep(1)
    after = rss_mb(pid)
    async with httpx.AsyncClient(base_url=base) as http:
        health = []
        for _ in range(20):
            started = time.perf_counter()
            (await http.get("/healthz")).raise_for_status()
            health.append((time.perf_counter() - started) * 1000)
        for d in devices:  # each device notes when the change reached it; no polling scan here
            d.watch = b"B0x"
        rounds_before = histogram((await http.get("/metrics")).text, "fieldsync_live_round_seconds")["sum"]
        started = time.perf_counter()
        await rename(http, tokens["admin"], [7], "B0x")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(d.hit_event.wait() for d in devices)), 30)
        round_ms = (histogram((await http.get("/metrics")).text, "fieldsync_live_round_seconds")["sum"] - rounds_before) * 1000
    delays = [(d.hit - started) * 1000 for d in devices if d.hit is not None]
    for d in devices:
        d.close()
    return {"sessions": sessions, "connect_s": connect_s, "kb_per_session": (after - before) * 1024 / sessions,
            "rss_mb": after, "healthz_ms_p50": median(health), "received": len(delays),
            "broadcast_p50": median(delays) if delays else None, "broadcast_p99": percentile(delays, 99) if delays else None,
            "round_ms": round_ms}


async def sustained(base: str, tokens: dict, devices_n: int, seconds: float, batch: int) -> dict:
    """The office rewrites stock rows of one shop as fast as it can; its terminals hold them."""
    cursor = await caught_up_cursor(base, tokens["pos1"])
    devices = [RawDevice(base, tokens["pos1"], cursor, f"bench-{uuid.uuid4().hex[:10]}") for _ in range(devices_n)]
    await connect_all(devices)
    for device in devices:
        device.keep = True
    stock_ids = await shop_stock_ids(base, tokens["pos1"])
    sent: dict[int, float] = {}
    changes = 0
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        started = time.perf_counter()
        n = 0
        while time.perf_counter() - started < seconds:
            rows = [{"id": stock_ids[(n * batch + k) % len(stock_ids)], "on_hand": n} for k in range(batch)]
            sent[n] = time.perf_counter()
            r = await http.post("/admin/stock", json={"upsert": rows}, headers={"Authorization": f"Bearer {tokens['admin']}"})
            r.raise_for_status()
            changes += batch
            n += 1
        elapsed = time.perf_counter() - started
        await asyncio.sleep(2)
    lags = []
    for device in devices:
        device.close()
        for t, payload in device.kept:
            frame = msgpack.unpackb(payload, raw=False)
            stock = frame.get("data", {}).get("stock", {})
            column = stock.get("cols", []).index("on_hand") if stock else 0
            for row in stock.get("rows", []):
                if row[column] in sent:  # on_hand carries the batch number
                    lags.append((t - sent[row[column]]) * 1000)
    return {"changes_per_s": changes / elapsed, "devices": devices_n, "delivered_rows": len(lags),
            "lag_p50": median(lags) if lags else None, "lag_p99": percentile(lags, 99) if lags else None}


async def shop_stock_ids(base: str, token: str) -> list[int]:
    client_id = f"bench-ids-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=base, timeout=120) as http:
        ids, cursor = [], None
        while True:
            body = msgpack.packb({"v": 1, "client_id": client_id, "cursor": cursor, "limit": 10000})
            batch = msgpack.unpackb((await http.post("/sync/pull", content=body, headers={
                "Authorization": f"Bearer {token}", "Content-Type": "application/msgpack"})).content)
            ids += [r[0] for r in batch["data"].get("stock", {}).get("rows", [])]
            cursor = batch["cursor"]
            if not batch["more"]:
                return ids


async def storm(base: str, tokens: dict, devices_n: int, changes: int) -> dict:
    """Devices an hour behind (``changes`` product renames, 500 per write) reconnect at once."""
    users = ["pos1", "pos2", "pos3", "pos4"]
    cursors = {u: await caught_up_cursor(base, tokens[u]) for u in users}
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        for n in range(0, changes, 500):
            await rename(http, tokens["admin"], list(range(1 + n % 1500, 1 + n % 1500 + 500)), f"S{n}x")
    devices = [RawDevice(base, tokens[users[i % 4]], cursors[users[i % 4]], f"bench-{uuid.uuid4().hex[:10]}")
               for i in range(devices_n)]
    started = time.perf_counter()
    results = await asyncio.gather(*(d.connect() for d in devices), return_exceptions=True)
    failed = sum(isinstance(r, Exception) for r in results)
    waits = [asyncio.ensure_future(d.live.wait()) for d, r in zip(devices, results) if not isinstance(r, Exception)]
    done, pending = await asyncio.wait(waits, timeout=300)  # report what a time-out leaves, do not crash
    elapsed = time.perf_counter() - started
    for wait in pending:
        wait.cancel()
    errors = sum(d.errors for d in devices)
    for d in devices:
        d.close()
    return {"devices": devices_n, "behind_by_changes": changes, "caught_up": len(done),
            "all_caught_up_s": elapsed if not pending else None, "waited_s": elapsed,
            "connect_failures": failed, "error_frames": errors}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--only", default="latency,idle,sustained,storm")
    parser.add_argument("--sessions", type=int, default=None, help="idle sessions (default 10,000; smoke 100)")
    args = parser.parse_args()
    size = dict(products=2000, samples=20, sessions=100, sus_devices=5, sus_s=2, storm=50, storm_changes=1000) \
        if args.smoke else dict(products=2000, samples=300, sessions=10_000, sus_devices=100, sus_s=10,
                               storm=2000, storm_changes=10_000)
    if args.sessions:
        size["sessions"] = args.sessions
    only = set(args.only.split(","))
    env = {"FIELDSYNC_REDIS_URL": REDIS, "FIELDSYNC_REDIS_PREFIX": f"bench-{uuid.uuid4().hex[:8]}"}
    with scratch_database() as url:
        world = asyncio.run(prepare(url, size["products"]))
        tokens = asyncio.run(all_tokens(url))
        with server_process(url, extra_env=env) as a, server_process(url, extra_env=env) as b:
            if "latency" in only:
                r = asyncio.run(latency(a, b, tokens, size["samples"]))
                print(f"commit-to-device via Redis, written on A, delivered by B ({r['samples']} samples): "
                      f"from the write request p50 {r['p50']:.2f} ms p99 {r['p99']:.2f} ms; from the write's "
                      f"reply (after its commit) p50 {r['reply_p50']:.2f} ms p99 {r['reply_p99']:.2f} ms; in B, "
                      f"mean live round {r['round_ms']:.2f} ms, commit-to-frame-queued mean {r['queued_ms']:.2f} ms, "
                      f"{r['within_5ms']:.0%} within 5 ms, {r['within_20ms']:.0%} within 20 ms")
        with server_process(url, extra_env=env, with_pid=True) as (base, pid):
            if "idle" in only:
                r = asyncio.run(idle_and_broadcast(base, pid, tokens, size["sessions"]))
                print(f"{r['sessions']} idle sessions on one process: {r['kb_per_session']:.1f} KB RSS each "
                      f"(process {r['rss_mb']:.0f} MB), connected in {r['connect_s']:.1f}s, /healthz p50 "
                      f"{r['healthz_ms_p50']:.2f} ms; one catalog change reached {r['received']}/{r['sessions']}: "
                      f"p50 {r['broadcast_p50']:.0f} ms, p99 {r['broadcast_p99']:.0f} ms (the server's live rounds: "
                      f"{r['round_ms']:.0f} ms to build and queue the frames)")
            if "sustained" in only:
                r = asyncio.run(sustained(base, tokens, size["sus_devices"], size["sus_s"], 500))
                print(f"sustained: {r['changes_per_s']:,.0f} row changes/s written, {r['delivered_rows']:,} row "
                      f"deliveries to {r['devices']} devices, lag p50 {r['lag_p50']:.0f} ms p99 {r['lag_p99']:.0f} ms")
            if "storm" in only:
                r = asyncio.run(storm(base, tokens, size["storm"], size["storm_changes"]))
                took = (f"all caught up in {r['all_caught_up_s']:.1f}s" if r["all_caught_up_s"] is not None else
                        f"only {r['caught_up']} caught up after {r['waited_s']:.0f}s")
                print(f"reconnect storm: {r['devices']} devices {r['behind_by_changes']:,} changes behind, {took}; "
                      f"connect failures {r['connect_failures']}, error frames {r['error_frames']}")


async def all_tokens(url: str) -> dict:
    import sqlalchemy as sa

    from bench.http_sync_bench import settings_for
    from server.app import build_services
    from server.domain.tables import users

    services = build_services(settings_for(url))
    async with services.db.read() as conn:
        rows = (await conn.execute(sa.select(users.c.username, users.c.id, users.c.tenant_id, users.c.role))).all()
    await services.db.dispose()
    return {name: services.tokens.issue(user_id=uid, tenant_id=tid, role=role) for name, uid, tid, role in rows}


if __name__ == "__main__":
    main()
