"""Message shapes of protocol v1 and their validation.

Every request body that enters the engine is checked here, so handlers deal only in
well-typed values; anything else is a BAD_REQUEST that changed nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypedDict

from .errors import BadRequest, ErrorCode
from .wire import MAX_SAFE_INT

PROTOCOL_VERSION = 1
MIN_PROTOCOL_VERSION = 1


class DatasetBatch(TypedDict):
    cols: list[str]
    rows: list[list[Any]]
    deletes: list[Any]


class _PullResponse(TypedDict):
    v: int
    cursor: bytes
    more: bool
    reset: list[str]
    data: dict[str, DatasetBatch]


class PullResponse(_PullResponse, total=False):
    # Rows of each dataset snapshot begun in this batch, counted as it began: the denominator
    # of a download progress bar. Sent only with a reset.
    expected: dict[str, int]


class MutationResult(TypedDict, total=False):
    id: int
    status: str  # "applied" | "rejected"
    code: str
    message: str
    result: dict


class PushResponse(TypedDict):
    v: int
    results: list[MutationResult]


@dataclass(frozen=True)
class PullRequest:
    client_id: str
    cursor: bytes | None
    limit: int | None
    app: str | None = None  # the app's name and version, for the device list


@dataclass(frozen=True)
class Mutation:
    id: int
    name: str
    args: dict[str, Any]
    at: int


@dataclass(frozen=True)
class PushRequest:
    client_id: str
    mutations: list[Mutation]


def _require(body: Any, key: str, kind: type | tuple[type, ...], where: str = "body") -> Any:
    if not isinstance(body, dict) or key not in body:
        raise BadRequest(f"{where} needs `{key}`")
    value = body[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise BadRequest(f"`{key}` in {where} has the wrong type")
    return value


def check_version(body: Any, minimum: int = MIN_PROTOCOL_VERSION) -> None:
    """Raises UNSUPPORTED_VERSION outside ``minimum..PROTOCOL_VERSION`` (a server may
    require a newer client than the protocol's first version)."""
    if not isinstance(body, dict):
        raise BadRequest("body must be a msgpack map")
    version = _require(body, "v", int)
    if not minimum <= version <= PROTOCOL_VERSION:
        raise BadRequest(
            f"protocol version {version} is not supported; this server speaks "
            f"{minimum}..{PROTOCOL_VERSION}: update the app",
            ErrorCode.UNSUPPORTED_VERSION,
        )


def client_id_of(body: dict) -> str:
    client_id = _require(body, "client_id", str)
    if not 1 <= len(client_id) <= 128:
        raise BadRequest("`client_id` must be 1 to 128 characters")
    return client_id  # NUL is refused by wire.check_values already; msgpack carries no lone surrogate


def app_of(body: dict) -> str | None:
    """The optional ``app`` of a pull or hello: what the app says it is ("shop 2.4.1 (android)")."""
    app = body.get("app")
    if app is None:
        return None
    if not isinstance(app, str) or not 1 <= len(app) <= 64:
        raise BadRequest("`app` must be a string of 1 to 64 characters")
    return check_text(app, "`app`")


def check_text(value: str, what: str) -> str:
    """``value`` if both databases store it as given: PostgreSQL refuses NUL in text, and a
    lone surrogate (JSON's ``"\\ud800"``; msgpack cannot carry one) has no UTF-8 encoding."""
    if "\x00" in value:
        raise BadRequest(f"{what} may not contain the NUL character (\\u0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{what} contains a lone surrogate (\\ud800-\\udfff): not valid Unicode") from None
    return value


def parse_pull(body: Any, minimum: int = MIN_PROTOCOL_VERSION) -> PullRequest:
    check_version(body, minimum)
    cursor = body.get("cursor")
    if cursor is not None and not isinstance(cursor, bytes):
        raise BadRequest("`cursor` must be bin or nil")
    limit = body.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise BadRequest("`limit` must be a positive integer")
    return PullRequest(client_id_of(body), cursor, limit, app_of(body))


def parse_mutations(raw: Any, *, max_mutations: int) -> list[Mutation]:
    if not isinstance(raw, list):
        raise BadRequest("`mutations` must be an array")
    if len(raw) > max_mutations:
        raise BadRequest(
            f"a push holds at most {max_mutations} mutations, got {len(raw)}", ErrorCode.PAYLOAD_TOO_LARGE
        )
    mutations: list[Mutation] = []
    for item in raw:
        mutation_id = _require(item, "id", int, "mutation")
        if not 0 < mutation_id <= MAX_SAFE_INT:
            raise BadRequest("mutation `id` must be a positive integer below 2^53")
        if mutations and mutation_id <= mutations[-1].id:
            raise BadRequest("mutation ids must strictly increase within a push")
        mutations.append(
            Mutation(
                id=mutation_id,
                name=_require(item, "name", str, "mutation"),
                args=_require(item, "args", dict, "mutation"),
                at=_require(item, "at", int, "mutation"),
            )
        )
    return mutations


def parse_push(body: Any, *, max_mutations: int, minimum: int = MIN_PROTOCOL_VERSION) -> PushRequest:
    check_version(body, minimum)
    return PushRequest(client_id_of(body), parse_mutations(body.get("mutations"), max_mutations=max_mutations))
