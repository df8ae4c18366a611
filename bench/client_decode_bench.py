"""The Python reference client's decode + apply rate for a 100,000-row catalog snapshot.

The snapshot is built as the server sends it: 10 pages of 10,000 ``catalog`` rows (the
dataset's columns, demo-like values), each page a msgpack ``changes`` frame packed with the
server's own ``sync.wire`` (the first page resets ``catalog``; a 128-byte cursor each). The
client side is timed per store: ``msgpack.unpackb`` of every page, then ``store.apply``
(the same calls ``SyncClient`` makes for each frame).

    .venv/bin/python bench/client_decode_bench.py [--rows 100000] [--page 10000] [--repeat 3]

Prints rows/s for decode alone and for decode + apply into MemoryStore, Replica (the
small in-memory copy the tests use), SqliteStore in memory and SqliteStore on a file
(WAL, synchronous=NORMAL, the default), best of ``--repeat`` runs, plus the peak RSS.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fieldsync_client import MemoryStore, Replica, SqliteStore  # noqa: E402
from sync import wire  # noqa: E402

COLS = ["id", "sku", "name", "category", "unit", "barcode"]
CATEGORIES = ["Fasteners", "Tools", "Hardware", "Electrical", "Lighting", "Paint", "Grocery", "Beverages",
              "Cleaning", "Office"]
NOUNS = "Hex Bolt,Wood Screw,Wall Plug,Claw Hammer,Cable Tie,LED Bulb,Paint Roller,Orange Juice,Dish Soap,Copy Paper"
NOUNS = NOUNS.split(",")
SIZES = ["M6x30", "M8x40", "4x40", "500g", "1L", "A4", "x10", "x100", "E27 9W", "2.5m"]


def catalog_pages(rows: int, page: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    frames = []
    for start in range(1, rows + 1, page):
        data = {"catalog": {"cols": COLS, "deletes": [], "rows": [
            [i, f"SKU-{i:06d}", f"{rng.choice(NOUNS)} {rng.choice(SIZES)} {rng.choice(['Zinc', 'Pro', 'Eco', 'Classic'])}",
             rng.choice(CATEGORIES), rng.choice(["pcs", "box", "kg", "l"]), f"{4_000_000_000_000 + i * 7:013d}"]
            for i in range(start, min(rows, start + page - 1) + 1)]}}
        frames.append(wire.pack_changes(os.urandom(128), start + page <= rows, ["catalog"] if start == 1 else [],
                                        wire.pack(data)))
    return frames


def run(frames: list[bytes], make_store) -> tuple[float, int]:
    store = make_store()
    started = time.perf_counter()
    for frame in frames:
        batch = msgpack.unpackb(frame, raw=False)
        if store is not None:
            store.apply(batch)
    elapsed = time.perf_counter() - started
    count = 0 if store is None else len(store.rows("catalog"))
    if hasattr(store, "close"):
        store.close()
    return elapsed, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--page", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    frames = catalog_pages(args.rows, args.page)
    size = sum(map(len, frames))
    print(f"snapshot: {args.rows:,} catalog rows in {len(frames)} frames of {args.page:,}, "
          f"{size / 1e6:.1f} MB msgpack ({size / args.rows:.1f} B/row)")
    with tempfile.TemporaryDirectory() as tmp:
        files = iter(range(10_000))
        stores = {
            "decode only (msgpack.unpackb)": lambda: None,
            "decode + apply, MemoryStore": MemoryStore,
            "decode + apply, Replica": Replica,
            "decode + apply, SqliteStore :memory:": lambda: SqliteStore(":memory:"),
            "decode + apply, SqliteStore file (WAL)": lambda: SqliteStore(Path(tmp) / f"s{next(files)}.db"),
        }
        for label, make in stores.items():
            best, count = min(run(frames, make) for _ in range(args.repeat))
            check = f", {count:,} rows stored" if count else ""
            print(f"{label:42s} {args.rows / best:>12,.0f} rows/s  ({best * 1000:7.0f} ms{check})")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"peak RSS of this process: {peak / 1024:.0f} MB (Python {sys.version.split()[0]}, msgpack "
          f"{'.'.join(map(str, msgpack.version))})")


if __name__ == "__main__":
    main()
