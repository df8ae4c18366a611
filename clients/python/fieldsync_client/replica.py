"""A device's local copy: datasets keyed by row key, plus the cursor, applied batch by batch."""

from __future__ import annotations

import copy
from typing import Any


class Replica:
    """In-memory local store. ``apply`` is all-or-nothing, like one local transaction."""

    def __init__(self, keys: dict[str, str] | None = None) -> None:
        self.keys = dict(keys or {})  # dataset -> key column; "id" when unknown
        self.data: dict[str, dict[Any, dict[str, Any]]] = {}
        self.cursor: bytes | None = None
        # Download progress of snapshots: rows received since each dataset's reset, and the
        # rows the server said the snapshot holds (``expected``, sent with the reset).
        self.received: dict[str, int] = {}
        self.expected: dict[str, int] = {}

    def apply(self, batch: dict[str, Any]) -> None:
        """Apply one pull response / ``changes`` frame: reset, then upserts and deletes."""
        data = copy.copy(self.data)
        received = dict(self.received)
        for name in batch.get("reset", []):
            data[name] = {}
            received[name] = 0
        for name, part in batch.get("data", {}).items():
            rows = dict(data.get(name, {}))
            key = self.keys.get(name, "id")
            cols = part["cols"]
            index = cols.index(key)
            seen: set[Any] = set()
            for row in part["rows"]:
                if row[index] in seen:
                    raise ValueError(f"{name}: key {row[index]!r} twice in one batch")
                seen.add(row[index])
                rows[row[index]] = dict(zip(cols, row))
            for deleted in part["deletes"]:
                if deleted in seen:
                    raise ValueError(f"{name}: key {deleted!r} both upserted and deleted in one batch")
                seen.add(deleted)
                rows.pop(deleted, None)
            data[name] = rows
            received[name] = received.get(name, 0) + len(part["rows"])
        self.data = data
        self.received = received
        self.expected.update(batch.get("expected", {}))
        self.cursor = batch["cursor"]

    def progress(self) -> dict[str, tuple[int, int | None]]:
        """``{dataset: (rows received since its snapshot began, rows expected or None)}``."""
        return {name: (done, self.expected.get(name)) for name, done in self.received.items()}

    def rows(self, name: str) -> dict[Any, dict[str, Any]]:
        return self.data.get(name, {})

    def datasets(self) -> list[str]:
        return sorted(self.data)

    def dump(self) -> dict[str, dict[Any, dict[str, Any]]]:
        """The non-empty datasets (an empty dataset counts as absent), for comparisons."""
        return {name: dict(rows) for name, rows in self.data.items() if rows}
