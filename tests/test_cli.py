"""The ``fieldsync`` console command against a throw-away SQLite database.

Run both in-process (``server.cli.main``) and as the installed console script, with
``FIELDSYNC_DATA_DIR`` / ``FIELDSYNC_DATABASE_URL`` pointed at a tmp dir.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from fieldsync_client import HttpSync
from server import cli
from server.app import build_services, create_app
from server.auth import TokenService
from server.config import Settings

from .support import seed

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("fieldsync")
PRODUCT_COLS = ["id", "sku", "name", "category", "unit", "barcode", "active"]


# -- fixtures and helpers ------------------------------------------------------------


@pytest.fixture
def env(tmp_path, monkeypatch) -> dict[str, str]:
    """The process environment of a fresh embedded install in tmp_path."""
    data = tmp_path / "data"
    values = {"FIELDSYNC_DATA_DIR": str(data), "FIELDSYNC_DATABASE_URL": f"sqlite:///{data / 'fieldsync.db'}"}
    for name in list(os.environ):
        if name.startswith("FIELDSYNC_"):
            monkeypatch.delenv(name)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return {**os.environ, **values}


def db_path(env: dict[str, str]) -> Path:
    return Path(env["FIELDSYNC_DATA_DIR"]) / "fieldsync.db"


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """The installed console script, as an operator would run it."""
    return subprocess.run([str(SCRIPT), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def main(capsys, *args: str) -> tuple[int, str, str]:
    """The entry point in-process: exit status (SystemExit included), stdout, stderr."""
    try:
        code = cli.main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    out, err = capsys.readouterr()
    return code, out, err


def query(env: dict[str, str], sql: str, *params: Any) -> list[tuple]:
    with sqlite3.connect(db_path(env)) as conn:
        return conn.execute(sql, params).fetchall()


def dump(env: dict[str, str]) -> dict[str, list]:
    with sqlite3.connect(db_path(env)) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {n: sorted(conn.execute(f'SELECT * FROM "{n}"').fetchall(), key=repr) for n in names}


def head(env: dict[str, str], tenant_id: int = 1) -> int:
    rows = query(env, "SELECT seq FROM log_head WHERE tenant_id = ?", tenant_id)
    return rows[0][0] if rows else 0


def write_csv(path: Path, cols: list[str], rows: list[list[Any]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(cols)
        writer.writerows(rows)
    return path


def seeded(env: dict[str, str], capsys) -> None:
    """Migrate with the CLI, then load the tests' small exact world into the same database."""
    code, out, _ = main(capsys, "migrate")
    assert code == 0, out

    async def work() -> None:
        services = build_services(Settings.from_env())
        try:
            await seed(services)
        finally:
            await services.db.dispose()

    asyncio.run(work())


async def _device_pull(settings: Settings, token: str, replica_cursor: bytes | None = None) -> HttpSync:
    services = build_services(settings)
    try:
        app = create_app(settings, services=services)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fieldsync") as http:
            device = HttpSync(http, token, "cli-test-device")
            device.replica.cursor = replica_cursor
            await device.sync()
            return device
    finally:
        await services.db.dispose()


# -- migrate -------------------------------------------------------------------------


