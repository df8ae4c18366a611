"""Where a push's time goes: py-spy samples `fieldsync serve` while it applies the outbox
replay of push_bench.py (1,000 order.create x 5 lines, pushes of 500; `--sales`: the POS
outbox of 300 sale.complete), and the samples are summed by what the process was doing.
Issue 13's profile before and after, reproducible on any commit that has push_bench.py.

    pip install py-spy   # anywhere; not a dependency of fieldsync
    .venv/bin/python bench/profile_push.py [--sales] [--py-spy PATH] [--raw FILE]

py-spy needs to be allowed to read the server's memory (root, or ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import push_bench  # noqa: E402
from bench.common import scratch_database, server_process  # noqa: E402
from bench.http_sync_bench import outbox, prepare  # noqa: E402

RATE = 500  # samples per second

# What a sample was doing, by its frames (leaf last); the first rule that matches wins.
_WAITING = "event loop waiting (on PostgreSQL, the client)"
_KINDS = [
    ("idle worker thread (not CPU)", lambda leaf, stack: leaf.startswith("_worker (concurrent/futures/thread.py")),
    ("job enqueues (worker thread, embedded queue)", lambda leaf, stack: "concurrent/futures/thread.py" in stack),
    (_WAITING, lambda leaf, stack: leaf.startswith("Runner.run (") or "selectors.py" in leaf),
    ("SQLAlchemy building and compiling statements", lambda leaf, stack: any(
        part in stack for part in ("cache_key.py", "coercions.py", "operators.py", "default_comparator.py",
                                   "_compile_w_cache"))),
    ("asyncpg (protocol, socket)", lambda leaf, stack: "asyncpg/" in leaf),
    ("SQLAlchemy executing (parameters, results)", lambda leaf, stack: "sqlalchemy/" in leaf),
    ("wire decoding and encoding", lambda leaf, stack: "sync/wire.py" in stack),
    ("HTTP server", lambda leaf, stack: any(part in leaf for part in ("uvicorn/", "starlette/", "httptools"))),
    ("other Python (handlers, push, JSON)", lambda leaf, stack: True),
]


def kind_of(frames: list[str]) -> str:
    stack = ";".join(frames)
    return next(name for name, matches in _KINDS if matches(frames[-1], stack))


def summarise(raw: Path) -> None:
    """Print the samples of a py-spy raw (collapsed stacks) file by kind."""
    kinds: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        if line.strip():
            stack, count = line.rsplit(" ", 1)
            kinds[kind_of(stack.split(";"))] += int(count)
    total = sum(kinds.values())
    print(f"{total} samples at {RATE} Hz")
    for name, count in kinds.most_common():
        print(f"  {100 * count / total:5.1f} %  {count / RATE:6.2f} s  {name}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sales", action="store_true", help="profile the POS outbox instead")
    parser.add_argument("--py-spy", default=shutil.which("py-spy"), help="the py-spy executable")
    parser.add_argument("--raw", type=Path, help="keep py-spy's collapsed stacks here")
    args = parser.parse_args()
    if not args.py_spy:
        sys.exit("py-spy not found: pip install py-spy, or pass --py-spy PATH")
    raw = args.raw or Path(tempfile.mkdtemp(prefix="fieldsync-profile-")) / "push.txt"
    with scratch_database() as url:
        world = asyncio.run(prepare(url, 5_000))
        clients, stocked = asyncio.run(outbox(url, world["tenant"], world["sales1"]))
        priced = asyncio.run(push_bench.sellable(url, world["tenant"]))
        with server_process(url, extra_env={"FIELDSYNC_JOBS_THREADS": "0"}, with_pid=True) as (base, pid):
            sales1, pos1 = world["tokens"]["sales1"], world["tokens"]["pos1"]
            push_bench.push_http(base, sales1, "warm-up", push_bench.order_mutations(20, clients, stocked))
            spy = subprocess.Popen([args.py_spy, "record", "-p", str(pid), "-r", str(RATE), "-f", "raw",
                                    "-o", str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # py-spy attached
            if args.sales:
                _, seconds = push_bench.push_http(base, pos1, "profiled", push_bench.sale_mutations(300, priced))
            else:
                _, seconds = push_bench.push_http(base, sales1, "profiled",
                                                  push_bench.order_mutations(1_000, clients, stocked))
            spy.send_signal(2)  # SIGINT: py-spy writes what it has
            spy.wait()
    print(f"{'300 sale.complete' if args.sales else '1,000 order.create'} in {seconds:.3f} s under py-spy; "
          f"collapsed stacks in {raw}")
    summarise(raw)


if __name__ == "__main__":
    main()
