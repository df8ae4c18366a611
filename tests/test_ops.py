"""Operations: ``/healthz`` and ``/readyz`` of real server processes whose database or Redis
goes away (and comes back), device sync health (``GET /admin/devices``, ``fieldsync
devices``), and the alert rules and dashboard files in ``docs/ops``.

``promtool`` (Debian's ``prometheus`` package) checks and unit-tests the rules when it is on
PATH; either way the files are parsed and every metric they name must exist in
``server/metrics.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.utils import floatToGoString

from server import metrics
from server.device_health import device_health, format_age, parse_duration
from sync.errors import BadRequest
from sync.storage import change_log, log_head

from .support import World, seed, token
from .test_metrics import Proc, free_port, pull, scrape, total, wait_for, ws_session

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "docs" / "ops" / "alerts.yml"
DASHBOARD = ROOT / "docs" / "ops" / "grafana-dashboard.json"
QUIET = {"FIELDSYNC_JOBS_THREADS": "0"}  # no periodic jobs committing behind the test's back


@pytest.fixture
def processes():
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop()


async def launch(processes: list[Proc], proc: Proc) -> Proc:
    processes.append(proc)
    return await asyncio.to_thread(proc.start)


async def ready(base: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.get(f"{base}/readyz")


async def eventually(check, timeout: float = 15, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


# -- /healthz and /readyz ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_readyz_ok(services, processes, tmp_path):
    server = await launch(processes, Proc(services.settings, tmp_path / "p", **QUIET))
    response = await ready(server.base)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}  # no Redis configured: not checked
    assert httpx.get(f"{server.base}/healthz").json() == {"status": "ok"}


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_readyz_503_when_the_database_is_unreachable(services, processes, tmp_path):
    """A process pointed at a PostgreSQL port nobody listens on: up (healthz) but not ready.
    (``fieldsync serve`` itself refuses to start without its database, so this one is the
    same application run by uvicorn directly, as a process whose database vanished.)"""
    server = Proc(services.settings, tmp_path / "p", FIELDSYNC_DATABASE_URL="postgresql://postgres@127.0.0.1:1/x",
                  **QUIET)
    server.argv = ["-m", "uvicorn", "--factory", "server.app:create_app", "--port", str(server.port),
                   "--log-level", "warning"]
    await launch(processes, server)
    assert httpx.get(f"{server.base}/healthz").status_code == 200
    response = await ready(server.base)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["database"] != "ok" and "redis" not in body
    assert "StorageError" in body["database"] or "refused" in body["database"].lower(), body


class TcpProxy:
    """A TCP forwarder the test can cut and restore: the database "goes away" and "comes back"
    for the server without touching the shared PostgreSQL."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_readyz_follows_the_database_away_and_back(services, processes, tmp_path):
    url = sa.engine.make_url(services.settings.database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    try:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        server = await launch(processes, Proc(services.settings, tmp_path / "p", FIELDSYNC_DATABASE_URL=proxied,
                                              **QUIET))
        assert (await ready(server.base)).status_code == 200

        await proxy.stop()  # the database is unreachable
        response = await eventually(lambda: _status(server.base, 503), what="/readyz 503")
        assert response.json()["status"] == "unavailable" and response.json()["database"] != "ok"
        assert httpx.get(f"{server.base}/healthz").status_code == 200

        await proxy.start()  # and back
        response = await eventually(lambda: _status(server.base, 200), what="/readyz 200 again")
        assert response.json() == {"status": "ok", "database": "ok"}
    finally:
        await proxy.stop()


async def _status(base: str, code: int) -> httpx.Response | None:
    response = await ready(base)
    return response if response.status_code == code else None


class RedisProcess:
    """A private ``redis-server`` on a fixed port that the test starts and kills."""

    def __init__(self, workdir: Path) -> None:
        self.port, self.workdir, self.proc = free_port(), workdir, None
        self.workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_readyz_names_redis_and_fallback_gauge(services, processes, tmp_path):
    """Redis configured on a port nobody listens on: 503 naming redis, the database fine, the
    fan-out in fallback (the gauge the FieldsyncFanoutFallback alert watches). Then Redis
    starts on that port: ready again, gauge back to 0; killed: 503 again."""
    redis = RedisProcess(tmp_path / "redis")
    server = await launch(processes, Proc(services.settings, tmp_path / "p", FIELDSYNC_REDIS_URL=redis.url,
                                          FIELDSYNC_REDIS_PREFIX=f"fs-ops-{redis.port}", **QUIET))
    try:
        response = await ready(server.base)
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "unavailable" and body["database"] == "ok" and body["redis"] != "ok"
        assert "connect" in body["redis"].lower() or "refused" in body["redis"].lower(), body
        assert total(scrape(server.base), "fieldsync_fanout_fallback") == 1
        assert httpx.get(f"{server.base}/healthz").status_code == 200

        redis.start()
        response = await eventually(lambda: _status(server.base, 200), what="/readyz 200 with Redis up")
        assert response.json() == {"status": "ok", "database": "ok", "redis": "ok"}
        wait_for(lambda: total(scrape(server.base), "fieldsync_fanout_fallback") == 0, timeout=15,
                 what="the fallback gauge to return to 0")

        redis.kill()
        response = await eventually(lambda: _status(server.base, 503), what="/readyz 503 with Redis killed")
        assert response.json()["redis"] != "ok"
    finally:
        redis.kill()


# -- device sync health --------------------------------------------------------------------------


@pytest.fixture
async def world(services) -> World:
    return await seed(services)


async def head_of(services, tenant_id: int) -> int:
    async with services.db.read() as conn:
        return await conn.scalar(sa.select(log_head.c.seq).where(log_head.c.tenant_id == tenant_id))


@pytest.mark.slow
async def test_device_health_endpoint_and_cli(services, world, processes, tmp_path):
    """Four devices: one only pulls over HTTP (lag unknown), one is revoked, one acked long
    ago (2 h behind), one acked the head (caught up). The endpoint and the CLI sort them by
    lag, filter with ``behind``, and need the admin role."""
    w = world
    server = await launch(processes, Proc(services.settings, tmp_path / "p", **QUIET))
    pos, sales, sales2, admin = (token(services, w.pos1, "pos"), token(services, w.sales1, "salesperson"),
                                 token(services, w.sales2, "salesperson"), token(services, w.admin, "admin"))
    auth = {"Authorization": f"Bearer {admin}"}
    async with httpx.AsyncClient(base_url=server.base, timeout=30) as http:
        assert (await asyncio.to_thread(pull, server.base, pos, "till-http")).status_code == 200
        assert (await asyncio.to_thread(pull, server.base, sales2, "lost-phone")).status_code == 200
        assert (await http.post("/admin/devices/lost-phone/revoke", headers=auth)).status_code == 200

        old = await ws_session(server.base, pos, "till-old")
        acked_old = services.reader.cursors.decode(old["cursor"]).seq
        assert acked_old == await head_of(services, w.tenant_id)
        reply = await http.post("/admin/products", json={"upsert": [{"id": 3, "name": "Renamed"}]}, headers=auth)
        assert reply.status_code == 200
        async with services.db.write() as conn:  # those commits happened two hours ago
            await conn.execute(sa.update(change_log).where(
                change_log.c.tenant_id == w.tenant_id, change_log.c.seq > acked_old,
            ).values(at=change_log.c.at - 7_200_000))
        fresh = await ws_session(server.base, sales, "phone-ws")
        acked_fresh = services.reader.cursors.decode(fresh["cursor"]).seq
        head = await head_of(services, w.tenant_id)
        assert acked_fresh == head > acked_old

        listing = (await http.get("/admin/devices", headers=auth)).json()
        assert listing["tenant_id"] == w.tenant_id and listing["head"] == head and listing["behind"] is None
        by_id = {d["client_id"]: d for d in listing["devices"]}
        assert [d["client_id"] for d in listing["devices"]][:2] == ["till-old", "phone-ws"]
        assert set(by_id) == {"till-old", "phone-ws", "till-http", "lost-phone"}
        lagging = by_id["till-old"]
        assert lagging["user"] == "pos1" and lagging["role"] == "pos" and lagging["user_id"] == w.pos1
        assert lagging["acked_seq"] == acked_old and lagging["behind_positions"] == head - acked_old
        assert 7_200 <= lagging["behind_seconds"] < 7_300
        assert lagging["revoked"] is False and lagging["last_error"] is None
        caught_up = by_id["phone-ws"]
        assert caught_up["acked_seq"] == head and caught_up["behind_positions"] == 0
        assert caught_up["behind_seconds"] == 0 and caught_up["user"] == "sales1"
        http_only = by_id["till-http"]
        assert http_only["acked_seq"] is None
        assert http_only["behind_positions"] is None and http_only["behind_seconds"] is None
        assert http_only["last_seen"] > 0
        assert by_id["lost-phone"]["revoked"] is True and by_id["lost-phone"]["revoked_at"] is not None

        behind = (await http.get("/admin/devices", params={"behind": "1h"}, headers=auth)).json()
        assert behind["behind"] == 3600 and [d["client_id"] for d in behind["devices"]] == ["till-old"]
        assert (await http.get("/admin/devices?behind=3h", headers=auth)).json()["devices"] == []
        assert len((await http.get("/admin/devices?behind=30m", headers=auth)).json()["devices"]) == 1
        assert len((await http.get("/admin/devices?behind=0s", headers=auth)).json()["devices"]) == 2

        refused = await http.get("/admin/devices", headers={"Authorization": f"Bearer {pos}"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "FORBIDDEN"
        assert (await http.get("/admin/devices")).status_code == 401
        bad = await http.get("/admin/devices?behind=soon", headers=auth)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "BAD_REQUEST"

    # the same on the command line, as a table
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "server.cli", "devices", "--tenant", "acme", *args],
                              cwd=ROOT, env=server.env, capture_output=True, text=True, timeout=60)

    table = await asyncio.to_thread(cli)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.rstrip("\n").splitlines()
    header, rows, legend = lines[0], lines[1:-1], lines[-1]
    assert header.split() == ["CLIENT", "USER", "ROLE", "LAST", "SEEN", "ACKED", "BEHIND", "LAG", "APP", "ERROR",
                              "REVOKED"]
    assert [row.split()[0] for row in rows][:2] == ["till-old", "phone-ws"] and len(rows) == 4
    cells = {row.split()[0]: re.split(r"\s{2,}", row) for row in rows}
    assert cells["till-old"][1:3] == ["pos1", "pos"] and cells["till-old"][6] == "2h00m"
    assert cells["till-old"][4:6] == [str(acked_old), str(head - acked_old)]
    assert cells["phone-ws"][6] == "0s"
    assert cells["till-http"][4:7] == ["-", "?", "?"]
    assert cells["lost-phone"][-1] == "yes"
    lag_column = header.index("LAG")
    assert all(len(row) > lag_column for row in rows)  # aligned: every row reaches the LAG column
    assert "4 device(s)" in legend and "HTTP-only" in legend

    only = await asyncio.to_thread(cli, "--behind", "1h")
    assert [row.split()[0] for row in only.stdout.splitlines()[1:-1]] == ["till-old"]
    as_json = json.loads((await asyncio.to_thread(cli, "--json")).stdout)
    assert [d["client_id"] for d in as_json["devices"]] == [d["client_id"] for d in listing["devices"]]
    wrong = await asyncio.to_thread(cli, "--behind", "later")
    assert wrong.returncode == 2 and "duration" in wrong.stderr


async def test_device_health_in_process(services, world):
    """No devices: an empty list; time moves on: the lag grows with it; unknown tenants are empty."""
    from server.domain.principals import principal_for
    from sync import devices

    w = world
    assert await device_health(services.db, w.tenant_id) == (await head_of(services, w.tenant_id), [])
    principal = await principal_for(services.db, services.tokens.verify(token(services, w.pos1, "pos")))
    await devices.touch(services.db, principal, "till")
    await devices.acknowledge(services.db, principal, "till", 0)
    async with services.db.read() as conn:
        first_after = await conn.scalar(sa.select(change_log.c.at).where(
            change_log.c.tenant_id == w.tenant_id, change_log.c.seq > 0).order_by(change_log.c.seq).limit(1))
    head, found = await device_health(services.db, w.tenant_id, now=first_after + 90_000)
    assert head >= 1
    assert [d.behind_seconds for d in found] == [90.0] and found[0].behind_positions == head
    assert (await device_health(services.db, w.tenant_id, behind=91, now=first_after + 90_000))[1] == []
    assert (await device_health(services.db, 999))[1] == []


def test_durations_and_ages():
    assert [parse_duration(t) for t in ("90", "45s", "30m", "1h", "2d", "1w", "1.5h")] == [
        90, 45, 1800, 3600, 172_800, 604_800, 5400]
    for bad in ("", "h", "1y", "-1h", "1 hour"):
        with pytest.raises(BadRequest):
            parse_duration(bad)
    assert [format_age(s) for s in (None, 0, 59.9, 61, 3600, 3 * 3600 + 300, 2 * 86_400 + 4 * 3600)] == [
        "?", "0s", "59s", "1m01s", "1h00m", "3h05m", "2d04h"]


# -- alert rules and dashboard files ------------------------------------------------------------------

#: names an expression may use that fieldsync does not export (Prometheus and the blackbox exporter)
EXTERNAL = {"up", "probe_success"}
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "by", "without", "rate", "irate", "increase", "histogram_quantile",
    "vector", "or", "and", "unless", "on", "ignoring", "group_left", "group_right", "le", "job", "instance",
    "code", "status", "route", "method", "state", "task", "dataset", "framing", "name", "bool", "offset",
    "label_values", "humanize", "humanizePercentage", "humanizeDuration", "value", "labels",
}


