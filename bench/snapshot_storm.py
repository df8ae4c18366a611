"""Issue 13 figures: a storm of fresh devices all asking for a snapshot at once, against a
`fieldsync serve` process on PostgreSQL with the demo data, without and with the
per-process snapshot cap (FIELDSYNC_MAX_SNAPSHOTS).

Every device pulls over HTTP from a nil cursor to ``more = false``. A 429 or 503 with
``retry_after`` is retried after ``retry_after`` plus up to as long again, a transport
error (connection reset) after 1-2 s, as the clients do; any other answer ends the device
and is counted. Devices are spread over the demo's
nine users (pos1..pos4, sales1..sales5); the server's rate limits stay at their defaults.

    .venv/bin/python bench/snapshot_storm.py            # 2,000 devices, 2,000 products
    .venv/bin/python bench/snapshot_storm.py --smoke    # seconds; what CI runs
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import sys
import time
from pathlib import Path

import httpx
import msgpack
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median, percentile, scratch_database, server_process  # noqa: E402
from bench.http_sync_bench import settings_for  # noqa: E402
from server.app import build_services  # noqa: E402
from server.domain.demo import load_demo  # noqa: E402
from server.domain.tables import users  # noqa: E402
from server.migrations import upgrade  # noqa: E402

MSGPACK = {"Content-Type": "application/msgpack", "Accept": "application/msgpack"}
USERS = [f"pos{n}" for n in range(1, 5)] + [f"sales{n}" for n in range(1, 6)]
NO_CAP = 100_000


async def prepare(url: str, products: int) -> dict[str, str]:
    """The demo tenant, and a token for each of its nine device users."""
    services = build_services(settings_for(url))
    await upgrade(services.db)
    summary = await load_demo(services.db, services.registry, products=products, customers=500, days=2)
    async with services.db.read() as conn:
        ids = dict((await conn.execute(sa.select(users.c.username, users.c.id))).all())
    tokens = {name: services.tokens.issue(user_id=ids[name], tenant_id=summary.tenant_id,
                                          role="pos" if name.startswith("pos") else "salesperson")
              for name in USERS}
    await services.db.dispose()
    return tokens


class Storm:
    """What the devices saw."""

    def __init__(self) -> None:
        self.done: list[float] = []  # seconds from the storm's start to each device's more = false
        self.rows: dict[str, set[int]] = collections.defaultdict(set)  # user -> rows per device seen
        self.refused: collections.Counter[str] = collections.Counter()  # "503 UNAVAILABLE (cap)" ...
        self.failed: collections.Counter[str] = collections.Counter()  # what ended a device
        self.transport_errors: collections.Counter[str] = collections.Counter()  # retried
        self.requests = 0


def refusal(status: int, error: dict) -> str:
    cap = status == 503 and "snapshots are being served" in str(error.get("message"))
    return f"{status} {error.get('code')}" + (" (snapshot cap)" if cap else "")


async def device(http: httpx.AsyncClient, user: str, bearer: str, client_id: str, storm: Storm,
                 started: float) -> None:
    headers = {**MSGPACK, "Authorization": f"Bearer {bearer}"}
    cursor, rows = None, 0
    while True:
        body = msgpack.packb({"v": 1, "client_id": client_id, "cursor": cursor})
        storm.requests += 1
        try:
            response = await http.post("/sync/pull", content=body, headers=headers)
        except httpx.HTTPError as error:
            storm.transport_errors[type(error).__name__] += 1
            await asyncio.sleep(1 + random.random())
            continue
        decoded = msgpack.unpackb(response.content, raw=False) if response.content else {}
        if response.status_code == 200:
            cursor = decoded["cursor"]
            rows += sum(len(p["rows"]) + len(p["deletes"]) for p in decoded["data"].values())
            if not decoded["more"]:
                storm.done.append(time.perf_counter() - started)
                storm.rows[user].add(rows)
                return
            continue
        error = decoded.get("error", {}) if isinstance(decoded, dict) else {}
        retry_after = error.get("retry_after")
        if response.status_code in (429, 503) and retry_after:
            storm.refused[refusal(response.status_code, error)] += 1
            await asyncio.sleep(retry_after + random.uniform(0, retry_after))
            continue
        storm.failed[f"{response.status_code} {error.get('code')}"] += 1
        return


async def run_storm(base: str, tokens: dict[str, str], devices: int, run: str) -> tuple[Storm, float]:
    storm = Storm()
    limits = httpx.Limits(max_connections=devices, max_keepalive_connections=devices)
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(300), limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(device(http, USERS[n % len(USERS)], tokens[USERS[n % len(USERS)]], f"{run}-{n}",
                                      storm, started) for n in range(devices)))
        return storm, time.perf_counter() - started


def vm(pid: int, field: str) -> int:
    """A /proc/<pid>/status figure in KB (VmRSS now, VmHWM the peak since the start)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def report(label: str, storm: Storm, seconds: float, devices: int, idle_kb: int, peak_kb: int) -> None:
    refused = sum(storm.refused.values())
    unintended = {k: v for k, v in storm.refused.items() if k.startswith("503") and "cap" not in k}
    five = sum(v for k, v in storm.failed.items() if k.startswith("5")) + sum(unintended.values())
    uneven = sum(len(seen) - 1 for seen in storm.rows.values())
    print(f"\n{label}:")
    print(f"  devices done: {len(storm.done)} of {devices}; time to all done {seconds:.1f}s "
          f"(per device p50 {median(storm.done):.1f}s, p99 {percentile(storm.done, 99):.1f}s)"
          if storm.done else f"  devices done: 0 of {devices}")
    print(f"  requests {storm.requests}; refused and retried: {refused} "
          f"({', '.join(f'{k}: {v}' for k, v in sorted(storm.refused.items())) or 'none'}); "
          f"transport errors retried: {dict(storm.transport_errors) or 0}")
    print(f"  5xx other than the snapshot cap's 503: {five}; devices failed: "
          f"{sum(storm.failed.values())} ({dict(storm.failed) or 'none'}); users whose devices differ in rows: {uneven}")
    print(f"  server RSS: {idle_kb / 1024:.0f} MB before the storm, peak {peak_kb / 1024:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--devices", type=int, default=None)
    parser.add_argument("--products", type=int, default=None)
    parser.add_argument("--cap", type=int, default=8, help="FIELDSYNC_MAX_SNAPSHOTS of the capped run")
    args = parser.parse_args()
    devices = args.devices or (40 if args.smoke else 2_000)
    products = args.products or (100 if args.smoke else 2_000)
    cap = 2 if args.smoke and args.cap == 8 else args.cap
    with scratch_database() as url:
        tokens = asyncio.run(prepare(url, products))
        print(f"demo loaded: {products} products; {devices} fresh devices over {len(USERS)} users, "
              f"all at once, HTTP pull (limit 2000) to more = false")
        for label, limit in ((f"without a cap (FIELDSYNC_MAX_SNAPSHOTS={NO_CAP})", NO_CAP),
                             (f"with the cap (FIELDSYNC_MAX_SNAPSHOTS={cap})", cap)):
            env = {"FIELDSYNC_JOBS_THREADS": "0", "FIELDSYNC_RATE_LIMITS": "1", "FIELDSYNC_MAX_SNAPSHOTS": str(limit),
                   "FIELDSYNC_PULL_MAX_LIMIT": "10000"}
            with server_process(url, extra_env=env, with_pid=True) as (base, pid):
                idle = vm(pid, "VmRSS")
                storm, seconds = asyncio.run(run_storm(base, tokens, devices, f"storm-{limit}"))
                report(label, storm, seconds, devices, idle, vm(pid, "VmHWM"))


if __name__ == "__main__":
    main()
