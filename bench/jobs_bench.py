"""Issue 4 figures: push-to-invoice-ready latency with one worker, PDFs per second per
worker, and compaction of the demo log grown to 1,000,000 changes. Local PostgreSQL and
Redis; server, worker and client in separate processes.

    .venv/bin/python bench/jobs_bench.py            # full size
    .venv/bin/python bench/jobs_bench.py --smoke    # seconds
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgpack
import redis
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, SECRET, free_port, median, percentile, scratch_database, wait_ready  # noqa: E402
from server.domain.background.invoices import invoice_sheet  # noqa: E402
from server.domain.background.pdf import render  # noqa: E402
from server.app import build_services  # noqa: E402
from server.config import Settings  # noqa: E402
from server.domain.demo import load_demo  # noqa: E402
from server.domain.job_tables import document_files  # noqa: E402
from server.domain.tables import customers, invoices, products, stock, users  # noqa: E402
from server.migrations import upgrade  # noqa: E402
from sync import compaction  # noqa: E402
from sync.storage import Database, change_log, log_head  # noqa: E402

REDIS = os.environ.get("FIELDSYNC_TEST_REDIS", "redis://127.0.0.1:6379/0")
MSGPACK = {"Content-Type": "application/msgpack"}
DAY = 86_400_000


async def prepare(url: str, catalog: int, days: int) -> dict:
    services = build_services(Settings(database_url=url, redis_url=None, jwt_secret=SECRET.encode()))
    await upgrade(services.db)
    summary = await load_demo(services.db, services.registry, products=catalog, customers=500, days=days)
    async with services.db.read() as conn:
        sales1, branch = (await conn.execute(sa.select(users.c.id, users.c.branch_id)
                                             .where(users.c.username == "sales1"))).one()
        clients = (await conn.execute(sa.select(customers.c.id).where(customers.c.salesperson_id == sales1))).scalars()
        stocked = (await conn.execute(sa.select(stock.c.product_id).join(products, products.c.id == stock.c.product_id)
                                      .where(stock.c.branch_id == branch, products.c.active,
                                             stock.c.on_hand - stock.c.reserved > 100))).scalars()
        clients, stocked = list(clients), list(stocked)
    token = services.tokens.issue(user_id=sales1, tenant_id=summary.tenant_id, role="salesperson")
    await services.db.dispose()
    return {"tenant": summary.tenant_id, "token": token, "customers": clients, "products": stocked}


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """A `fieldsync` command in its own process, its log lines to a file (a pipe nobody
    reads would fill up and stall it)."""
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "server.cli", *args], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.send_signal(2)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def server(env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    with process(["serve", "--port", str(port)], env, Path(env["FIELDSYNC_DATA_DIR"]) / "serve.log") as proc:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, proc)
        yield base


@contextlib.contextmanager
def worker_process(env: dict[str, str], threads: int) -> Iterator[subprocess.Popen]:
    with process(["worker", "--workers", str(threads)], env, Path(env["FIELDSYNC_DATA_DIR"]) / "worker.log") as proc:
        time.sleep(2.0)  # interpreter, imports, start-up sweep
        yield proc


def order_body(world: dict, n: int, client_id: str, mutation_id: int) -> bytes:
    mutation = {"id": mutation_id, "name": "order.create", "at": int(time.time() * 1000), "args": {
        "id": str(uuid.uuid4()), "customer_id": world["customers"][n % len(world["customers"])],
        "lines": [{"product_id": world["products"][(n * 7 + k) % len(world["products"])], "qty": 1}
                  for k in range(3)]}}
    return msgpack.packb({"v": 1, "client_id": client_id, "mutations": [mutation]})


def latency(base: str, world: dict, count: int) -> dict:
    """Push one order, then pull every 5 ms until its invoice row is ready on the device."""
    headers = {**MSGPACK, "Authorization": f"Bearer {world['token']}"}
    samples = []
    with httpx.Client(base_url=base, timeout=60) as http:
        cursor = None
        while True:
            page = msgpack.unpackb(http.post("/sync/pull", headers=headers, content=msgpack.packb(
                {"v": 1, "client_id": "bench-phone", "cursor": cursor, "limit": 10000})).content)
            cursor = page["cursor"]
            if not page["more"]:
                break
        for n in range(count):
            started = time.perf_counter()
            result = msgpack.unpackb(http.post("/sync/push", headers=headers,
                                               content=order_body(world, n, "bench-phone", n + 1)).content)
            if result["results"][0]["status"] != "applied":
                raise RuntimeError(f"order refused: {result['results'][0]}")
            order_id = result["results"][0]["result"]["order_id"]
            while True:
                page = msgpack.unpackb(http.post("/sync/pull", headers=headers, content=msgpack.packb(
                    {"v": 1, "client_id": "bench-phone", "cursor": cursor})).content)
                cursor = page["cursor"]
                part = page["data"].get("invoices")
                if part and any(dict(zip(part["cols"], row))["order_id"] == order_id
                                and dict(zip(part["cols"], row))["status"] == "ready" for row in part["rows"]):
                    break
                time.sleep(0.005)
            samples.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": median(samples), "p99_ms": percentile(samples, 99), "max_ms": max(samples), "n": count}


async def ready_count(url: str, since: int = 0) -> tuple[int, int | None, int | None]:
    """Ready invoices, and the first and last time a PDF was stored since ``since`` (ms)."""
    db = Database(url)
    try:
        async with db.read() as conn:
            ready = await conn.scalar(sa.select(sa.func.count()).select_from(invoices)
                                      .where(invoices.c.status == "ready"))
            first, last = (await conn.execute(sa.select(sa.func.min(document_files.c.created_at),
                                                        sa.func.max(document_files.c.created_at))
                                              .where(document_files.c.created_at >= since))).one()
            return ready, first, last
    finally:
        await db.dispose()


def throughput(base: str, url: str, env: dict[str, str], world: dict, count: int, threads: int) -> dict:
    """Queue `count` orders' jobs with no worker running, then one worker drains them; the
    rate is taken between the first and the last PDF stored (start-up excluded)."""
    headers = {**MSGPACK, "Authorization": f"Bearer {world['token']}"}
    before = asyncio.run(ready_count(url))[0]
    client_id = f"bench-burst-{uuid.uuid4().hex[:6]}"
    with httpx.Client(base_url=base, timeout=60) as http:
        for n in range(count):
            http.post("/sync/push", headers=headers, content=order_body(world, 100_000 + n, client_id, n + 1))
    since = int(time.time() * 1000)
    with worker_process(env, threads):
        while (found := asyncio.run(ready_count(url, since)))[0] < before + count:
            time.sleep(0.1)
    seconds = max(found[2] - found[1], 1) / 1000
    return {"invoices": count, "threads": threads, "seconds": seconds, "per_second": (count - 1) / seconds}


async def render_only(url: str, tenant: int, count: int) -> float:
    """Layout alone (no queue, no database writes): PDFs per second in one thread."""
    db = Database(url)
    try:
        async with db.read() as conn:
            rows = [dict(r) for r in (await conn.execute(sa.select(invoices).limit(20))).mappings()]
            sheets = [await invoice_sheet(conn, tenant, row) for row in rows]
    finally:
        await db.dispose()
    started = time.perf_counter()
    for n in range(count):
        render(sheets[n % len(sheets)])
    return count / (time.perf_counter() - started)


async def grow_and_compact(url: str, tenant: int, changes: int) -> dict:
    """The demo log plus synthetic churn up to `changes` entries over 60 days of commit times
    (history re-touching the demo's own rows), then one compaction with 30 days' retention."""
    db = Database(url)
    try:
        plain_before = await compaction.log_size(db, tenant)
        [plain] = await compaction.compact(db, tenant_id=tenant)
        now = int(time.time() * 1000)
        async with db.write() as conn:
            head = await conn.scalar(sa.select(log_head.c.seq).where(log_head.c.tenant_id == tenant))
            await conn.execute(sa.update(change_log).where(change_log.c.tenant_id == tenant)
                               .values(at=now - 60 * DAY))
            await conn.execute(sa.text(
                "CREATE TEMP TABLE pairs AS SELECT row_number() OVER () AS n, bucket, key "
                "FROM (SELECT DISTINCT bucket, key FROM change_log WHERE tenant_id = :t) d"), {"t": tenant})
            pairs = await conn.scalar(sa.text("SELECT count(*) FROM pairs"))
            extra = changes - plain.entries_after
            positions = extra // 10  # ten rows per transaction
            await conn.execute(sa.text(
                "INSERT INTO change_log (tenant_id, bucket, seq, key, op, at) "
                "SELECT :t, p.bucket, :h + 1 + g / 10, p.key, CASE WHEN g % 50 = 0 THEN 0 ELSE 1 END, "
                "       :start + (g / 10)::bigint * :span / :positions "
                "FROM generate_series(0, :n - 1) AS g JOIN pairs p ON p.n = 1 + (g::bigint * 7919) % :pairs "
                "ON CONFLICT DO NOTHING"),
                {"t": tenant, "h": head, "n": extra, "pairs": pairs, "start": now - 60 * DAY, "span": 60 * DAY,
                 "positions": positions})
            await conn.execute(sa.update(log_head).where(log_head.c.tenant_id == tenant)
                               .values(seq=head + positions + 1))
            await conn.exec_driver_sql("ANALYZE change_log")
        [grown] = await compaction.compact(db, tenant_id=tenant)
    finally:
        await db.dispose()
    return {"plain": plain, "plain_before": plain_before, "grown": grown}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    pushes, burst, log_size = (20, 50, 100_000) if args.smoke else (300, 500, 1_000_000)
    prefix = f"fsbench{uuid.uuid4().hex[:8]}"
    with scratch_database() as url:
        world = asyncio.run(prepare(url, 2_000 if args.smoke else 10_000, 2 if args.smoke else 21))
        env = {**os.environ, "FIELDSYNC_DATABASE_URL": url, "FIELDSYNC_REDIS_URL": REDIS,
               "FIELDSYNC_REDIS_PREFIX": prefix, "FIELDSYNC_JWT_SECRET": SECRET,
               "FIELDSYNC_DATA_DIR": f"/tmp/{prefix}", "FIELDSYNC_PULL_MAX_LIMIT": "20000", "FIELDSYNC_MAX_DEVICES_PER_USER": "1000000",
               "FIELDSYNC_RATE_LIMITS": "0"}
        Path(env["FIELDSYNC_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
        try:
            with server(env) as base:
                with worker_process(env, 1):
                    lat = latency(base, world, pushes)
                print(f"push -> invoice ready on the device, one worker (1 thread), {lat['n']} orders: "
                      f"p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms, max {lat['max_ms']:.1f} ms", flush=True)
                for threads in (1, 4):
                    done = throughput(base, url, env, world, burst, threads)
                    print(f"drain {done['invoices']} queued orders (invoice + notice + dashboard jobs), one worker, "
                          f"{threads} thread(s): {done['seconds']:.2f} s, {done['per_second']:.1f} invoices/s",
                          flush=True)
        finally:
            client = redis.Redis.from_url(REDIS)
            for key in client.scan_iter(match=f"huey.*.{prefix}_jobs*"):
                client.delete(key)
            client.close()
        print(f"PDF layout alone: {asyncio.run(render_only(url, world['tenant'], 200)):.1f} PDFs/s in one thread",
              flush=True)
        result = asyncio.run(grow_and_compact(url, world["tenant"], log_size))
        grown = result["grown"]
        plain = result["plain"]
        print(f"demo log as loaded: {result['plain_before']} entries -> {plain.entries_after} after compaction "
              f"in {plain.seconds:.2f} s ({plain.superseded} superseded; nothing is older than 30 days)")
        print(f"demo log grown to {grown.entries_before} entries over 60 days: compacted in {grown.seconds:.1f} s "
              f"to {grown.entries_after} ({grown.below_horizon} beyond the 30-day horizon, "
              f"{grown.superseded} superseded), horizon {grown.horizon} of head {grown.head}")


if __name__ == "__main__":
    main()
