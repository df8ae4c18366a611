"""Issue 11 figures: what change capture by triggers costs a plain-SQL writer, and how fast
a plain-SQL write reaches a live device.

    .venv/bin/python bench/capture_bench.py            # full sizes
    .venv/bin/python bench/capture_bench.py --smoke    # seconds; what CI runs

PostgreSQL local. Writer cost: the same statements on the same demo data, with fieldsync's
triggers installed and uninstalled (sync/capture.py), medians and the ratio, from one run.
Latency: a WebSocket device of pos1 on a `fieldsync serve` process; another connection
renames a catalog product by plain SQL; from just before the COMMIT to the frame.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median, percentile, scratch_database, server_process  # noqa: E402
from bench.http_sync_bench import prepare, settings_for  # noqa: E402
from bench.ws_bench import Device, all_tokens, caught_up_cursor, frame_has  # noqa: E402
from server.app import build_services  # noqa: E402
from sync import capture  # noqa: E402


def plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def timed(conn: asyncpg.Connection, statements: list[str], runs: int) -> float:
    """Median ms of ``statements`` in one transaction, committed."""
    took = []
    for _ in range(runs):
        started = time.perf_counter()
        async with conn.transaction():
            for statement in statements:
                await conn.execute(statement)
        took.append((time.perf_counter() - started) * 1000)
    return median(took)


async def copy_ms(conn: asyncpg.Connection, tenant: int, rows: int, runs: int) -> float:
    took = []
    for run in range(runs):
        records = [(500_000 + run * rows + k, tenant, f"COPY-{run}-{k}", f"Copied {k}", "Imported", "pcs", True)
                   for k in range(rows)]
        started = time.perf_counter()
        async with conn.transaction():
            await conn.copy_records_to_table("products", columns=["id", "tenant_id", "sku", "name", "category",
                                                                   "unit", "active"], records=records)
        took.append((time.perf_counter() - started) * 1000)
        await conn.execute("DELETE FROM products WHERE id >= 500000")
    return median(took)


async def writer_cost(url: str, tenant: int, bulk: int, singles: int, runs: int) -> dict:
    services = build_services(settings_for(url))
    conn = await asyncpg.connect(plain(url), server_settings={"application_name": "erp-backend"})
    figures: dict[str, dict[str, float]] = {}
    try:
        for mode in ("with", "without", "with again"):
            if mode == "without":
                await capture.uninstall(services.db)
            elif mode == "with again":
                await capture.install(services.db, services.registry)
            single = []
            for n in range(singles):
                single.append(await timed(conn, [f"UPDATE products SET name = 'single {n}' WHERE id = {1 + n % 100}"],
                                          1))
            figures[mode] = {
                "single": median(single),
                "update": await timed(conn, [f"UPDATE products SET name = name || 'x' WHERE tenant_id = {tenant} "
                                             f"AND id <= {bulk}"], runs),
                "copy": await copy_ms(conn, tenant, bulk, runs),
            }
    finally:
        await conn.close()
        await services.db.dispose()
    return figures


async def live_latency(base: str, url: str, token: str, samples: int) -> dict:
    device = Device(base, token, await caught_up_cursor(base, token))
    await device.connect()
    await asyncio.wait_for(device.live.wait(), 120)
    conn = await asyncpg.connect(plain(url), server_settings={"application_name": "erp-backend"})
    times, missed = [], 0
    # Products the terminal holds: an inactive one is in no catalog, and its change reaches no device.
    held = [r["id"] for r in await conn.fetch("SELECT id FROM products WHERE active ORDER BY id LIMIT 50")]
    try:
        for n in range(samples):
            tag, seen = f"P{n}x", len(device.frames)
            async with conn.transaction():
                await conn.execute(f"UPDATE products SET name = '{tag} {n}' WHERE id = {held[n % len(held)]}")
                started = time.perf_counter()  # the COMMIT is next
            while not any(frame_has(f, tag) for _, f in device.frames[seen:]):
                if time.perf_counter() - started > 5:  # report it, do not hang
                    missed += 1
                    break
                await asyncio.sleep(0.0002)
            else:
                arrived = next(t for t, f in device.frames[seen:] if frame_has(f, tag))
                times.append((arrived - started) * 1000)
            await asyncio.sleep(0.01)
    finally:
        await conn.close()
        await device.close()
    return {"p50": median(times) if times else float("nan"), "p99": percentile(times, 99) if times else float("nan"),
            "samples": samples, "missed": missed}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    products, bulk, singles, runs, samples = (2_000, 1_000, 50, 2, 20) if args.smoke else \
        (20_000, 10_000, 500, 5, 300)
    with scratch_database() as url:
        world = asyncio.run(prepare(url, products))
        cost = asyncio.run(writer_cost(url, world["tenant"], bulk, singles, runs))
        w, wo = cost["with"], cost["without"]
        print(f"plain-SQL writer, median ms with / without capture triggers (ratio): "
              f"single-row UPDATE {w['single']:.3f} / {wo['single']:.3f} ({w['single'] / wo['single']:.2f}x); "
              f"{bulk:,}-row UPDATE {w['update']:.1f} / {wo['update']:.1f} ({w['update'] / wo['update']:.2f}x); "
              f"COPY of {bulk:,} rows {w['copy']:.1f} / {wo['copy']:.1f} ({w['copy'] / wo['copy']:.2f}x); "
              f"re-installed: single {cost['with again']['single']:.3f}, update {cost['with again']['update']:.1f}, "
              f"copy {cost['with again']['copy']:.1f}")
        tokens = asyncio.run(all_tokens(url))
        with server_process(url) as base:
            r = asyncio.run(live_latency(base, url, tokens["pos1"], samples))
        print(f"plain-SQL write to a live WebSocket device ({r['samples']} samples, from the COMMIT): "
              f"p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms, not there after 5 s: {r['missed']}")


if __name__ == "__main__":
    main()
