"""Declarations the engine serves generically: synced tables, datasets, mutations.

The domain registers these with a :class:`Registry`; the engine never imports the domain.
A dataset is one table, a tuple of wire columns, a key and, per role, a :class:`Scope`
saying which rows a device of that role holds.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from .errors import ErrorCode, MutationRejected


@dataclass(frozen=True)
class Principal:
    """Who is syncing: resolved by the server from the token and its user table."""

    tenant_id: int
    user_id: int
    role: str
    attrs: Mapping[str, Any] = field(default_factory=dict)


#: A scope's partition values for a principal: literal values, or a SELECT whose first column gives them.
Values = Callable[[Principal], "Sequence[Any] | sa.Select"]


@dataclass(frozen=True)
class BucketSpec:
    """How rows of a table are filed into buckets of the change log: by one column's value,
    among rows passing equality filters. Datasets with the same spec share buckets."""

    table: str
    partition: str | None
    where: tuple[tuple[str, Any], ...] = ()

    @property
    def prefix(self) -> str:
        filters = ",".join(f"{col}={value!r}" for col, value in self.where)
        return f"{self.table}:{self.partition or '*'}:{filters}#"

    def bucket_of(self, row: Mapping[str, Any]) -> str | None:
        """The bucket a row (as a column mapping) is in, or None when it is in none."""
        if any(row.get(col) != value for col, value in self.where):
            return None
        if self.partition is None:
            return self.prefix
        value = row.get(self.partition)
        return None if value is None else f"{self.prefix}{value}"

    def bucket(self, value: Any) -> str:
        return self.prefix if self.partition is None else f"{self.prefix}{value}"

    @property
    def columns(self) -> set[str]:
        return {col for col, _ in self.where} | ({self.partition} if self.partition else set())


@dataclass(frozen=True)
class Scope:
    """The rows of a dataset one role sees.

    Args:
        partition: column whose value must be one of ``values(principal)``; None for all
            rows of the tenant.
        values: the principal's partition values (literal list or a SELECT).
        where: equality filters every visible row passes (e.g. ``{"active": True}``).
        window: ``(time column, width in ms)``: only rows newer than now minus the width;
            rows age out of scope with time alone and reach devices as deletes.
    """

    partition: str | None = None
    values: Values | None = None
    where: Mapping[str, Any] = field(default_factory=dict)
    window: tuple[str, int] | None = None

    def spec(self, table: str) -> BucketSpec:
        return BucketSpec(table, self.partition, tuple(sorted(self.where.items())))

    def admits(self, row: Mapping[str, Any], values: set[Any], now_ms: int) -> bool:
        """Whether a current row is visible: the Python twin of :meth:`clause`."""
        if any(row.get(col) != value for col, value in self.where.items()):
            return False
        if self.partition is not None and row.get(self.partition) not in values:
            return False
        if self.window is not None:
            stamp = row.get(self.window[0])
            return stamp is not None and stamp >= now_ms - self.window[1]
        return True

    def clause(self, table: sa.Table, values: Sequence[Any], now_ms: int) -> sa.ColumnElement[bool]:
        """The SQL twin of :meth:`admits` (without the tenant filter)."""
        terms = [table.c[col] == value for col, value in self.where.items()]
        if self.partition is not None:
            terms.append(table.c[self.partition].in_(list(values)))
        if self.window is not None:
            terms.append(table.c[self.window[0]] >= now_ms - self.window[1])
        return sa.and_(sa.true(), *terms)


#: A synced table with this column keeps the rows of many tenants; one without it (a company's
#: own ERP table) is a single company's, served as tenant 1.
TENANT = "tenant_id"
SINGLE_TENANT = 1


def tenant_clause(table: sa.Table, tenant_id: int) -> sa.ColumnElement[bool]:
    """The rows of ``table`` that belong to ``tenant_id``."""
    if TENANT in table.c:
        return table.c[TENANT] == tenant_id
    return sa.true() if tenant_id == SINGLE_TENANT else sa.false()


#: The wire column of a composite key: its parts as text, each ``\`` and ``|`` escaped, joined
#: by ``|`` (``encode_key``). The capture triggers write the same text to the change log.
KEY = "_key"


def key_parts(key: str | tuple[str, ...]) -> tuple[str, ...]:
    return (key,) if isinstance(key, str) else tuple(key)


def encode_key(values: Sequence[Any]) -> str:
    return "|".join(str(v).replace("\\", "\\\\").replace("|", "\\|") for v in values)


def decode_key(text: str) -> list[str]:
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "|":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    return [*parts, "".join(current)]


def key_text(table: sa.Table | sa.Alias, parts: Sequence[str]) -> sa.ColumnElement[str]:
    """``encode_key`` in SQL, over a row of ``table``: the text the triggers log."""
    texts = [sa.func.replace(sa.func.replace(sa.cast(table.c[p], sa.Text), "\\", "\\\\"), "|", "\\|")
             for p in parts]
    joined = texts[0]
    for text in texts[1:]:
        joined = joined.concat("|").concat(text)
    return joined


_WIRE_TYPES: list[tuple[type, str]] = [
    (sa.Boolean, "bool"),
    (sa.Integer, "int"),
    (sa.Float, "float"),
    (sa.JSON, "json"),
    (sa.LargeBinary, "bytes"),
    (sa.String, "str"),
    (sa.Uuid, "str"),  # declare it ``sa.Uuid(as_uuid=False)``: the wire carries its text
]


def wire_type(column: sa.Column) -> str:
    """The wire type of a column: ``info={"wire": ...}`` wins (``time``, ``money``)."""
    if "wire" in column.info:
        return column.info["wire"]
    for sa_type, name in _WIRE_TYPES:
        if isinstance(column.type, sa_type):
            return name
    raise TypeError(f"column {column} has no wire type")


@dataclass(frozen=True)
class Dataset:
    """One synced dataset: a table's columns, served to each role through its scope.

    ``key`` is a column, or a tuple of columns where the table's key is composite: the
    dataset then carries one more column, ``_key`` (:data:`KEY`), their encoded text, which
    devices key the rows by and deletes name.
    """

    name: str
    table: sa.Table
    columns: tuple[str, ...]
    scopes: Mapping[str, Scope]
    key: str | tuple[str, ...] = "id"
    priority: int = 100  # lower first in a snapshot: customers before a 100k-row catalog
    hot: bool = False  # shared by many devices: snapshot pages are pre-built (sync/hot.py)
    key_parts: tuple[str, ...] = ()  # the key's columns (set from ``key``)

    def __post_init__(self) -> None:
        parts = self.key_parts or key_parts(self.key)
        missing = [c for c in (*self.columns, *parts) if c != KEY and c not in self.table.c]
        if missing or not set(parts) <= set(self.columns):
            raise ValueError(f"dataset {self.name}: bad columns {missing or parts}")
        object.__setattr__(self, "key_parts", parts)
        if len(parts) > 1:  # frozen, so set once here: the wire key and the column carrying it
            object.__setattr__(self, "key", KEY)
            object.__setattr__(self, "columns", (*[c for c in self.columns if c != KEY], KEY))

    def sql(self, column: str) -> sa.ColumnElement[Any]:
        """The SQL of one of ``columns``: the table's column, or the composite key's text."""
        if column == KEY and len(self.key_parts) > 1:
            return key_text(self.table, self.key_parts).label(KEY)
        return self.table.c[column]

    @functools.cached_property
    def whole_row(self) -> tuple[str, ...]:
        """Every column of the table, and ``_key`` for a composite key: a row as shared reads keep it."""
        return (*self.table.c.keys(), *((KEY,) if len(self.key_parts) > 1 else ()))

    # A composite key is ordered and looked up by its columns, which the table's own key
    # index serves, never by its ``_key`` text.
    def order(self) -> list[sa.Column]:
        """The snapshot order: the key's columns."""
        return [self.table.c[p] for p in self.key_parts]

    def _parts(self, key: str) -> tuple[Any, ...]:
        return tuple(int(v) if wire_type(c) == "int" else v for c, v in zip(self.order(), decode_key(key)))

    def after(self, key: Any) -> sa.ColumnElement[bool]:
        """The rows after ``key`` (a wire key) in snapshot order."""
        if len(self.key_parts) == 1:
            return self.table.c[self.key] > key
        return sa.tuple_(*self.order()) > sa.tuple_(*(sa.literal(v) for v in self._parts(key)))

    def key_in(self, keys: Sequence[Any]) -> sa.ColumnElement[bool]:
        """The rows of these wire keys."""
        if len(self.key_parts) == 1:
            return self.table.c[self.key].in_(keys)
        parts = [self._parts(k) for k in keys]
        return sa.tuple_(*self.order()).in_([p for p in parts if len(p) == len(self.key_parts)])

    # Both are read on every pull: computed once (a dataset is immutable once declared).
    @functools.cached_property
    def types(self) -> list[str]:
        return ["str" if c == KEY and c not in self.table.c else wire_type(self.table.c[c]) for c in self.columns]

    @functools.cached_property
    def shape_hash(self) -> int:
        """Changes when columns, types, key or any scope change: such a dataset is reset."""
        scopes = sorted((role, s.partition, sorted(s.where.items()), s.window) for role, s in self.scopes.items())
        key = self.key if len(self.key_parts) == 1 else self.key_parts  # unchanged for a one-column key
        text = repr((self.table.name, self.columns, self.types, key, scopes))
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big")

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cols": list(self.columns),
            "types": self.types,
            "key": self.key,
            "priority": self.priority,
            "roles": sorted(self.scopes),
            # What the scopes filter on: worth an index in a device's local copy.
            "scope_cols": sorted({c for s in self.scopes.values() for c in (s.partition, *s.where)
                                  if c is not None and c in self.columns and c != self.key}),
        }