def defined() -> list[MetricWrapperBase]:
    """The metric objects of server/metrics.py."""
    return [value for value in vars(metrics).values() if isinstance(value, MetricWrapperBase)]


def exported() -> dict[str, set[str]]:
    """Every sample name fieldsync exports (``_total``, ``_bucket``...) mapped to its labels."""
    names: dict[str, set[str]] = {}
    for value in defined():
        kind = value._type
        base, labels = value._name, set(value._labelnames)
        suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}[kind]
        for suffix in suffixes:
            names[base + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


def metric_names(expr: str) -> set[str]:
    """Identifiers of an expression that are metric names (not functions, keywords, labels)."""
    stripped = re.sub(r'"[^"]*"', '""', expr)  # label values
    stripped = re.sub(r"\{[^}]*\}", "{}", stripped)  # label matchers
    stripped = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", stripped)  # grouping labels
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)  # ranges
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", stripped))
    return {w for w in words if w not in PROMQL_WORDS and not re.fullmatch(r"\d+[smhdwy]", w)}


def check_expr(expr: str, where: str) -> None:
    known = exported()
    names = metric_names(expr)
    assert names, f"{where}: no metric in {expr!r}"
    for name in names:
        assert name in known or name in EXTERNAL, f"{where}: {name} is not a metric of server/metrics.py"
    for name, matchers in re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\{([^}]*)\}", expr):
        for label in re.findall(r"([A-Za-z_]+)\s*(?:=~|!=|!~|=)", matchers):
            if name in known:
                assert label in known[name] | {"job", "instance"}, f"{where}: {name} has no label {label}"
    for name, bound in re.findall(r'(\w+_bucket)\{[^}]*le="([^"]+)"', expr):
        histogram = next(v for v in defined() if v._type == "histogram" and v._name + "_bucket" == name)
        assert bound in {floatToGoString(b) for b in histogram._upper_bounds}, f"{where}: no bucket le={bound}"


