"""Issue 2 figures: initial sync rate, bytes per catalog row, incremental pull on a big
log, and an offline outbox replay. PostgreSQL local; server and client in separate processes.

    .venv/bin/python bench/http_sync_bench.py            # full size (100k products, 1M log)
    .venv/bin/python bench/http_sync_bench.py --smoke    # seconds; what CI runs
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import sys
import time
import uuid
from pathlib import Path

import httpx
import msgpack
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import SECRET, median, scratch_database, server_process  # noqa: E402
from server.app import build_services  # noqa: E402
from server.config import Settings  # noqa: E402
from server.domain.demo import load_demo  # noqa: E402
from server.domain.tables import customers, orders, prices, products, stock, users  # noqa: E402
from server.migrations import upgrade  # noqa: E402
from sync.storage import change_log, log_head  # noqa: E402

MSGPACK = {"Content-Type": "application/msgpack"}


def settings_for(url: str) -> Settings:
    return Settings(database_url=url, redis_url=None, jwt_secret=SECRET.encode())


async def prepare(url: str, products: int) -> dict:
    services = build_services(settings_for(url))
    await upgrade(services.db)
    started = time.perf_counter()
    summary = await load_demo(services.db, services.registry, products=products, customers=500, days=2)
    loaded = time.perf_counter() - started
    async with services.db.read() as conn:
        ids = dict((await conn.execute(sa.select(users.c.username, users.c.id))).all())
    tokens = {name: services.tokens.issue(user_id=ids[name], tenant_id=summary.tenant_id,
                                          role="pos" if name.startswith("pos") else "salesperson")
              for name in ("pos1", "sales1")}
    await services.db.dispose()
    return {"tenant": summary.tenant_id, "tokens": tokens, "load_s": loaded, "sales1": ids["sales1"]}


def pull_all(http: httpx.Client, token: str, client_id: str, cursor=None, limit=10_000, gzip_ok=False):
    """Pull to more = false, decoding every row; returns (rows, wire bytes, cursor, catalog rows)."""
    headers = {**MSGPACK, "Authorization": f"Bearer {token}",
               "Accept-Encoding": "gzip" if gzip_ok else "identity"}
    rows = wire = 0
    catalog: list = []
    while True:
        body = msgpack.packb({"v": 1, "client_id": client_id, "cursor": cursor, "limit": limit})
        response = http.post("/sync/pull", content=body, headers=headers)
        wire += response.num_bytes_downloaded
        batch = msgpack.unpackb(response.content, raw=False)
        for name, part in batch["data"].items():
            for row in part["rows"]:  # touch every row as a client applying it would
                rows += 1
                if name == "catalog":
                    catalog.append(row)
            rows += len(part["deletes"])
        cursor = batch["cursor"]
        if not batch["more"]:
            return rows, wire, cursor, catalog


def initial_sync(base: str, token: str, runs: int) -> dict:
    with httpx.Client(base_url=base, timeout=120) as http:
        rates, times = [], []
        for _ in range(runs):
            started = time.perf_counter()
            rows, plain_wire, cursor, catalog = pull_all(http, token, f"bench-{uuid.uuid4().hex[:8]}")
            elapsed = time.perf_counter() - started
            rates.append(rows / elapsed)
            times.append(elapsed)
        _, gz_wire, _, _ = pull_all(http, token, f"bench-{uuid.uuid4().hex[:8]}", gzip_ok=True)
    packed = len(msgpack.packb(catalog))
    return {"rows": rows, "seconds": median(times), "rows_per_s": median(rates),
            "catalog_rows": len(catalog), "catalog_bytes_per_row": packed / len(catalog),
            "catalog_gzip_bytes_per_row": len(gzip.compress(msgpack.packb(catalog), 5)) / len(catalog),
            "wire_bytes": plain_wire, "wire_bytes_gzip": gz_wire, "cursor": cursor}


async def build_hot(url: str, tenant: int) -> int:
    """What the `hot_snapshots` job does every 5 minutes."""
    from sync import hot

    services = build_services(settings_for(url))
    pages = await hot.build(services.db, services.registry, tenant)
    await services.db.dispose()
    return pages


async def grow_log(url: str, tenant: int, entries: int, sales1: int) -> None:
    """Append `entries` one-row transactions to buckets the POS device does not hold
    (warehouse stock and the salespeople's customers), as a busy day of the office would."""
    services = build_services(settings_for(url))
    async with services.db.write() as conn:
        head = await conn.scalar(sa.select(log_head.c.seq).where(log_head.c.tenant_id == tenant))
        warehouse = await conn.scalar(sa.select(users.c.branch_id).where(users.c.id == sales1))
        await conn.execute(sa.text(  # ids are ints read from our own tables
            "INSERT INTO change_log (tenant_id, bucket, seq, key, op, at) "
            f"SELECT :t, CASE WHEN g % 2 = 0 THEN 'stock:branch_id:#{int(warehouse)}' "
            f"ELSE 'customers:salesperson_id:#' || ({int(sales1)} + g % 5) END, :h + g, (g % 100000)::text, 1, 0 "
            "FROM generate_series(1, :n) AS g"), {"t": tenant, "h": head, "n": entries})
        await conn.execute(sa.update(log_head).where(log_head.c.tenant_id == tenant).values(seq=head + entries))
        await conn.exec_driver_sql("ANALYZE change_log")
    await services.db.dispose()


async def incremental(url: str, base: str, tenant: int, token: str, cursor: bytes, repeats: int) -> dict:
    """10 price changes the POS device holds, then its pull: server time and HTTP round trip."""
    from server.admin import apply
    from server.domain.backoffice import WRITABLE
    from server.domain.principals import principal_for

    services = build_services(settings_for(url))
    async with services.db.read() as conn:
        ids = (await conn.execute(sa.select(prices.c.id).where(prices.c.tenant_id == tenant)
                                  .order_by(prices.c.id).limit(400))).scalars().all()
        log_size = await conn.scalar(sa.select(sa.func.count()).select_from(change_log))
    await apply(services.db, services.registry, tenant, WRITABLE["prices"],
                      [{"id": i, "amount": 999} for i in ids[::40][:10]], [])
    principal = await principal_for(services.db, services.tokens.verify(token))
    server_ms, changed = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        batch = await services.reader.pull(principal, cursor)
        server_ms.append((time.perf_counter() - started) * 1000)
        changed = sum(len(p["rows"]) + len(p["deletes"]) for p in batch["data"].values())
    await services.db.dispose()
    with httpx.Client(base_url=base) as http:
        round_trips = []
        for _ in range(repeats):
            body = msgpack.packb({"v": 1, "client_id": "bench-inc", "cursor": cursor})
            started = time.perf_counter()
            http.post("/sync/pull", content=body, headers={**MSGPACK, "Authorization": f"Bearer {token}"})
            round_trips.append((time.perf_counter() - started) * 1000)
    return {"log_entries": log_size, "changes_seen": changed, "server_ms_p50": median(server_ms),
            "http_ms_p50": median(round_trips)}


async def outbox(url: str, tenant: int, sales1: int) -> list[dict]:
    """1 order per mutation, 5 lines each, over sales1's customers and well-stocked products."""
    services = build_services(settings_for(url))
    async with services.db.read() as conn:
        clients = (await conn.execute(sa.select(customers.c.id, customers.c.pricelist_id)
                                      .where(customers.c.salesperson_id == sales1))).all()
        stocked = (await conn.execute(sa.select(stock.c.product_id).where(
            stock.c.tenant_id == tenant, stock.c.on_hand - stock.c.reserved >= 20,
            stock.c.branch_id == sa.select(users.c.branch_id).where(users.c.id == sales1).scalar_subquery(),
        ).order_by(stock.c.product_id))).scalars().all()
        priced = set((await conn.execute(
            sa.select(prices.c.product_id).join(products, products.c.id == prices.c.product_id)
            .where(prices.c.tenant_id == tenant, prices.c.valid_to.is_(None), products.c.active)
            .group_by(prices.c.product_id).having(sa.func.count(sa.distinct(prices.c.pricelist_id)) == 2)
        )).scalars().all())
    await services.db.dispose()
    return clients, [p for p in stocked if p in priced]


def replay(base: str, token: str, count: int, clients, products, client_id: str = "bench-outbox") -> dict:
    now = int(time.time() * 1000)
    mutations = [{"id": n + 1, "name": "order.create", "at": now, "args": {
        "id": str(uuid.uuid4()), "customer_id": clients[n % len(clients)][0],
        "lines": [{"product_id": products[(n * 5 + k) % len(products)], "qty": 1} for k in range(5)]}}
        for n in range(count)]
    headers = {**MSGPACK, "Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, timeout=300) as http:
        def push_all():
            results = []
            for start in range(0, count, 500):
                body = msgpack.packb({"v": 1, "client_id": client_id, "mutations": mutations[start:start + 500]})
                results += msgpack.unpackb(http.post("/sync/push", content=body, headers=headers).content)["results"]
            return results

        started = time.perf_counter()
        first = push_all()
        elapsed = time.perf_counter() - started
        started = time.perf_counter()
        again = push_all()
        replay_s = time.perf_counter() - started
    applied = sum(r["status"] == "applied" for r in first)
    codes = {r.get("code") for r in first if r["status"] != "applied"}
    return {"mutations": count, "applied": applied, "refused_codes": sorted(c for c in codes if c),
            "seconds": elapsed, "replay_seconds": replay_s, "replay_identical": first == again}


async def count_orders(url: str) -> int:
    services = build_services(settings_for(url))
    async with services.db.read() as conn:
        total = await conn.scalar(sa.select(sa.func.count()).select_from(orders))
    await services.db.dispose()
    return total


def main() -> None:  # noqa: PLR0914 - a script: one figure after another
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    products, log, orders_n, runs = (2_000, 20_000, 50, 1) if args.smoke else (100_000, 1_000_000, 1_000, 3)
    with scratch_database() as url:
        world = asyncio.run(prepare(url, products))
        print(f"demo loaded: {products} products in {world['load_s']:.1f}s")
        # Jobs (invoice PDFs, notices) are enqueued but not consumed here, as in production
        # where `fieldsync worker` runs them in its own process: in-process consumer threads
        # would share this server's two cores and GIL with the requests being measured.
        with server_process(url, extra_env={"FIELDSYNC_JOBS_THREADS": "0"}) as base:
            pos = world["tokens"]["pos1"]
            sync = initial_sync(base, pos, runs)
            print(f"initial sync (pos1): {sync['rows']} rows in {sync['seconds']:.2f}s (median of {runs}) "
                  f"= {sync['rows_per_s']:,.0f} rows/s")
            print(f"catalog row: {sync['catalog_bytes_per_row']:.1f} B msgpack, "
                  f"{sync['catalog_gzip_bytes_per_row']:.1f} B gzipped; whole sync on the wire "
                  f"{sync['wire_bytes'] / 1e6:.1f} MB plain, {sync['wire_bytes_gzip'] / 1e6:.1f} MB gzip")
            pages = asyncio.run(build_hot(url, world["tenant"]))
            hot = initial_sync(base, pos, runs)
            print(f"initial sync (pos1) served from {pages} pre-built hot pages (catalog, stock): "
                  f"{hot['rows']} rows in {hot['seconds']:.2f}s = {hot['rows_per_s']:,.0f} rows/s")
            asyncio.run(grow_log(url, world["tenant"], log, world["sales1"]))
            with httpx.Client(base_url=base, timeout=120) as http:  # the device catches up first
                _, _, cursor, _ = pull_all(http, pos, "bench-inc", sync["cursor"])
            inc = asyncio.run(incremental(url, base, world["tenant"], pos, cursor, 30))
            print(f"incremental pull: {inc['changes_seen']} changes from a log of {inc['log_entries']:,} entries: "
                  f"server {inc['server_ms_p50']:.2f} ms p50, HTTP round trip {inc['http_ms_p50']:.2f} ms p50")
            before = asyncio.run(count_orders(url))
            clients, stocked = asyncio.run(outbox(url, world["tenant"], world["sales1"]))
            result = replay(base, world["tokens"]["sales1"], orders_n, clients, stocked)
            made = asyncio.run(count_orders(url)) - before
            print(f"outbox replay: {result['mutations']} order.create x 5 lines in {result['seconds']:.2f}s "
                  f"({result['applied']} applied, refused: {result['refused_codes'] or 'none'}); "
                  f"replayed again in {result['replay_seconds']:.2f}s, identical results: "
                  f"{result['replay_identical']}, orders created: {made} (duplicates: {made - result['applied']})")


if __name__ == "__main__":
    main()