@dataclass(frozen=True)
class SyncedTable:
    """A table whose writes append to the change log.

    ``versioned`` fields get field-level versions (``version`` and ``field_versions``
    columns), so a device's edit made against an older version can be checked per field.
    """

    table: sa.Table
    key: str | tuple[str, ...] = "id"  # a tuple: a composite key (see Dataset)
    versioned: tuple[str, ...] = ()


Handler = Callable[[Any, dict[str, Any]], Awaitable[dict[str, Any] | None]]

MAX_ID = 2**31 - 1  # integer keys are 32-bit columns

_ARG_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "id": (int,),
    "str": (str,),
    "bool": (bool,),
    "float": (float, int),
    "list": (list,),
    "map": (dict,),
}


@dataclass(frozen=True)
class MutationSpec:
    """A mutation a device may push: its handler and its argument types (``"int"``,
    ``"str?"`` for optional, ...)."""

    name: str
    handler: Handler
    args: Mapping[str, str]
    roles: frozenset[str]
    doc: str = ""

    def check_args(self, args: Mapping[str, Any]) -> None:
        unknown = set(args) - set(self.args)
        if unknown:
            raise MutationRejected(ErrorCode.INVALID_ARGS, f"unknown argument(s): {', '.join(sorted(unknown))}")
        for name, kind in self.args.items():
            optional = kind.endswith("?")
            value = args.get(name)
            if value is None:
                if optional:
                    continue
                raise MutationRejected(ErrorCode.INVALID_ARGS, f"`{name}` is required")
            types = _ARG_TYPES[kind.rstrip("?")]
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                raise MutationRejected(ErrorCode.INVALID_ARGS, f"`{name}` must be {kind.rstrip('?')}")
            if kind.startswith("id") and not 0 < value <= MAX_ID:
                raise MutationRejected(ErrorCode.NOT_FOUND, f"`{name}` {value} names no row")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "args": dict(self.args), "roles": sorted(self.roles), "doc": self.doc}


