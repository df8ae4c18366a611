"""The benchmarks in ``bench/`` at their smoke size: each must run to the end against the real
PostgreSQL and Redis and print its figures. Full sizes are run by hand (``bench/README.md``);
this only keeps them from rotting. No figure is asserted here: timing is not a unit test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.live_support import require_redis

ROOT = Path(__file__).resolve().parent.parent

# script -> words its report must contain (the figures the issues ask for)
BENCHES = {
    "http_sync_bench.py": ["rows/s", "B msgpack", "ms p50", "duplicates: 0"],
    "ws_bench.py": ["p50", "p99"],
    "jobs_bench.py": ["p50", "compaction"],
    "observability_bench.py": ["p50"],
    "client_decode_bench.py": ["rows/s"],
    "capture_bench.py": ["with / without capture triggers", "p50"],
    "push_bench.py": ["identical results: true", "nothing changed: true", "duplicates: 0", "p99"],
    "snapshot_storm.py": ["time to all done", "refused and retried", "server RSS", "other than the snapshot cap's 503: 0"],
}


@pytest.mark.slow
@pytest.mark.timeout(330)
@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.parametrize("script", sorted(BENCHES))
def test_benchmark_runs_at_smoke_size(script, pg_database):
    require_redis()
    args = [sys.executable, str(ROOT / "bench" / script)]
    if script != "client_decode_bench.py":
        args.append("--smoke")
    else:
        args += ["--rows", "20000", "--page", "5000", "--repeat", "1"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    report = done.stdout.lower()
    missing = [word for word in BENCHES[script] if word.lower() not in report]
    assert not missing, f"{script} printed no {missing}:\n{done.stdout[-3000:]}"


def test_profile_push_sums_samples_by_what_the_server_did(tmp_path, capsys):
    """bench/profile_push.py needs py-spy, which CI does not install: its summary of the
    samples is checked here on collapsed stacks of the shape py-spy writes."""
    sys.path.insert(0, str(ROOT))
    from bench.profile_push import summarise

    loop = "Runner.run (asyncio/runners.py:118)"
    raw = tmp_path / "push.txt"
    raw.write_text("\n".join([
        f"{loop} 30",
        f"{loop};push (server/http.py:1);PreparedStatement.__do_execute (asyncpg/prepared_stmt.py:2) 10",
        f"{loop};push (server/http.py:1);Connection.execute (sqlalchemy/engine/base.py:3) 5",
        f"{loop};push (server/http.py:1);coerce (sqlalchemy/sql/coercions.py:4) 3",
        f"{loop};push (server/http.py:1);order_create (server/domain/mutations.py:5) 2",
        "Thread.run (threading.py:982);_worker (concurrent/futures/thread.py:81) 50",
    ]) + "\n")
    summarise(raw)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "100 samples at 500 Hz"
    shares = {line.split("s  ", 1)[1]: line.split("%")[0].strip() for line in lines[1:]}
    assert shares == {"idle worker thread (not CPU)": "50.0", "event loop waiting (on PostgreSQL, the client)": "30.0",
                      "asyncpg (protocol, socket)": "10.0", "SQLAlchemy executing (parameters, results)": "5.0",
                      "SQLAlchemy building and compiling statements": "3.0",
                      "other Python (handlers, push, JSON)": "2.0"}
