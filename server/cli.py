"""The ``fieldsync`` command: serve, migrate, demo, token, import."""

from __future__ import annotations

import argparse
import asyncio
import csv
import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from sync.errors import BadRequest
from sync.schema import wire_type
from sync.storage import Database

from .config import Settings
from .observe import configure_logging
from .startup import StartupError, connect_or_explain, hold_data_dir

log = logging.getLogger("fieldsync")


def main(argv: list[str] | None = None) -> int:
    parser, job_commands = _parser()
    args = parser.parse_args(argv)
    configure_logging(verbose=args.verbose)
    try:
        settings = Settings.from_env()
    except ValueError as exc:  # a setting out of range or unreadable: say which, do not start
        print(f"fieldsync {args.command}: {exc}", file=sys.stderr)
        return 2
    handlers: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
        "serve": cmd_serve, "migrate": cmd_migrate, "demo": cmd_demo, "token": cmd_token, "import": cmd_import,
        "devices": cmd_devices, **job_commands,
    }
    try:
        return handlers[args.command](settings, args)
    except StartupError as exc:
        print(f"fieldsync {args.command}: {exc}", file=sys.stderr)
        return 1


def _importable() -> dict[str, Any]:
    """The back-office tables of the domain FIELDSYNC_DOMAIN names, for ``import --help``
    (none when it cannot be loaded: the command then says why)."""
    import os

    from . import plugin
    from .config import DEFAULT_DOMAIN

    try:
        return dict(plugin.load(os.environ.get("FIELDSYNC_DOMAIN") or DEFAULT_DOMAIN).writable)
    except ValueError:
        return {}


def _parser() -> tuple[argparse.ArgumentParser, dict[str, Callable[[Settings, argparse.Namespace], int]]]:
    writable = _importable()
    parser = argparse.ArgumentParser(prog="fieldsync", description="Offline-first sync server. Settings come from "
                                     "FIELDSYNC_* variables (README, Configuration).")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP/WebSocket server")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument("--workers", type=int, default=1,
                       help="server processes (more than 1 needs PostgreSQL and FIELDSYNC_REDIS_URL)")
    serve.add_argument("--demo", action="store_true", help="load the demo tenant first if it is missing")
    commands.add_parser("migrate", help="bring the database schema up to date")
    demo = commands.add_parser("demo", help="load the demo tenant (idempotent)")
    demo.add_argument("--products", type=int, default=10_000, help="catalog size")
    demo.add_argument("--customers", type=int, default=500, help="customers, shared among the salespeople")
    demo.add_argument("--days", type=int, default=21, help="days of order and sale history")
    token = commands.add_parser("token", help="print a bearer token for a user")
    token.add_argument("username", help="e.g. sales1, pos1, admin in the demo tenant")
    token.add_argument("--tenant", default="demo", help="the tenant's slug")
    token.add_argument("--ttl", type=int, default=None, help="lifetime in seconds (default FIELDSYNC_TOKEN_TTL)")
    token.add_argument("--device", default=None, metavar="CLIENT_ID",
                       help="bind the token to one device: it syncs only as this client_id (claim `did`)")
    load = commands.add_parser(
        "import", help="upsert rows of a table from a CSV file",
        epilog="CSV with a header line naming columns; an empty cell is null; yes/no columns read "
               "1/0, true/false, yes/no, y/n, t/f. Importable tables and columns: "
               + "; ".join(f"{name} ({', '.join(w.columns)})" for name, w in writable.items()))
    load.add_argument("table", choices=list(writable), metavar="table", help=", ".join(writable))
    load.add_argument("file", type=Path, help="the CSV file")
    load.add_argument("--tenant", default="demo", help="the tenant's slug, or its number")
    load.add_argument("--batch", type=int, default=1000, help="rows per transaction (each one reaches devices whole)")
    health = commands.add_parser("devices", help="device sync health: lag, last seen, errors (most behind first)")
    health.add_argument("--tenant", default="demo", help="the tenant's slug, or its number")
    health.add_argument("--behind", default=None, help="only devices lagging at least this long: 30m, 1h, 2d")
    health.add_argument("--json", action="store_true", help="print JSON (as GET /admin/devices) instead of a table")
    from .jobs_cli import add_commands  # worker, jobs failed|retry, compact

    job_commands = add_commands(commands)
    from .simulate import add_command as add_simulate  # simulate: devices against a running server

    job_commands.update(add_simulate(commands))
    _finish(parser)
    return parser, job_commands


