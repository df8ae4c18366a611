"""Configuration, read once from the environment (prefix ``FIELDSYNC_``) at the edge."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from sync.messages import MIN_PROTOCOL_VERSION, PROTOCOL_VERSION


def _int(env: dict[str, str], name: str, default: int, low: int = 1, high: int = 2**31 - 1) -> int:
    return int(_bounded(env, name, default, low, high, int))


def _flag(env: dict[str, str], name: str, default: bool) -> bool:
    """On/off: 1/0, true/false, yes/no, on/off; anything else is refused, not read as on."""
    raw = (env.get(f"FIELDSYNC_{name}") or "").strip().lower()
    if raw == "":
        return default
    if raw in _FLAGS:
        return _FLAGS[raw]
    raise ValueError(f"FIELDSYNC_{name}={raw!r} is not on or off (1/0, true/false, yes/no, on/off)")


_FLAGS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _bounded(env: dict[str, str], name: str, default: float, low: float, high: float, kind: type = float) -> float:
    """A limit read as ``kind`` and refused outside [low, high]: a typo such as a timeout of
    0 or a header limit of 100 bytes would take the server off the air, not protect it."""
    raw = env.get(f"FIELDSYNC_{name}")
    try:
        value = default if raw in (None, "") else kind(raw)
    except ValueError:
        raise ValueError(f"FIELDSYNC_{name}={raw!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not low <= value <= high:  # also refuses NaN
        raise ValueError(f"FIELDSYNC_{name}={raw} is outside [{low}, {high}]")
    return value


#: The bundled field-sales/POS domain, named (not imported: the server is handed its domain).
DEFAULT_DOMAIN = "server.domain.plugin:domain"

@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str | None
    jwt_secret: bytes
    jwt_public_key: str | None = None  # PEM: RS256 verification
    jwt_private_key: str | None = None  # PEM: RS256 signing (the `token` command)
    data_dir: Path = Path("var")
    max_body_bytes: int = 4 * 1024 * 1024
    max_mutations: int = 500
    pull_limit: int = 2000
    pull_max_limit: int = 10000
    token_ttl_s: int = 30 * 86400
    token_leeway_s: int = 30  # clock skew allowed on a token's exp, nbf and iat
    max_devices_per_user: int = 20  # devices a user may sync from at once (revoked and retired ones do not count)
    # Refuse tokens that name no device (`did`) on pull, push and hello: then a revoked
    # device's token is refused whatever it presents, and no token outlives its device.
    require_device_tokens: bool = False
    min_protocol: int = 1  # refuse older apps with UNSUPPORTED_VERSION
    ws_idle_timeout: float = 300.0  # close a WebSocket that sent nothing for this long
    ws_slow_timeout: float = 30.0  # close a WebSocket whose frames stay unread this long
    ws_hello_timeout: float = 10.0  # close a WebSocket with no valid hello this long after the connect
    # HTTP limits (server/http_protocol.py): a request head (request line and header fields)
    # of at most max_header_bytes and max_headers fields, complete within header_timeout of
    # the connect or of the previous response; a body complete within body_timeout of its head.
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    redis_prefix: str = "fieldsync"  # channel and key prefix: several deployments can share a Redis
    poll_interval: float = 2.0  # log polling period while Redis is unreachable; 15x it otherwise
    # The WebSocket protocol: "fieldsync" is uvicorn's sans-I/O one (no tasks per connection of
    # its own) with permessage-deflate compressing each frame once for every session it goes
    # to (server/ws_protocol.py); any of uvicorn's names ("websockets", "wsproto") also works.
    ws_impl: str = "fieldsync"
    # permessage-deflate shrinks catalog frames ~5x for devices on mobile networks.
    ws_deflate: bool = True
    # Admission (server/admission.py), per process: each device and each user has a token
    # bucket of requests (pulls, pushes, WebSocket hellos and push frames), refilled at
    # ``*_rate`` a second up to ``*_burst``; a request past it gets RATE_LIMITED. The bursts
    # hold a reconnect (a 100k-row snapshot is 50 pulls, a 1,000-order outbox 2 pushes).
    rate_limits: bool = True
    device_rate: float = 20.0
    device_burst: int = 500
    user_rate: float = 100.0
    user_burst: int = 2000
    # Snapshot pages served at once by this process; past it a pull gets UNAVAILABLE with
    # retry_after instead of waiting for a database connection behind the others.
    max_snapshots: int = 8
    snapshot_retry_after: int = 2
    metrics: bool = True  # FIELDSYNC_METRICS=0: no request metrics/access log/DB instrumentation (benchmarks)
    domain: str = DEFAULT_DOMAIN  # the server.plugin.Domain to serve: "package.module:attribute"
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def embedded(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        data_dir = Path(env.get("FIELDSYNC_DATA_DIR", "var"))
        database_url = env.get("FIELDSYNC_DATABASE_URL") or f"sqlite:///{data_dir / 'fieldsync.db'}"
        secret = env.get("FIELDSYNC_JWT_SECRET")
        return cls(
            database_url=database_url,
            redis_url=env.get("FIELDSYNC_REDIS_URL") or None,
            jwt_secret=secret.encode() if secret else _local_secret(data_dir),
            jwt_public_key=_pem(env.get("FIELDSYNC_JWT_PUBLIC_KEY")),
            jwt_private_key=_pem(env.get("FIELDSYNC_JWT_PRIVATE_KEY")),
            data_dir=data_dir,
            max_body_bytes=_int(env, "MAX_BODY_BYTES", 4 * 1024 * 1024, 4096, 1 << 30),
            max_mutations=_int(env, "MAX_MUTATIONS", 500, 1, 100_000),
            pull_limit=_int(env, "PULL_LIMIT", 2000, 1, 1_000_000),
            pull_max_limit=_int(env, "PULL_MAX_LIMIT", 10000, 1, 1_000_000),
            token_ttl_s=_int(env, "TOKEN_TTL", 30 * 86400, 60, 10 * 365 * 86400),
            token_leeway_s=_int(env, "TOKEN_LEEWAY", 30, 0, 3600),
            max_devices_per_user=_int(env, "MAX_DEVICES_PER_USER", 20, 1, 10**9),
            require_device_tokens=_flag(env, "REQUIRE_DEVICE_TOKENS", False),
            min_protocol=_int(env, "MIN_PROTOCOL", 1, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION),
            ws_idle_timeout=_bounded(env, "WS_IDLE_TIMEOUT", 300.0, 0.5, 86400),
            ws_slow_timeout=_bounded(env, "WS_SLOW_TIMEOUT", 30.0, 0.5, 3600),
            ws_hello_timeout=_bounded(env, "WS_HELLO_TIMEOUT", 10.0, 0.5, 300),
            max_header_bytes=_bounded(env, "MAX_HEADER_BYTES", 32 * 1024, 4096, 1 << 20, int),
            max_headers=_bounded(env, "MAX_HEADERS", 100, 16, 1000, int),
            header_timeout=_bounded(env, "HEADER_TIMEOUT", 10.0, 0.5, 300),
            body_timeout=_bounded(env, "BODY_TIMEOUT", 30.0, 1, 3600),
            poll_interval=_bounded(env, "POLL_INTERVAL", 2.0, 0.05, 60),
            rate_limits=_flag(env, "RATE_LIMITS", True),
            device_rate=_bounded(env, "DEVICE_RATE", 20.0, 0.01, 100_000),
            device_burst=_int(env, "DEVICE_BURST", 500, 1, 10_000_000),
            user_rate=_bounded(env, "USER_RATE", 100.0, 0.01, 1_000_000),
            user_burst=_int(env, "USER_BURST", 2000, 1, 100_000_000),
            max_snapshots=_int(env, "MAX_SNAPSHOTS", 8, 1, 100_000),
            snapshot_retry_after=_int(env, "SNAPSHOT_RETRY_AFTER", 2, 1, 300),
            redis_prefix=env.get("FIELDSYNC_REDIS_PREFIX") or "fieldsync",
            ws_impl=env.get("FIELDSYNC_WS_IMPL") or "fieldsync",
            ws_deflate=_flag(env, "WS_DEFLATE", True),
            metrics=_flag(env, "METRICS", True),
            domain=env.get("FIELDSYNC_DOMAIN") or DEFAULT_DOMAIN,
        ).validated(explicit_secret=bool(secret))

    def validated(self, *, explicit_secret: bool = True) -> Settings:
        """Refuse settings the server could start with but not serve: every client
        refused, every token forgeable, a URL no driver reads."""
        if explicit_secret and not self.jwt_public_key and len(self.jwt_secret) < 32:
            raise ValueError(f"FIELDSYNC_JWT_SECRET is {len(self.jwt_secret)} bytes; HS256 needs 32 or more "
                             "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)")
        if self.pull_limit > self.pull_max_limit:
            raise ValueError(f"FIELDSYNC_PULL_LIMIT ({self.pull_limit}) is above FIELDSYNC_PULL_MAX_LIMIT "
                             f"({self.pull_max_limit})")
        if not self.database_url.startswith(("sqlite:", "sqlite+aiosqlite:", "postgresql:", "postgresql+asyncpg:",
                                                "postgres:")):
            raise ValueError(f"FIELDSYNC_DATABASE_URL {self.database_url.split('@')[-1]!r} is neither sqlite:///path "
                             "nor postgresql://user@host/db")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("FIELDSYNC_REDIS_URL must start with redis://, rediss:// or unix://")
        if self.ws_impl not in WS_IMPLS:
            raise ValueError(f"FIELDSYNC_WS_IMPL={self.ws_impl!r} is not one of {', '.join(WS_IMPLS)}")
        return self


# server/ws_protocol.py's protocol, or one of uvicorn's by name.
WS_IMPLS = ("fieldsync", "websockets", "websockets-sansio", "wsproto", "auto")


def _pem(value: str | None) -> str | None:
    """A PEM given inline or as a path to a file."""
    if not value:
        return None
    return value if value.lstrip().startswith("-----BEGIN") else Path(value).read_text()


def _local_secret(data_dir: Path) -> bytes:
    """The embedded default's signing secret: made once, kept beside the database, so
    `fieldsync token` and `fieldsync serve` agree with no set-up. Production sets
    FIELDSYNC_JWT_SECRET (or RS256 keys)."""
    path = data_dir / "jwt-secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text().strip().encode()
