"""Error codes of protocol v1 and the engine's exception tree.

Every code is listed once here, with its meaning, its HTTP status and its WebSocket
close code; the HTTP and WebSocket edges, ``docs/protocol.md`` and the Dart enum all
follow this table.

Exception tree::

    SyncError                   a request-level failure, carries an ErrorCode
    ├── BadRequest              BAD_REQUEST / UNSUPPORTED_VERSION / PAYLOAD_TOO_LARGE, or
    │                           INVALID_ARGS (400) for an admin write naming a row outside its tenant
    ├── AuthError               AUTH_REQUIRED / AUTH_INVALID / FORBIDDEN
    ├── StorageError            UNAVAILABLE: the database failed; wraps the driver error
    └── RevokedError            REVOKED: the device or its user was switched off by an admin
    MutationRejected            one mutation refused with a mutation code (not a request failure)
"""

from __future__ import annotations

import enum


class ErrorCode(str, enum.Enum):
    """Wire error codes; ``http`` and ``close`` give the status and WebSocket close code."""

    def __new__(cls, value: str, http: int, close: int, meaning: str) -> ErrorCode:
        member = str.__new__(cls, value)
        member._value_ = value
        member.http = http
        member.close = close
        member.meaning = meaning
        return member

    # request level
    AUTH_REQUIRED = ("AUTH_REQUIRED", 401, 4401, "No bearer token was sent.")
    AUTH_INVALID = ("AUTH_INVALID", 401, 4401, "The token is malformed, forged, expired or names an unknown user.")
    FORBIDDEN = ("FORBIDDEN", 403, 4403, "The token is valid but its role may not do this, or the row belongs to someone else.")
    BAD_REQUEST = ("BAD_REQUEST", 400, 4400, "The body is not msgpack, or a field is missing or of the wrong type.")
    UNSUPPORTED_VERSION = ("UNSUPPORTED_VERSION", 400, 4426, "The protocol version `v` is not served here; upgrade the app.")
    PAYLOAD_TOO_LARGE = ("PAYLOAD_TOO_LARGE", 413, 1009, "The body or frame exceeds the size limit, or a push has too many mutations.")
    RATE_LIMITED = ("RATE_LIMITED", 429, 4429, "Too many requests; retry after `retry_after` seconds.")
    UNAVAILABLE = ("UNAVAILABLE", 503, 1013, "A backend is unreachable; retry after `retry_after` seconds. Nothing was changed.")
    INTERNAL = ("INTERNAL", 500, 1011, "A server fault; it is logged with the request id, and the request changed nothing.")
    REVOKED = ("REVOKED", 403, 4410, "This device was revoked or its user deactivated; re-enrol to sync again.")
    IDLE_TIMEOUT = ("IDLE_TIMEOUT", 408, 4408, "WebSocket only: no frame from the device within the idle timeout.")
    SLOW_CLIENT = ("SLOW_CLIENT", 503, 4409, "WebSocket only: the device did not read its frames in time; reconnect and catch up.")
    # mutation level (only inside push results)
    UNKNOWN_MUTATION = ("UNKNOWN_MUTATION", 200, 0, "No mutation of that name exists.")
    INVALID_ARGS = ("INVALID_ARGS", 200, 0, "The mutation's arguments are missing or of the wrong type.")
    NOT_FOUND = ("NOT_FOUND", 200, 0, "A row the mutation refers to does not exist (or is not visible to this user).")
    CREDIT_LIMIT_EXCEEDED = ("CREDIT_LIMIT_EXCEEDED", 200, 0, "The order would take the customer's balance over their credit limit.")
    INSUFFICIENT_STOCK = ("INSUFFICIENT_STOCK", 200, 0, "Not enough unreserved stock for an order line.")
    PRICE_CHANGED = ("PRICE_CHANGED", 200, 0, "The price the device used is not the price valid when the order was taken.")
    CONFLICT = ("CONFLICT", 200, 0, "The row changed on the server since the device's base version, or the mutation id is out of order.")


class SyncError(Exception):
    """A request-level failure: the request changed nothing."""

    def __init__(self, code: ErrorCode, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after
        # A mutation code (status 200 inside push results) refusing a whole request is a 400.
        self.status = code.http if code.http >= 400 else 400

    def to_wire(self) -> dict:
        body: dict = {"code": self.code.value, "message": self.message}
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        return body


class BadRequest(SyncError):
    def __init__(self, message: str, code: ErrorCode = ErrorCode.BAD_REQUEST) -> None:
        super().__init__(code, message)


class AuthError(SyncError):
    pass


class StorageError(SyncError):
    """The database failed; raised ``from`` the driver error so the cause is logged."""

    def __init__(self, message: str = "the database is unavailable") -> None:
        super().__init__(ErrorCode.UNAVAILABLE, message, retry_after=2)


class RevokedError(SyncError):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.REVOKED, message)


class MutationRejected(Exception):
    """Raised by a mutation handler to refuse it; the refusal is final and recorded."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