class _Help(argparse.HelpFormatter):
    """Shows an option's default after its help, unless there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def _finish(parser: argparse.ArgumentParser) -> None:
    """Every command and sub-command: defaults in --help, and --verbose after its name."""
    parser.formatter_class = _Help
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log library chatter (migrations, HTTP requests) as well")
    parser.set_defaults(verbose=False)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _finish(child)


def _with_db(settings: Settings, work: Callable[[Database], Any]) -> Any:
    async def run() -> Any:
        if settings.embedded:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        # Not "fieldsync": this process has no fan-out, so the capture NOTIFYs its commits
        # (an import's changes reach live devices at once).
        db = Database(settings.database_url, application="fieldsync-cli")
        try:
            await connect_or_explain(db, settings.database_url)
            return await work(db)
        finally:
            await db.dispose()

    return asyncio.run(run())


def _served_domain(settings: Settings):
    """The domain FIELDSYNC_DOMAIN names (its migrations, its capture triggers)."""
    from . import plugin

    try:
        return plugin.load(settings.domain)
    except ValueError as exc:
        raise StartupError(str(exc)) from None


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from .migrations import upgrade

    domain = _served_domain(settings)
    _with_db(settings, lambda db: upgrade(db, domain))
    print("database schema and capture triggers are up to date")
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from . import plugin
    from .config import DEFAULT_DOMAIN
    from .domain.demo import load_demo
    from .migrations import upgrade

    domain = _served_domain(settings)
    if domain is not plugin.load(DEFAULT_DOMAIN):
        print(f"the demo data is the bundled field-sales domain's; FIELDSYNC_DOMAIN serves {domain.name}",
              file=sys.stderr)
        return 1

    async def work(db: Database):
        if settings.embedded:
            await upgrade(db, domain)
        return await load_demo(db, domain.registry(None), products=args.products, customers=args.customers,
                               days=args.days)

    summary = _with_db(settings, work)
    state = "loaded" if summary.created else "already present"
    print(f"demo tenant {state}: " + ", ".join(f"{n} {t}" for t, n in summary.counts.items()))
    return 0


def cmd_token(settings: Settings, args: argparse.Namespace) -> int:
    from .auth import TokenService

    domain = _served_domain(settings)
    if domain.directory is None or domain.directory.login is None:
        print(f"the domain {domain.name} has no directory of users to look {args.username!r} up in: its tokens "
              "come from the company's identity provider (claims sub, tid, role)", file=sys.stderr)
        return 1
    user = _with_db(settings, lambda db: domain.directory.login(db, args.tenant, args.username))
    if user is None:
        print(f"no user {args.username!r} in tenant {args.tenant!r} (run `fieldsync demo` first?)", file=sys.stderr)
        return 1
    user_id, tenant_id, role = user
    print(TokenService(settings).issue(user_id=user_id, tenant_id=tenant_id, role=role, ttl=args.ttl,
                                        device=args.device))
    return 0


def cmd_devices(settings: Settings, args: argparse.Namespace) -> int:
    import json
    import time

    from .device_health import device_health, format_table, parse_duration, tenant_id_of

    try:
        behind = parse_duration(args.behind) if args.behind else None
    except BadRequest as exc:
        print(exc.message, file=sys.stderr)
        return 2
    now = int(time.time() * 1000)

    directory = _served_domain(settings).directory

    async def work(db: Database):
        tenant_id = await tenant_id_of(db, args.tenant, directory)
        return None if tenant_id is None else await device_health(db, tenant_id, behind=behind, now=now,
                                                                  directory=directory)

    found = _with_db(settings, work)
    if found is None:
        print(f"no tenant {args.tenant!r}", file=sys.stderr)
        return 1
    head, health = found
    if args.json:
        print(json.dumps({"head": head, "now": now, "behind": behind, "devices": [d.as_json() for d in health]}))
    else:
        print(format_table(head, health, now))
    return 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from .http_protocol import HttpLimits, LimitedHttpToolsProtocol
    from .migrations import pending, upgrade
    from .ws_protocol import SharedDeflateProtocol

    domain = _served_domain(settings)

    async def prepare(db: Database) -> bool:
        if settings.embedded:
            await upgrade(db, domain)
        return await pending(db, domain)

    if settings.embedded:
        if args.workers > 1:
            print("--workers above 1 needs PostgreSQL and FIELDSYNC_REDIS_URL: the embedded default is one process",
                  file=sys.stderr)
            return 2
        claim = hold_data_dir(settings.data_dir)  # noqa: F841 (held open until the process ends)

    if _with_db(settings, prepare):
        print("the database schema or its capture triggers are behind: run `fieldsync migrate` first",
              file=sys.stderr)
        return 1
    if args.demo:
        cmd_demo(settings, argparse.Namespace(products=10_000, customers=500, days=21))
    where = f"http://{args.host}:{args.port}"
    print(f"fieldsync listening on {where} (database {settings.database_url.split('@')[-1]}, "
          f"fan-out {'redis' if settings.redis_url else 'in-process'})")
    print(f"health: {where}/healthz; a token for a demo user: `{_this_command()} token sales1`, "
          f"then POST msgpack to {where}/sync/pull (README, \"A pull, from Python\")", flush=True)
    uvicorn.run("server.app:create_app", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level="warning", log_config=None, access_log=False, ws_max_size=settings.max_body_bytes,
                ws=SharedDeflateProtocol if settings.ws_impl == "fieldsync" else settings.ws_impl,
                ws_per_message_deflate=settings.ws_deflate,
                # uvicorn has no head/body limits for httptools: its protocol, under ours
                http=functools.partial(LimitedHttpToolsProtocol, limits=HttpLimits.from_settings(settings)))
    return 0


def _this_command() -> str:
    """How the user can run this command again: the path they ran (``.venv/bin/fieldsync``
    after ``scripts/run.sh``, which is not on PATH), relative to where they stand."""
    ran = Path(sys.argv[0])
    if ran.name != "fieldsync" or not ran.exists():
        return "fieldsync"
    try:
        return str(ran.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(ran)


def cmd_import(settings: Settings, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .admin import apply, check_rows
    from .device_health import tenant_id_of

    domain = _served_domain(settings)
    writable = domain.writable.get(args.table)
    if writable is None:
        print(f"unknown table {args.table!r}; importable: {', '.join(domain.writable) or 'none'}", file=sys.stderr)
        return 1
    table = writable.table
    try:
        with args.file.open(newline="") as handle:
            rows = check_rows(writable, [_typed_row(table, row, line)
                                           for line, row in enumerate(csv.DictReader(handle), start=2)],
                              label="line", first=2)  # line 1 is the header
    except (OSError, ValueError, BadRequest) as exc:
        print(f"import refused, nothing written: {exc}", file=sys.stderr)
        return 1

    async def work(db: Database) -> int:
        registry = domain.registry(None)
        tenant_id = await tenant_id_of(db, args.tenant, domain.directory)
        if tenant_id is None:
            raise SystemExit(f"no tenant {args.tenant!r}")
        with tqdm(total=len(rows), unit="row", desc=f"import {args.table}") as bar:
            for start in range(0, len(rows), args.batch):
                chunk = rows[start:start + args.batch]
                await apply(db, registry, tenant_id, writable, chunk, [], label="line", first=start + 2)
                bar.update(len(chunk))
        await db.analyze([table])
        return len(rows)

    try:
        count = _with_db(settings, work)
    except BadRequest as exc:
        print(f"import stopped: {exc} (earlier batches were written)", file=sys.stderr)
        return 1
    print(f"imported {count} {args.table} rows")
    return 0


def _typed_row(table: sa.Table, row: dict[str, str], line: int) -> dict[str, Any]:
    """CSV cells are text: convert by the column's wire type; an empty cell is null."""
    try:
        return _convert(table, row)
    except ValueError as exc:
        raise ValueError(f"line {line}: {exc}") from None


_BOOLS = {"1": True, "true": True, "yes": True, "y": True, "t": True,
          "0": False, "false": False, "no": False, "n": False, "f": False}


def _convert(table: sa.Table, row: dict[str, str]) -> dict[str, Any]:
    typed: dict[str, Any] = {}
    for col, text in row.items():
        if col not in table.c:
            typed[col] = text  # check_rows names the unknown column
            continue
        kind = wire_type(table.c[col])
        if text is None or text == "":
            typed[col] = None
        elif kind in ("int", "money", "time"):
            typed[col] = _number(int, col, text)
        elif kind == "bool":
            typed[col] = _BOOLS.get(text.strip().lower())
            if typed[col] is None:  # "maybe" read as false would deactivate the row everywhere
                raise ValueError(f"`{col}` {text!r} is not a yes/no value ({', '.join(_BOOLS)})")
        elif kind == "float":
            typed[col] = _number(float, col, text)
        else:
            typed[col] = text
    return typed


def _number(kind: type, col: str, text: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"`{col}` {text!r} is not {'an integer' if kind is int else 'a number'}") from None


if __name__ == "__main__":
    sys.exit(main())