def alert_rules() -> list[dict]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_alert_rules_parse_and_name_real_metrics():
    rules = alert_rules()
    names = {rule["alert"] for rule in rules}
    assert {"FieldsyncCommitToDeviceLagHigh", "FieldsyncSyncServerErrors", "FieldsyncSyncErrorRateHigh",
            "FieldsyncFanoutFallback", "FieldsyncJobsGivenUp", "FieldsyncDevicesBehind",
            "FieldsyncNotReady"} <= names
    for rule in rules:
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and "docs/operations.md" in rule["annotations"]["description"]
        check_expr(rule["expr"], rule["alert"])
    exprs = " ".join(rule["expr"] for rule in rules)
    assert "fieldsync_jobs_given_up_total" in exprs and "fieldsync_device_lag_positions_bucket" in exprs
    operations = (ROOT / "docs" / "operations.md").read_text()
    for name in names:
        assert name in operations, f"docs/operations.md does not explain {name}"


def test_dashboard_parses_and_names_real_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    exprs = []
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            check_expr(target["expr"], panel["title"])
            exprs.append(target["expr"])
    text = " ".join(exprs)
    for needed in ("fieldsync_commit_to_device_seconds_bucket", "fieldsync_device_lag_positions_bucket",
                   "fieldsync_ws_sessions", "fieldsync_rows_sent_total", "fieldsync_bytes_sent_total",
                   "fieldsync_pulls_total", "fieldsync_pushes_total", "fieldsync_mutations_total",
                   "fieldsync_fanout_fallback", "fieldsync_jobs_failed_total", "fieldsync_db_pool_in_use",
                   "fieldsync_db_acquire_seconds_bucket"):
        assert needed in text, f"no panel shows {needed}"
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate(fieldsync_commit_to_device_seconds_bucket" in text


def test_every_metric_is_documented_and_on_the_dashboard_or_alerts():
    operations = (ROOT / "docs" / "operations.md").read_text()
    shown = DASHBOARD.read_text() + ALERTS.read_text()
    assert len(defined()) >= 25
    for value in defined():
        exposed = value._name + ("_total" if value._type == "counter" else "")
        assert f"`{exposed}`" in operations, f"docs/operations.md does not describe {exposed}"
        assert value._name in shown, f"neither the dashboard nor the alerts use {exposed}"


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not on PATH (apt-get install prometheus)")
def test_promtool_checks_the_rules_and_the_dashboard_queries(tmp_path):
    checked = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # every dashboard query must be valid PromQL: check them as recording rules
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    rules = [{"record": f"fieldsync:dashboard_{i}", "expr": e.replace("$__rate_interval", "5m").replace("$job", ".*")}
             for i, e in enumerate(exprs)]
    queries = tmp_path / "dashboard-queries.yml"
    queries.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run([PROMTOOL, "check", "rules", str(queries)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _alert(name: str, at: str, labels: dict[str, str] | None = None) -> dict:
    rule = next(r for r in alert_rules() if r["alert"] == name)
    return {"eval_time": at, "alertname": name,
            "exp_alerts": [{"exp_labels": {"severity": rule["labels"]["severity"], **(labels or {})}}]}


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not on PATH (apt-get install prometheus)")
def test_promtool_unit_tests_the_alerts_fire(tmp_path):
    """Synthetic series through ``promtool test rules``: each alert fires when it should and
    stays quiet when it should not (annotations are not compared)."""
    job = 'job="fieldsync",instance="web1:8000"'
    lag = {"1.0": "0+0x60", "2.5": "0+1x60", "5.0": "0+20x60", "+Inf": "0+20x60"}  # p95 ≈ 4.9 s
    series = [
        {"series": f'fieldsync_commit_to_device_seconds_bucket{{{job},le="{le}"}}', "values": v}
        for le, v in lag.items()
    ] + [
        {"series": f'fieldsync_device_lag_positions_bucket{{{job},le="1000.0"}}', "values": "0+5x60"},
        {"series": f'fieldsync_device_lag_positions_count{{{job}}}', "values": "0+10x60"},
        {"series": f'fieldsync_fanout_fallback{{{job}}}', "values": "0 0 1x58"},
        {"series": f'fieldsync_jobs_given_up_total{{{job},task="invoice_render"}}', "values": "0x10 1x50"},
        {"series": f'fieldsync_pulls_total{{{job},code="ok"}}', "values": "0+100x60"},
        {"series": f'fieldsync_pulls_total{{{job},code="UNAVAILABLE"}}', "values": "0+10x60"},
        {"series": f'probe_success{{job="fieldsync-readyz",instance="web1:8000"}}', "values": "1 1 0x58"},
    ]
    # promtool compares annotations too; they hold rendered values, so test a copy without them
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    bare = tmp_path / "alerts-bare.yml"
    bare.write_text(yaml.safe_dump(rules, sort_keys=False))
    tests = {"rule_files": [str(bare)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "alert_rule_test": [
            _alert("FieldsyncCommitToDeviceLagHigh", "15m"),
            {"eval_time": "15m", "alertname": "FieldsyncCommitToDeviceLagCritical", "exp_alerts": []},
            {"eval_time": "20m", "alertname": "FieldsyncDevicesBehind", "exp_alerts": []},  # not yet for 30m
            _alert("FieldsyncDevicesBehind", "50m"),
            {"eval_time": "1m", "alertname": "FieldsyncFanoutFallback", "exp_alerts": []},
            _alert("FieldsyncFanoutFallback", "5m"),
            _alert("FieldsyncJobsGivenUp", "12m", {"task": "invoice_render"}),
            {"eval_time": "40m", "alertname": "FieldsyncJobsGivenUp", "exp_alerts": []},  # only a fresh give-up
            # pushes never happened: the `or vector(0)` keeps the ratio defined (10/110 > 1%)
            _alert("FieldsyncSyncServerErrors", "15m"),
            {"eval_time": "15m", "alertname": "FieldsyncSyncErrorRateHigh", "exp_alerts": []},  # 9% < 10%
            _alert("FieldsyncNotReady", "6m", {"job": "fieldsync-readyz", "instance": "web1:8000"}),
        ]}]}
    spec = tmp_path / "alerts_test.yml"
    spec.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run([PROMTOOL, "test", "rules", str(spec)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
