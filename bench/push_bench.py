"""Issue 13 figures, the push half: an offline outbox of order.create replayed, a POS
terminal's outbox of sale.complete, and one order.create's push latency, over HTTP and
WebSocket. PostgreSQL local; `fieldsync serve` and this client in separate processes.

    .venv/bin/python bench/push_bench.py            # full size (1,000 orders, 300 sales)
    .venv/bin/python bench/push_bench.py --smoke    # seconds; what CI runs
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

import httpx
import msgpack
import sqlalchemy as sa
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median, percentile, scratch_database, server_process  # noqa: E402
from bench.http_sync_bench import outbox, prepare, settings_for  # noqa: E402
from server.app import build_services  # noqa: E402
from server.domain.tables import orders, prices, products, sales  # noqa: E402
from sync.storage import log_head, mutation_ledger  # noqa: E402

MSGPACK = {"Content-Type": "application/msgpack"}
CHUNK = 500  # mutations per push: the server's default FIELDSYNC_MAX_MUTATIONS


def order_mutations(count: int, clients, stocked, first_id: int = 1) -> list[dict]:
    now = int(time.time() * 1000)
    return [{"id": first_id + n, "name": "order.create", "at": now, "args": {
        "id": str(uuid.uuid4()), "customer_id": clients[n % len(clients)][0],
        "lines": [{"product_id": stocked[(n * 5 + k) % len(stocked)], "qty": 1} for k in range(5)]}}
        for n in range(count)]


def sale_mutations(count: int, priced: list[tuple[int, int]]) -> list[dict]:
    now = int(time.time() * 1000)
    return [{"id": n + 1, "name": "sale.complete", "at": now - (count - n) * 60_000, "args": {
        "id": str(uuid.uuid4()), "payment_method": "cash",
        "lines": [{"product_id": priced[(n * 3 + k) % len(priced)][0], "price": priced[(n * 3 + k) % len(priced)][1],
                   "qty": 1 + k} for k in range(3)]}}
        for n in range(count)]


async def sellable(url: str, tenant: int) -> list[tuple[int, int]]:
    """(product, current amount) of active products with a current price."""
    services = build_services(settings_for(url))
    async with services.db.read() as conn:
        rows = (await conn.execute(
            sa.select(prices.c.product_id, sa.func.min(prices.c.amount))
            .join(products, products.c.id == prices.c.product_id)
            .where(prices.c.tenant_id == tenant, prices.c.valid_to.is_(None), products.c.active)
            .group_by(prices.c.product_id).order_by(prices.c.product_id).limit(500))).all()
    await services.db.dispose()
    return [tuple(row) for row in rows]


async def footprint(url: str, tenant: int) -> dict:
    """What a replay must not change: rows made, ledger entries, the log head."""
    services = build_services(settings_for(url))
    async with services.db.read() as conn:
        counted = {t.name: await conn.scalar(sa.select(sa.func.count()).select_from(t))
                   for t in (orders, sales, mutation_ledger)}
        counted["log_head"] = await conn.scalar(sa.select(log_head.c.seq).where(log_head.c.tenant_id == tenant))
    await services.db.dispose()
    return counted


def push_http(base: str, token: str, client_id: str, mutations: list[dict]) -> tuple[list[dict], float]:
    headers = {**MSGPACK, "Authorization": f"Bearer {token}"}
    results = []
    with httpx.Client(base_url=base, timeout=300) as http:
        started = time.perf_counter()
        for start in range(0, len(mutations), CHUNK):
            body = msgpack.packb({"v": 1, "client_id": client_id, "mutations": mutations[start:start + CHUNK]})
            response = http.post("/sync/push", content=body, headers=headers)
            response.raise_for_status()
            results += msgpack.unpackb(response.content, raw=False)["results"]
        return results, time.perf_counter() - started


def outbox_run(url: str, base: str, tenant: int, token: str, mutations: list[dict], client_id: str) -> dict:
    """Push the outbox, then push it again: the second pass must return the same results
    and change nothing."""
    before = asyncio.run(footprint(url, tenant))
    first, seconds = push_http(base, token, client_id, mutations)
    after = asyncio.run(footprint(url, tenant))
    again, replay_seconds = push_http(base, token, client_id, mutations)
    after_replay = asyncio.run(footprint(url, tenant))
    applied = sum(r["status"] == "applied" for r in first)
    made = sum(after[t] - before[t] for t in ("orders", "sales"))
    return {"mutations": len(mutations), "applied": applied, "seconds": seconds, "replay_seconds": replay_seconds,
            "refused": sorted({r.get("code") for r in first if r["status"] != "applied"}),
            "identical": first == again, "unchanged": after == after_replay,
            "in_order": [r["id"] for r in first] == [m["id"] for m in mutations],
            "duplicates": made - applied, "ledger": after["mutation_ledger"] - before["mutation_ledger"]}


def report(label: str, run: dict) -> None:
    print(f"{label}: {run['mutations']} in {run['seconds']:.3f}s ({run['applied']} applied, refused: "
          f"{run['refused'] or 'none'}, results in order: {run['in_order']}, ledger entries: {run['ledger']}); "
          f"replayed again in {run['replay_seconds']:.3f}s, identical results: {run['identical']}, "
          f"nothing changed: {run['unchanged']}, duplicates: {run['duplicates']}")


def latency_http(base: str, token: str, samples: int, clients, stocked) -> list[float]:
    mutations = order_mutations(samples, clients, stocked)
    headers = {**MSGPACK, "Authorization": f"Bearer {token}"}
    client_id = f"bench-lat-{uuid.uuid4().hex[:6]}"
    times = []
    with httpx.Client(base_url=base, timeout=60) as http:
        for m in mutations:
            body = msgpack.packb({"v": 1, "client_id": client_id, "mutations": [m]})
            started = time.perf_counter()
            result = msgpack.unpackb(http.post("/sync/push", content=body, headers=headers).content)["results"][0]
            times.append((time.perf_counter() - started) * 1000)
            assert result["status"] == "applied", result
    return times


async def latency_ws(base: str, token: str, samples: int, clients, stocked) -> list[float]:
    mutations = order_mutations(samples, clients, stocked)
    url = base.replace("http://", "ws://") + "/sync/ws"
    times = []
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                                  max_size=2**24, ping_interval=None) as ws:
        await ws.send(msgpack.packb({"t": "hello", "v": 1, "client_id": f"bench-ws-{uuid.uuid4().hex[:6]}",
                                     "cursor": None}))
        for m in mutations:
            started = time.perf_counter()
            await ws.send(msgpack.packb({"t": "push", "mutations": [m]}))
            while True:  # catch-up and live change frames come on the same socket
                frame = msgpack.unpackb(await ws.recv(), raw=False)
                if frame.get("t") == "results":
                    break
            times.append((time.perf_counter() - started) * 1000)
            assert frame["results"][0]["status"] == "applied", frame
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    products_n, orders_n, sales_n, samples = (2_000, 60, 40, 30) if args.smoke else (5_000, 1_000, 300, 300)
    with scratch_database() as url:
        world = asyncio.run(prepare(url, products_n))
        tenant = world["tenant"]
        clients, stocked = asyncio.run(outbox(url, tenant, world["sales1"]))
        priced = asyncio.run(sellable(url, tenant))
        print(f"demo loaded: {products_n} products, {len(clients)} customers of sales1, {len(stocked)} stocked")
        # Jobs are enqueued to the embedded queue (SQLite under the data dir) and left there,
        # as with `fieldsync worker` elsewhere: consumer threads would share the two cores.
        with server_process(url, extra_env={"FIELDSYNC_JOBS_THREADS": "0"}) as base:
            sales1, pos1 = world["tokens"]["sales1"], world["tokens"]["pos1"]
            report(f"outbox replay (order.create x 5 lines, pushes of {CHUNK})",
                   outbox_run(url, base, tenant, sales1, order_mutations(orders_n, clients, stocked), "bench-orders"))
            report("POS outbox (sale.complete x 3 lines)",
                   outbox_run(url, base, tenant, pos1, sale_mutations(sales_n, priced), "bench-pos"))
            http_ms = latency_http(base, sales1, samples, clients, stocked)
            print(f"push of one order.create over HTTP ({samples} in a row): p50 {median(http_ms):.2f} ms, "
                  f"p99 {percentile(http_ms, 99):.2f} ms")
            ws_ms = asyncio.run(latency_ws(base, sales1, samples, clients, stocked))
            print(f"push of one order.create over WebSocket ({samples} in a row): p50 {median(ws_ms):.2f} ms, "
                  f"p99 {percentile(ws_ms, 99):.2f} ms")


if __name__ == "__main__":
    main()