def test_migrate_creates_the_schema_and_is_idempotent(env, capsys):
    assert not db_path(env).exists()
    code, out, err = main(capsys, "migrate")
    assert code == 0, err
    assert "up to date" in out
    tables = {r[0] for r in query(env, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"fieldsync_version", "field_sales_version", "log_head", "change_log", "mutation_ledger", "devices", "tenants", "users",
            "customers", "products", "prices", "stock", "orders", "sales"} <= tables
    [(revision,)] = query(env, "SELECT version_num FROM fieldsync_version")
    before = dump(env)
    code, _, err = main(capsys, "migrate")
    assert code == 0, err
    assert dump(env) == before
    assert query(env, "SELECT version_num FROM fieldsync_version") == [(revision,)]


def test_console_script_migrate(env):
    result = run(env, "migrate")
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout
    assert "Traceback" not in result.stderr
    assert query(env, "SELECT count(*) FROM log_head") == [(0,)]


def _unused_port() -> int:
    from .live_support import free_port

    return free_port()


@pytest.mark.parametrize("command", ["migrate", "serve", "demo"])
@pytest.mark.parametrize("url,words", [
    ("postgresql://postgres@127.0.0.1:{port}/test", ["connection refused", "PostgreSQL is running"]),
    ("postgresql://postgres@127.0.0.1:5432/fieldsync_no_such_db", ["does not exist", "createdb"]),
    ("sqlite:////nonexistent-dir/fieldsync.db", ["unable to open", "writable"]),
])
def test_an_unusable_database_is_one_line_not_a_traceback(env, command, url, words):
    url = url.format(port=_unused_port())
    result = run({**env, "FIELDSYNC_DATABASE_URL": url}, command)
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    said = [ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith("{")]  # JSON lines are logs
    assert len(said) == 1, result.stderr[-3000:]
    [line] = said
    assert line.startswith(f"fieldsync {command}: cannot use the database ")
    assert all(word in line for word in words), line
    assert "FIELDSYNC_DATABASE_URL" in line


def test_a_second_serve_on_one_embedded_data_dir_is_refused(env):
    port = _unused_port()

    def serve() -> subprocess.Popen:
        return subprocess.Popen([str(SCRIPT), "serve", "--port", str(port)], env=env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    with serve() as first:
        try:
            assert "listening" in first.stdout.readline()
            second = run(env, "serve", "--port", str(_unused_port()))
            assert second.returncode == 1 and "Traceback" not in second.stderr
            [line] = [ln for ln in second.stderr.splitlines() if not ln.startswith("{")]
            assert f"in use by fieldsync serve (pid {first.pid})" in line and "FIELDSYNC_DATA_DIR" in line, line
            many = run(env, "serve", "--workers", "2", "--port", str(_unused_port()))
            assert many.returncode == 2 and "needs PostgreSQL" in many.stderr
        finally:
            first.kill()  # even a killed server leaves the directory free: the lock dies with it
    with serve() as again:
        try:
            assert "listening" in again.stdout.readline()
        finally:
            again.kill()


# -- import --------------------------------------------------------------------------


def test_import_products_lands_rows_and_grows_the_log(env, capsys, tmp_path):
    seeded(env, capsys)
    settings = Settings.from_env()
    sales1 = TokenService(settings).issue(user_id=11, tenant_id=1, role="salesperson")
    device = asyncio.run(_device_pull(settings, sales1))
    assert len(device.replica.rows("catalog")) == 20
    seq, other = head(env, 1), head(env, 2)
    log_rows = query(env, "SELECT count(*) FROM change_log")[0][0]

    path = write_csv(tmp_path / "products.csv", PRODUCT_COLS, [
        [100, "NEW-100", "Imported one", "Garden", "pcs", "4001234567890", "true"],
        [101, "NEW-101", "Imported two", "Garden", "box", "", "yes"],
        [3, "SKU-0003", "Renamed by import", "Hardware", "pcs", "4000000000003", "1"],
        [4, "SKU-0004", "Retired by import", "Hardware", "pcs", "4000000000004", "false"],
    ])
    code, out, err = main(capsys, "import", "products", str(path), "--tenant", "acme", "--batch", "3")
    assert code == 0, err
    assert "imported 4 products rows" in out

    rows = {r[0]: r[1:] for r in query(
        env, "SELECT id, sku, name, category, unit, barcode, active FROM products WHERE tenant_id = 1")}
    assert len(rows) == 22
    assert rows[100] == ("NEW-100", "Imported one", "Garden", "pcs", "4001234567890", 1)
    assert rows[101] == ("NEW-101", "Imported two", "Garden", "box", None, 1)  # empty cell: null
    assert rows[3][1] == "Renamed by import" and rows[4][5] == 0
    # two batches of --batch 3: two transactions, two log positions; tenant 2 untouched
    assert head(env, 1) == seq + 2
    assert head(env, 2) == other
    assert query(env, "SELECT count(*) FROM change_log")[0][0] > log_rows
    keys = {r[0] for r in query(env, "SELECT key FROM change_log WHERE tenant_id = 1 AND seq > ?", seq)}
    assert {"100", "101", "3", "4"} <= keys

    # and a device that synced before the import receives it as a delta
    after = asyncio.run(_device_pull(settings, sales1, device.replica.cursor))
    assert set(after.replica.rows("catalog")) == {3, 100, 101}  # the replica started empty: deltas only
    assert after.replica.rows("catalog")[3]["name"] == "Renamed by import"


def test_import_orders_moves_their_statuses(env, capsys, tmp_path):
    """`fieldsync import orders` goes the domain's way (server/domain/order_status.py):
    a shipped order takes its stock; a move it cannot make is refused with its line."""
    seeded(env, capsys)
    settings = Settings.from_env()
    sales1 = TokenService(settings).issue(user_id=11, tenant_id=1, role="salesperson")

    async def take(order_id: str) -> None:
        services = build_services(settings)
        try:
            app = create_app(settings, services=services)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fieldsync") as http:
                device = HttpSync(http, sales1, f"phone-{order_id[-1]}")  # its mutation ids start at 1
                [result] = await device.push([device.mutation("order.create", {
                    "id": order_id, "customer_id": 1, "lines": [{"product_id": 2, "qty": 3}]})])
                assert result["status"] == "applied", result
        finally:
            await services.db.dispose()

    shipped, kept = "00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002"
    asyncio.run(take(shipped))
    asyncio.run(take(kept))
    stock_of_2 = "SELECT on_hand, reserved FROM stock WHERE tenant_id = 1 AND branch_id = 1 AND product_id = 2"
    assert query(env, stock_of_2) == [(50, 6)]
    code, out, err = main(capsys, "import", "orders", str(write_csv(tmp_path / "o.csv", ["id", "status"],
                                                                  [[shipped, "shipped"]])), "--tenant", "acme")
    assert code == 0, err
    assert query(env, stock_of_2) == [(47, 3)]
    before = dump(env)
    code, out, err = main(capsys, "import", "orders", str(write_csv(tmp_path / "bad.csv", ["id", "status"], [
        [kept, "shipped"], [shipped, "cancelled"]])), "--tenant", "acme")
    assert code != 0 and "line 3: an order shipped cannot become cancelled" in err, err
    assert dump(env) == before


def test_console_script_import(env, capsys, tmp_path):
    seeded(env, capsys)
    path = write_csv(tmp_path / "p.csv", PRODUCT_COLS, [[200, "S-200", "Two hundred", "Tools", "pcs", "", "true"]])
    result = run(env, "import", "products", str(path), "--tenant", "acme")
    assert result.returncode == 0, result.stderr
    assert "imported 1 products rows" in result.stdout
    assert query(env, "SELECT name FROM products WHERE id = 200 AND tenant_id = 1") == [("Two hundred",)]


BAD_IMPORTS: dict[str, tuple[list[str], list[list[Any]], list[str]]] = {
    # name -> (columns, rows, words the error message must contain, one of them at least)
    "bad integer": (PRODUCT_COLS, [[100, "S", "ok", "Tools", "pcs", "", "true"], ["1x", "S", "n", "Tools", "pcs", "",
                                                                                  "true"]], ["line 3: `id` '1x' is not an integer"]),
    "unknown column": (PRODUCT_COLS + ["colour"], [[100, "S", "n", "Tools", "pcs", "", "true", "red"]], ["colour"]),
    "missing required value": (PRODUCT_COLS, [[100, "S", "", "Tools", "pcs", "", "true"]], ["line 2: `name`"]),
    "unreadable yes/no": (PRODUCT_COLS, [[100, "S", "n", "Tools", "pcs", "", "true"],
                                         [101, "S", "n", "Tools", "pcs", "", "maybe"]], ["line 3: `active` 'maybe'"]),
    "missing id": (PRODUCT_COLS, [[100, "S", "n", "Tools", "pcs", "", "1"], ["", "S", "n", "Tools", "pcs", "", "0"],
                                         [102, "S", "n", "Tools", "pcs", "", "y"]], ["line 3: a map with an integer `id`"]),
    "another tenant's id": (PRODUCT_COLS, [[41, "S", "n", "Tools", "pcs", "", "true"],
                                           [100, "S", "n", "Tools", "pcs", "", "true"]],
                            ["line 2: `id` 41 is in use outside this tenant"]),
}


@pytest.mark.parametrize("case", list(BAD_IMPORTS))
def test_bad_csv_gives_a_clean_error_and_imports_nothing(env, capsys, tmp_path, case):
    seeded(env, capsys)
    if case == "another tenant's id":  # a product of tenant 2 with id 41
        query(env, "INSERT INTO products (id, tenant_id, sku, name, category, unit, active) "
                   "VALUES (41, 2, 'T2', 'Theirs', 'Tools', 'pcs', 1)")
    cols, rows, words = BAD_IMPORTS[case]
    path = write_csv(tmp_path / "bad.csv", cols, rows)
    before = dump(env)
    result = run(env, "import", "products", str(path), "--tenant", "acme")
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    message = result.stderr.strip()
    assert message, "the operator is told what went wrong"
    assert any(word.lower() in message.lower() for word in words), message
    assert dump(env) == before


@pytest.mark.parametrize("args,words", [
    (["import", "products", "{missing}", "--tenant", "acme"], ["missing.csv", "no such file"]),
    (["import", "products", "{good}", "--tenant", "nosuchtenant"], ["nosuchtenant"]),
    (["import", "sales", "{good}", "--tenant", "acme"], ["sales"]),
    (["token", "nobody", "--tenant", "acme"], ["nobody"]),
])
def test_operator_mistakes_give_a_clean_error(env, capsys, tmp_path, args, words):
    seeded(env, capsys)
    good = write_csv(tmp_path / "good.csv", PRODUCT_COLS, [[300, "S", "n", "Tools", "pcs", "", "true"]])
    args = [a.format(missing=tmp_path / "missing.csv", good=good) for a in args]
    before = dump(env)
    result = run(env, *args)
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert any(word.lower() in result.stderr.lower() for word in words), result.stderr
    assert dump(env) == before


# -- token ---------------------------------------------------------------------------


def test_token_prints_a_jwt_the_server_accepts(env, capsys):
    seeded(env, capsys)
    code, out, err = main(capsys, "token", "sales1", "--tenant", "acme")
    assert code == 0, err
    printed = out.strip()
    assert printed.count(".") == 2 and "\n" not in printed
    settings = Settings.from_env()
    claims = TokenService(settings).verify(printed)
    assert (claims["sub"], claims["tid"], claims["role"]) == ("11", 1, "salesperson")
    assert claims["exp"] - claims["iat"] == settings.token_ttl_s
    with pytest.raises(jwt.InvalidSignatureError):  # really signed with the install's secret
        jwt.decode(printed, "not-the-secret-of-this-install-0123456789", algorithms=["HS256"])
    device = asyncio.run(_device_pull(settings, printed))
    assert set(device.replica.rows("customers")) == {1, 2, 3, 4}


def test_token_picks_the_user_of_the_named_tenant(env, capsys):
    seeded(env, capsys)
    code, out, err = main(capsys, "token", "sales1", "--tenant", "other", "--ttl", "60")
    assert code == 0, err
    claims = TokenService(Settings.from_env()).verify(out.strip())
    assert (claims["sub"], claims["tid"]) == ("41", 2)
    assert claims["exp"] - claims["iat"] == 60


def test_console_script_token(env, capsys):
    seeded(env, capsys)
    result = run(env, "token", "pos1", "--tenant", "acme")
    assert result.returncode == 0, result.stderr
    claims = TokenService(Settings.from_env()).verify(result.stdout.strip())
    assert (claims["sub"], claims["tid"], claims["role"]) == ("21", 1, "pos")


# -- demo (when the domain ships one) ------------------------------------------------


def test_demo_then_token_then_import(env, tmp_path):
    pytest.importorskip("server.domain.demo")
    result = run(env, "demo", "--products", "50", "--customers", "10", "--days", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "loaded" in result.stdout
    [(tenant_id,)] = query(env, "SELECT id FROM tenants WHERE slug = 'demo'")
    assert query(env, "SELECT count(*) FROM products WHERE tenant_id = ?", tenant_id) == [(50,)]
    assert query(env, "SELECT count(*) FROM customers WHERE tenant_id = ?", tenant_id) == [(10,)]
    again = run(env, "demo", "--products", "50", "--customers", "10", "--days", "1")
    assert again.returncode == 0 and "already present" in again.stdout

    token = run(env, "token", "sales1")
    assert token.returncode == 0, token.stderr
    claims = TokenService(Settings.from_env()).verify(token.stdout.strip())
    assert claims["tid"] == tenant_id and claims["role"] == "salesperson"

    [(top,)] = query(env, "SELECT max(id) FROM products")
    seq = head(env, tenant_id)
    path = write_csv(tmp_path / "more.csv", PRODUCT_COLS,
                     [[top + 1, "X-1", "Extra one", "Tools", "pcs", "", "true"],
                      [top + 2, "X-2", "Extra two", "Tools", "pcs", "", "true"]])
    result = run(env, "import", "products", str(path))  # the default tenant is the demo's
    assert result.returncode == 0, result.stderr[-2000:]
    assert query(env, "SELECT count(*) FROM products WHERE tenant_id = ?", tenant_id) == [(52,)]
    assert head(env, tenant_id) == seq + 1


def test_every_option_of_every_command_is_described():
    """`--help` shows what each option does, with its default (issue 14)."""
    parser, _ = cli._parser()

    def walk(p, path):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    yield from walk(child, [*path, name])
            elif action.dest != "help":
                yield path, action, p

    undocumented = [(" ".join(path), action.dest) for path, action, _ in walk(parser, []) if not action.help]
    assert undocumented == []
    simulate = next(p for path, _, p in walk(parser, []) if path == ["simulate"])
    text = simulate.format_help()
    assert "--seconds" in text and "run until Ctrl-C" in text and "(default: 4)" in text


def test_the_bundled_domains_commands_say_so_under_another_domain(env, capsys, monkeypatch):
    monkeypatch.setenv("FIELDSYNC_DOMAIN", "tests.field_notes:domain")
    code, _, err = main(capsys, "token", "sales1")
    assert code == 1 and "no directory of users" in err and "identity provider" in err
    code, _, err = main(capsys, "demo")
    assert code == 1 and "bundled field-sales domain's" in err and "field-notes" in err
    code, out, _ = main(capsys, "import", "--help")  # its back-office table is the one importable
    assert code == 0 and "field_notes (note_id, author, body, visible)" in out and "products" not in out
