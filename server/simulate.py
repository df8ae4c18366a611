"""``fieldsync simulate``: salespeople and POS terminals against a running server.

    fieldsync simulate --devices 8 [--url http://127.0.0.1:8000] [--seconds 60] [--tenant demo]

Each simulated device is a :class:`fieldsync_client.SyncClient` with its own SQLite store
and outbox (in a temporary directory, so every run starts as freshly installed devices
with new ``client_id``\\ s). Devices go offline and online at random (and now and then lose
their connection without a goodbye), take orders, payments and visits (salespeople) or
ring up sales (terminals) from what their *local* store holds (their customers, the prices
valid now, the stock they see), also while offline, and push them when back. Every second
one summary line: devices by state and transport, how many are in sync (live with an empty
outbox), outbox sizes, mutations applied and rejected, lag (the age of each device's latest
consistent copy: 0 for a device live on the WebSocket) and the server's view of how far
behind the log head their acknowledged cursors are (``GET /admin/devices``).

Tokens are minted here with the server's own signing settings (``Settings.from_env()``, as
``fieldsync token`` does) for the demo users ``sales1..5`` and ``pos1..4``; run it from the
same directory and environment as the server (``scripts/run.sh``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from .config import Settings

USERS = ["sales1", "pos1", "sales2", "pos2", "sales3", "pos3", "sales4", "pos4", "sales5"]
MENU_DATASETS = {"customers", "prices", "catalog", "stock"}
PAYMENT_METHODS = ("cash", "card", "voucher")


def add_command(commands: Any) -> dict[str, Callable[[Settings, argparse.Namespace], int]]:
    sim = commands.add_parser("simulate", help="simulated salespeople and POS terminals against a running server")
    sim.add_argument("--devices", type=int, default=4, help="simulated devices, salespeople and terminals in turn")
    sim.add_argument("--url", default="http://127.0.0.1:8000", help="the running server")
    sim.add_argument("--seconds", type=float, default=None, help="stop after this long (default: run until Ctrl-C)")
    sim.add_argument("--tenant", default="demo", help="the tenant's slug (its users must exist here)")
    sim.add_argument("--rate", type=float, default=1.0, help="actions per device per second, on average")
    sim.add_argument("--seed", type=int, default=None, help="random seed, for a repeatable run")
    return {"simulate": cmd_simulate}


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    import httpx

    if args.devices < 1:
        print("--devices must be at least 1", file=sys.stderr)
        return 2
    users = asyncio.run(_users(settings, args.tenant))
    devices = [u for u in users if u["username"] in USERS]
    if not devices:
        print(f"no demo users in tenant {args.tenant!r} (run `fieldsync demo` first?)", file=sys.stderr)
        return 1
    try:
        httpx.get(f"{args.url.rstrip('/')}/healthz", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        print(f"cannot reach the server at {args.url}: {exc}", file=sys.stderr)
        return 1
    from .auth import TokenService

    tokens = TokenService(settings)
    issued = {u["username"]: tokens.issue(user_id=u["id"], tenant_id=u["tenant_id"], role=u["role"]) for u in users}
    devices.sort(key=lambda u: USERS.index(u["username"]))
    chosen = [(devices[n % len(devices)], n) for n in range(args.devices)]
    with tempfile.TemporaryDirectory(prefix="fieldsync-sim-") as workdir:
        sim = Simulation(args.url, [(u["username"], u["role"], issued[u["username"]], n) for u, n in chosen],
                         Path(workdir), admin_token=issued.get("admin"), rate=args.rate,
                         rng=random.Random(args.seed))
        return asyncio.run(sim.run(args.seconds))


async def _users(settings: Settings, tenant: str) -> list[dict[str, Any]]:
    from sync.storage import Database

    from .domain.tables import tenants, users

    db = Database(settings.database_url)
    try:
        async with db.read() as conn:
            query = sa.select(users.c.id, users.c.tenant_id, users.c.role, users.c.username).join(
                tenants, tenants.c.id == users.c.tenant_id
            ).where(tenants.c.slug == tenant, users.c.active.is_(True),
                    users.c.username.in_([*USERS, "admin"]))
            return [dict(row._mapping) for row in await conn.execute(query)]
    finally:
        await db.dispose()


class Device:
    """One phone or till: a sync client, its local store, and a user who takes orders."""

    def __init__(self, username: str, role: str, token: str, number: int, url: str, workdir: Path,
                 rng: random.Random, tally: Counter) -> None:
        from fieldsync_client import Backoff, SqliteOutbox, SqliteStore, SyncClient

        self.name, self.role, self.rng, self.tally = f"{username}#{number}", role, rng, tally
        self.client_id = f"sim-{username}-{number}-{uuid.uuid4().hex[:8]}"
        self.store = SqliteStore(workdir / f"device-{number}.db")
        self.outbox = SqliteOutbox(self.store.conn, synchronous="NORMAL")
        self.client = SyncClient(url, token, self.client_id, self.store, self.outbox,
                                 backoff=Backoff(base=0.3, cap=5.0, rng=rng), poll_interval=2.0, ws_retry_interval=10.0)
        self.client.on_changes(self._changed)
        self.client.on_results(self._results)
        self._menu: dict[str, Any] | None = None
        self._menu_dirty, self._menu_at = True, 0.0

    def _changed(self, batch: dict[str, Any]) -> None:
        if MENU_DATASETS & (set(batch.get("reset") or ()) | set(batch.get("data") or ())):
            self._menu_dirty = True

    def _results(self, entries: list[Any]) -> None:
        for entry in entries:
            self.tally[(entry.name, entry.status)] += 1
            if entry.code:
                self.tally[("code", entry.code)] += 1

    # -- what the user sees: the local copy --------------------------------------------------

    def menu(self) -> dict[str, Any] | None:
        """Customers and sellable products (price valid now, active, in stock) from the store."""
        now = time.time() * 1000
        if self._menu is not None and (not self._menu_dirty or now - self._menu_at < 5000):
            return self._menu
        customers = list(self.store.rows("customers").values())
        catalog = set(self.store.keys_of("catalog"))
        available = {s["product_id"]: s["on_hand"] - s["reserved"] for s in self.store.rows("stock").values()}
        priced: dict[int, dict[int, int]] = {}
        for p in self.store.rows("prices").values():
            if p["valid_from"] <= now and (p["valid_to"] is None or now < p["valid_to"]) and p["product_id"] in catalog:
                priced.setdefault(p["pricelist_id"], {})[p["product_id"]] = p["amount"]
        if not priced or (self.role == "salesperson" and not customers):
            return None
        self._menu, self._menu_dirty, self._menu_at = {"customers": customers, "priced": priced,
                                                       "available": available}, False, now
        return self._menu

    def act(self) -> None:
        menu = self.menu()
        if menu is None:
            return
        rng = self.rng
        if self.role == "pos":
            prices = next(iter(menu["priced"].values()))
            lines = [{"product_id": p, "qty": rng.randint(1, 3), "price": prices[p]}
                     for p in rng.sample(sorted(prices), min(len(prices), rng.randint(1, 4)))]
            self.client.enqueue("sale.complete", {"id": str(uuid.uuid4()), "lines": lines,
                                                  "payment_method": rng.choice(PAYMENT_METHODS)})
            return
        customer = rng.choice(menu["customers"])
        roll = rng.random()
        if roll < 0.1:
            self.client.enqueue("payment.record", {"id": str(uuid.uuid4()), "customer_id": customer["id"],
                                                   "amount": rng.randint(10, 500) * 100,
                                                   "currency": customer["currency"], "method": "transfer"})
        elif roll < 0.2:
            self.client.enqueue("visit.checkin", {"id": str(uuid.uuid4()), "customer_id": customer["id"],
                                                  "lat": 52 + rng.random(), "lon": 4 + rng.random()})
        else:
            prices = menu["priced"].get(customer["pricelist_id"], {})
            in_stock = [p for p in sorted(prices) if menu["available"].get(p, 0) >= 5] or sorted(prices)
            if not in_stock:
                return
            greedy = rng.random() < 0.05  # now and then more than the branch holds: INSUFFICIENT_STOCK
            lines = [{"product_id": p, "qty": 100_000 if greedy else rng.randint(1, 4)}
                     for p in rng.sample(in_stock, min(len(in_stock), rng.randint(1, 3)))]
            self.client.enqueue("order.create", {"id": str(uuid.uuid4()), "customer_id": customer["id"],
                                                 "lines": lines})

    # -- the device's day ---------------------------------------------------------------------

    async def wander(self) -> None:
        """Online for a few seconds, then offline (or a dropped connection), and again."""
        rng = self.rng
        if rng.random() < 0.25:
            self.client.set_online(False)
        while True:
            await asyncio.sleep(rng.uniform(2.0, 8.0) if self.client.online else rng.uniform(1.0, 4.0))
            if self.client.online and rng.random() < 0.2:
                self.client.drop()  # a blip: reconnects after back-off
            else:
                self.client.set_online(not self.client.online)

    async def work(self, rate: float) -> None:
        while True:
            await asyncio.sleep(self.rng.expovariate(rate))
            self.act()


class Simulation:
    def __init__(self, url: str, devices: list[tuple[str, str, str, int]], workdir: Path, *,
                 admin_token: str | None, rate: float, rng: random.Random) -> None:
        self.url, self.admin_token, self.rate = url.rstrip("/"), admin_token, rate
        self.tally: Counter = Counter()
        self.devices = [Device(name, role, token, n, self.url, workdir, random.Random(rng.random()), self.tally)
                        for name, role, token, n in devices]
        self.started = time.monotonic()
        self.head_gap: int | None = None

    async def run(self, seconds: float | None) -> int:
        import httpx

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        if seconds is not None:
            loop.call_later(seconds, stop.set)
        print(f"simulating {len(self.devices)} devices against {self.url}: "
              + ", ".join(d.name for d in self.devices), flush=True)
        for device in self.devices:
            device.client.start()
        tasks = [loop.create_task(d.wander()) for d in self.devices] + [
            loop.create_task(d.work(self.rate)) for d in self.devices]
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as http:
            while not stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                await self._server_view(http)
                print(self.summary(), flush=True)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            print("stopping: every device back online, pushing what is left ...", flush=True)
            for device in self.devices:
                device.client.set_online(True)
            await asyncio.gather(*(d.client.wait_synced(timeout=20) for d in self.devices), return_exceptions=True)
            await self._server_view(http)
            print(self.summary(), flush=True)
        synced = sum(d.client.status.in_sync for d in self.devices)
        for device in self.devices:
            await device.client.close()
            device.outbox.close()
            device.store.close()
        print(self.totals(synced), flush=True)
        return 0

    async def _server_view(self, http: Any) -> None:
        """Head distance of our devices' acknowledged cursors, as the server sees it."""
        if self.admin_token is None:
            return
        try:
            response = await http.get("/admin/devices", headers={"Authorization": f"Bearer {self.admin_token}"})
            mine = {d.client_id for d in self.devices}
            gaps = [d["behind_positions"] for d in response.json()["devices"]
                    if d["client_id"] in mine and d["behind_positions"] is not None]
            self.head_gap = max(gaps) if gaps else None
        except Exception:  # noqa: BLE001 - the summary goes on without the server's view
            self.head_gap = None

    def summary(self) -> str:
        from fieldsync_client import State

        now = time.time()
        statuses = [d.client.status for d in self.devices]
        states = Counter(s.state for s in statuses)
        links = Counter(s.transport for s in statuses if s.state is State.LIVE)
        pending = [s.pending for s in statuses]
        lags = [0.0 if s.state is State.LIVE and s.transport == "ws"
                else now - (s.checkpoint_at or now - (time.monotonic() - self.started)) for s in statuses]
        applied = sum(n for (kind, status), n in self.tally.items() if status == "applied")
        rejected = sum(n for (kind, status), n in self.tally.items() if status == "rejected")
        gap = "n/a" if self.head_gap is None else str(self.head_gap)
        return (f"[{time.monotonic() - self.started:5.1f}s] devices {len(statuses)}: "
                f"live {states[State.LIVE]} (ws {links['ws']}, http {links['http']}), "
                f"catching up {states[State.CATCHING_UP] + states[State.CONNECTING]}, offline {states[State.OFFLINE]}"
                f"{f', closed {states[State.CLOSED]}' if states[State.CLOSED] else ''} | "
                f"in sync {sum(s.in_sync for s in statuses)}/{len(statuses)} | "
                f"outbox {sum(pending)} pending (max {max(pending)}) | applied {applied}, rejected {rejected} | "
                f"lag max {max(lags):.1f}s | head gap max {gap}")

    def totals(self, synced: int) -> str:
        kinds = sorted({kind for kind, _ in self.tally if kind != "code"})
        done = ", ".join(f"{k} {self.tally[(k, 'applied')]} applied/{self.tally[(k, 'rejected')]} rejected"
                         for k in kinds) or "no mutations answered"
        codes = ", ".join(f"{code} {n}" for (kind, code), n in sorted(self.tally.items()) if kind == "code")
        return f"done: {synced}/{len(self.devices)} devices in sync; {done}" + (f"; rejections: {codes}" if codes else "")