class Registry:
    """Everything the engine serves: filled by the domain at start-up."""

    def __init__(self) -> None:
        self.tables: dict[str, SyncedTable] = {}
        self.datasets: dict[str, Dataset] = {}
        self.mutations: dict[str, MutationSpec] = {}
        self._specs: dict[str, list[BucketSpec]] = {}

    def table(self, table: sa.Table, *, key: str | tuple[str, ...] = "id", versioned: tuple[str, ...] = ()) -> None:
        self.tables[table.name] = SyncedTable(table, key, versioned)

    def after_commit_batch(self) -> contextlib.AbstractContextManager[None]:
        """Around a push group's blocking after-commit work, in its worker thread: a domain
        may make it one write (one queue transaction for all the group's jobs)."""
        return contextlib.nullcontext()

    def dataset(self, dataset: Dataset) -> None:
        if dataset.table.name not in self.tables:
            raise ValueError(f"dataset {dataset.name}: table {dataset.table.name} is not synced")
        self.datasets[dataset.name] = dataset
        self._specs.clear()

    def mutation(self, name: str, *, args: Mapping[str, str], roles: Sequence[str]) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.mutations[name] = MutationSpec(name, handler, dict(args), frozenset(roles), (handler.__doc__ or "").strip())
            return handler

        return register

    def specs_of(self, table_name: str) -> list[BucketSpec]:
        """Every bucket spec rows of this table are filed under (one per distinct scope)."""
        if table_name in self._specs:
            return self._specs[table_name]
        specs = {
            scope.spec(table_name)
            for ds in self.datasets.values()
            if ds.table.name == table_name
            for scope in ds.scopes.values()
        }
        self._specs[table_name] = sorted(specs, key=lambda s: s.prefix)
        return self._specs[table_name]

    def for_role(self, role: str) -> list[Dataset]:
        """The role's datasets in snapshot order."""
        return sorted((d for d in self.datasets.values() if role in d.scopes), key=lambda d: (d.priority, d.name))

    def describe(self) -> dict[str, Any]:
        return {
            "datasets": [d.describe() for d in sorted(self.datasets.values(), key=lambda d: (d.priority, d.name))],
            "mutations": [m.describe() for m in sorted(self.mutations.values(), key=lambda m: m.name)],
        }
