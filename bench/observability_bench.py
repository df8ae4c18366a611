"""Issue 5 budget: what metrics and logging cost a pull.

Three identical `fieldsync serve` processes on one PostgreSQL database:

* ``on``        metrics and JSON access logs as shipped (stderr to a file, as under systemd);
* ``off``       ``FIELDSYNC_METRICS=0``: no request middleware (no access log line, no latency
                histogram, no request id), no database pool/slow-query instrumentation;
* ``on+mp``     as ``on`` with ``PROMETHEUS_MULTIPROC_DIR`` (samples in mmap files), unless
                ``--no-multiproc``.

The load alternates between them (ABBA order, several rounds) so drift hits all alike:

1. initial sync throughput: a POS device pulls its datasets to ``more = false`` (rows/s,
   median of the rounds);
2. p50 and server CPU of a small incremental pull (10 price changes) over keep-alive HTTP,
   in blocks of requests per server, the order rotating every round.

Server CPU time (``/proc/<pid>/stat``) is printed next to wall-clock figures: on a shared
machine it is the steadier measure of what a server spent. The direct cost of the request
middleware, log line and database listeners is also measured in-process, free of network noise.

The budget: ON may cost at most 5% of the throughput and 0.2 ms on the small pull's p50.
What ``off`` still does (the pull/push outcome counters and rows/bytes counters in the
handlers) is measured in-process at the end.

    .venv/bin/python bench/observability_bench.py            # 100k products, 5 rounds
    .venv/bin/python bench/observability_bench.py --smoke    # seconds
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgpack
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, SECRET, free_port, median, percentile, scratch_database  # noqa: E402
from bench.http_sync_bench import prepare, pull_all, settings_for  # noqa: E402
from server.app import build_services  # noqa: E402
from server.domain.tables import prices  # noqa: E402

MSGPACK = {"Content-Type": "application/msgpack", "Accept-Encoding": "identity"}


@contextlib.contextmanager
def server(url: str, name: str, logdir: Path, extra: dict[str, str]) -> Iterator[tuple[str, int]]:
    """`fieldsync serve` with its stderr (the JSON log) in a file, as a supervisor would keep it.
    (A pipe nobody reads would block the server once ~64 KB of log lines pile up.)"""
    port = free_port()
    log_path = logdir / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIELDSYNC_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({"FIELDSYNC_DATABASE_URL": url, "FIELDSYNC_JWT_SECRET": SECRET, "FIELDSYNC_PULL_MAX_LIMIT": "20000", "FIELDSYNC_MAX_DEVICES_PER_USER": "1000000", "FIELDSYNC_RATE_LIMITS": "0",
                "FIELDSYNC_DATA_DIR": str(logdir / name), "FIELDSYNC_JOBS_THREADS": "0", **extra})
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--port", str(port)], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} server did not start:\n{log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield base, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (robust to other load on the machine)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def initial_rate(base: str, token: str) -> tuple[float, int]:
    with httpx.Client(base_url=base, timeout=300) as http:
        started = time.perf_counter()
        rows, _, _, _ = pull_all(http, token, f"obs-{uuid.uuid4().hex[:8]}")
        return rows / (time.perf_counter() - started), rows


async def small_change(url: str, tenant: int) -> None:
    """10 price changes the POS device holds: its next pull carries about 10 rows."""
    from server.admin import apply
    from server.domain.backoffice import WRITABLE

    services = build_services(settings_for(url))
    async with services.db.read() as conn:
        ids = (await conn.execute(sa.select(prices.c.id).where(prices.c.tenant_id == tenant)
                                  .order_by(prices.c.id).limit(400))).scalars().all()
    await apply(services.db, services.registry, tenant, WRITABLE["prices"],
                      [{"id": i, "amount": 777} for i in ids[::40][:10]], [])
    await services.db.dispose()


def small_pulls(http: httpx.Client, token: str, cursor: bytes, count: int) -> list[float]:
    body = msgpack.packb({"v": 1, "client_id": "obs-inc", "cursor": cursor})
    headers = {**MSGPACK, "Authorization": f"Bearer {token}"}
    times = []
    for _ in range(count):
        started = time.perf_counter()
        response = http.post("/sync/pull", content=body, headers=headers)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.content[:200]
    return times


def residual_us(repeats: int = 200_000) -> float:
    """Microseconds per pull of the counters that stay with FIELDSYNC_METRICS=0 (in-process,
    single-process registry): the outcome counter and rows/bytes by dataset for a small batch."""
    from server import metrics
    from server.http import outcome
    from server.live import count_sent

    batch = {"reset": [], "data": {"prices": {"rows": [[1]] * 10, "deletes": []}}}
    started = time.perf_counter()
    for _ in range(repeats):
        with outcome(metrics.PULLS):
            pass
        count_sent(batch, 600, "pull")
    return (time.perf_counter() - started) / repeats * 1e6


def middleware_us(repeats: int = 30_000) -> float:
    """Microseconds the Observe middleware adds to one request, JSON log line to a file included
    (in-process, around a trivial app: the instrumentation alone, free of network noise)."""
    from server.observe import JsonFormatter, Observe

    class Route:
        path = "/sync/pull"

    async def app(scope, receive, send):
        scope["route"] = Route()
        scope["state"].update(client_id="till-1", rows=10, bytes=600)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x"})

    async def send(message):
        pass

    async def receive():
        return {"type": "http.request", "body": b""}

    def scope():
        return {"type": "http", "method": "POST", "path": "/sync/pull", "headers": [(b"x-request-id", b"r")],
                "state": {}}

    async def timed(target) -> float:
        started = time.perf_counter()
        for _ in range(repeats):
            await target(scope(), receive, send)
        return (time.perf_counter() - started) / repeats * 1e6

    root, saved, level = logging.getLogger(), logging.getLogger().handlers[:], logging.getLogger().level
    with tempfile.NamedTemporaryFile("w", suffix=".log") as sink:
        handler = logging.StreamHandler(sink)
        handler.setFormatter(JsonFormatter())
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)
        try:
            observed = Observe(app)
            costs = [asyncio.run(timed(observed)) - asyncio.run(timed(app)) for _ in range(3)]
        finally:
            root.handlers[:] = saved
            root.setLevel(level)
    return min(costs)


def db_listener_us(repeats: int = 20_000) -> tuple[float, float]:
    """(per statement, per connection checkout) microseconds of ``instrument_database``'s pool
    gauges, acquire histogram and slow-query timer, on an in-memory SQLite engine (the same
    listeners and dispatch as on PostgreSQL, without network noise)."""
    from types import SimpleNamespace

    from server.observe import instrument_database

    def engine(instrumented: bool):
        plain = sa.create_engine("sqlite://")
        shim = SimpleNamespace(engine=SimpleNamespace(sync_engine=plain), on_acquire=lambda seconds: None)
        if instrumented:
            instrument_database(shim)
        return plain, shim

    def per_statement(instrumented: bool) -> float:
        eng, _ = engine(instrumented)
        with eng.connect() as conn:
            query = sa.text("SELECT 1")
            started = time.perf_counter()
            for _ in range(repeats):
                conn.execute(query)
            return (time.perf_counter() - started) / repeats * 1e6

    def per_checkout(instrumented: bool) -> float:
        eng, shim = engine(instrumented)
        started = time.perf_counter()
        for _ in range(repeats):
            with eng.connect():
                shim.on_acquire(0.0001)  # Database._timed reports each acquire
        return (time.perf_counter() - started) / repeats * 1e6

    statement = min(per_statement(True) - per_statement(False) for _ in range(3))
    checkout = min(per_checkout(True) - per_checkout(False) for _ in range(3))
    return max(statement, 0.0), max(checkout, 0.0)


async def pull_shape(url: str, token: str, cursor: bytes) -> tuple[float, float]:
    """(statements, connection checkouts) of one small pull, counted in-process."""
    from sqlalchemy import event

    from server.app import create_app

    services = build_services(settings_for(url))
    counts = {"statements": 0, "checkouts": 0}
    event.listen(services.db.engine.sync_engine, "after_cursor_execute",
                 lambda *a: counts.__setitem__("statements", counts["statements"] + 1))
    event.listen(services.db.engine.sync_engine.pool, "checkout",
                 lambda *a: counts.__setitem__("checkouts", counts["checkouts"] + 1))
    app = create_app(services.settings, services=services)
    body = msgpack.packb({"v": 1, "client_id": "obs-inc", "cursor": cursor})
    headers = {**MSGPACK, "Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as http:
        await http.post("/sync/pull", content=body, headers=headers)
        counts.update(statements=0, checkouts=0)
        for _ in range(10):
            await http.post("/sync/pull", content=body, headers=headers)
    await services.db.dispose()
    return counts["statements"] / 10, counts["checkouts"] / 10


def main() -> None:  # noqa: PLR0914, PLR0915 - a script: one figure after another
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--products", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--pulls", type=int, default=None, help="small pulls per server per round")
    parser.add_argument("--no-multiproc", action="store_true")
    args = parser.parse_args()
    products = args.products or (2_000 if args.smoke else 100_000)
    rounds = args.rounds or (2 if args.smoke else 5)
    pulls = args.pulls or (100 if args.smoke else 300)
    logging.getLogger("fieldsync.sql").setLevel(logging.ERROR)  # the demo load's slow inserts: not the point here
    with scratch_database() as url, tempfile.TemporaryDirectory(prefix="obs-bench-") as tmp:
        tmpdir = Path(tmp)
        world = asyncio.run(prepare(url, products))
        pos = world["tokens"]["pos1"]
        configs = {"on": {}, "off": {"FIELDSYNC_METRICS": "0"}}
        if not args.no_multiproc:
            (tmpdir / "multiproc").mkdir()
            configs["on+mp"] = {"PROMETHEUS_MULTIPROC_DIR": str(tmpdir / "multiproc")}
        print(f"demo loaded: {products} products; servers: {', '.join(configs)}; {rounds} alternating rounds; "
              f"{os.cpu_count()} CPUs")
        with contextlib.ExitStack() as stack:
            running = {name: stack.enter_context(server(url, name, tmpdir, extra)) for name, extra in configs.items()}
            bases = {name: base for name, (base, _) in running.items()}
            pids = {name: pid for name, (_, pid) in running.items()}
            order = list(configs)

            def round_order(n: int) -> list[str]:  # ABBA...: each config first as often as last
                return order if n % 2 == 0 else order[::-1]

            # 1. initial sync throughput
            for name in order:  # warm-up: caches, connection pools, code paths
                initial_rate(bases[name], pos)
            rates: dict[str, list[float]] = {name: [] for name in order}
            cpu: dict[str, float] = {name: 0.0 for name in order}
            rows = 0
            for n in range(rounds):
                for name in round_order(n):
                    before = cpu_seconds(pids[name])
                    rate, rows = initial_rate(bases[name], pos)
                    cpu[name] += cpu_seconds(pids[name]) - before
                    rates[name].append(rate)
            print(f"\ninitial sync (pos1, {rows:,} rows), median of {rounds} runs each:")
            for name in order:
                spread = f"{min(rates[name]):,.0f}..{max(rates[name]):,.0f}"
                print(f"  {name:6s} {median(rates[name]):>10,.0f} rows/s   (runs {spread})")
            off_rate = median(rates["off"])
            for name in order:
                if name != "off":
                    ratio = median(rates[name]) / off_rate
                    print(f"  {name}/off = {ratio:.3f}  -> cost {100 * (1 - ratio):+.1f}% of throughput "
                          f"(budget 5%: {'ok' if 1 - ratio <= 0.05 else 'OVER'})")
            print("  server CPU per 100k rows sent: " + ", ".join(
                f"{name} {cpu[name] / (rows * rounds) * 1e5 * 1000:.0f} ms" for name in order)
                  + "  (" + ", ".join(f"{name}/off {cpu[name] / cpu['off']:.3f}" for name in order if name != "off")
                  + ")")

            # 2. a small incremental pull
            with httpx.Client(base_url=bases["off"], timeout=120) as http:
                _, _, cursor, _ = pull_all(http, pos, "obs-inc")
            asyncio.run(small_change(url, world["tenant"]))
            clients = {name: stack.enter_context(httpx.Client(base_url=bases[name], timeout=60)) for name in order}
            for name in order:
                small_pulls(clients[name], pos, cursor, 50)  # warm-up
            samples: dict[str, list[float]] = {name: [] for name in order}
            cpu_before = {name: cpu_seconds(pids[name]) for name in order}
            bodies = msgpack.packb({"v": 1, "client_id": "obs-inc", "cursor": cursor})
            headers = {**MSGPACK, "Authorization": f"Bearer {pos}"}
            # blocks of requests, the servers' order rotating every round so drift hits all alike
            # (one request to each server in turn measured worse: three servers and the client
            # on two CPUs keep evicting each other)
            for n in range(rounds * 2):
                for name in order[n % len(order):] + order[:n % len(order)]:
                    for _ in range(pulls):
                        started = time.perf_counter()
                        response = clients[name].post("/sync/pull", content=bodies, headers=headers)
                        samples[name].append((time.perf_counter() - started) * 1000)
                        assert response.status_code == 200
            small_cpu = {name: (cpu_seconds(pids[name]) - cpu_before[name]) / len(samples[name]) * 1e6
                         for name in order}
            changed = msgpack.unpackb(clients["off"].post(
                "/sync/pull", content=msgpack.packb({"v": 1, "client_id": "obs-inc", "cursor": cursor}),
                headers={**MSGPACK, "Authorization": f"Bearer {pos}"}).content)
            size = sum(len(p["rows"]) + len(p["deletes"]) for p in changed["data"].values())
            print(f"\nsmall pull ({size} rows), HTTP round trip (keep-alive), {rounds * 2} blocks x {pulls} requests "
                  f"per server, order rotating:")
            for name in order:
                print(f"  {name:6s} p50 {median(samples[name]):.3f} ms   p25 {percentile(samples[name], 25):.3f} ms   "
                      f"p90 {percentile(samples[name], 90):.3f} ms")
            off_p50 = median(samples["off"])
            for name in order:
                if name != "off":
                    delta = median(samples[name]) - off_p50
                    print(f"  {name} - off: p50 {delta:+.3f} ms (budget 0.2 ms: {'ok' if delta <= 0.2 else 'OVER'})")
            print("  server CPU per small pull: " + ", ".join(f"{name} {small_cpu[name]:.0f} us" for name in order)
                  + "  (" + ", ".join(f"{name} - off {small_cpu[name] - small_cpu['off']:+.0f} us"
                                      for name in order if name != "off") + ")")
            statements, checkouts = asyncio.run(pull_shape(url, pos, cursor))
            logged = sum(1 for _ in (tmpdir / "on.log").open())
            print(f"\nthe 'on' server wrote {logged:,} JSON log lines; 'off' wrote "
                  f"{sum(1 for _ in (tmpdir / 'off.log').open()):,}")
    middleware = middleware_us()
    statement, checkout = db_listener_us()
    per_pull = middleware + statements * statement + checkouts * checkout
    print(f"\ndirect cost of what FIELDSYNC_METRICS=0 removes, measured in-process (free of network noise):\n"
          f"  request middleware + JSON log line {middleware:.1f} us per request; database listeners "
          f"{statement:.1f} us per statement, {checkout:.1f} us per connection checkout\n"
          f"  a small pull runs {statements:.0f} statements on {checkouts:.0f} connection checkouts "
          f"-> {per_pull:.0f} us = {per_pull / 1000:.3f} ms per small pull "
          f"(budget 0.2 ms: {'ok' if per_pull <= 200 else 'OVER'}); "
          f"{100 * per_pull / 1000 / median(samples['off']):.2f}% of its round trip")
    print(f"  counters kept with FIELDSYNC_METRICS=0 (outcome + rows/bytes of a small pull): "
          f"{residual_us():.1f} us per pull")


if __name__ == "__main__":
    main()
