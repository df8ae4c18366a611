/// Error codes of protocol v1, mirroring `sync/errors.py` (the one table the
/// server, docs/protocol.md and this enum follow), and the exceptions the
/// client throws.
library;

/// Whether a code ends a whole request or refuses one mutation of a push.
enum ErrorLevel { request, mutation }

/// A wire error code with its HTTP status, WebSocket close code and meaning.
///
/// Keep in the order and with the values of `ErrorCode` in sync/errors.py;
/// test/messages_test.dart checks them against that file.
enum ErrorCode {
  // request level
  authRequired('AUTH_REQUIRED', 401, 4401, 'No bearer token was sent.'),
  authInvalid('AUTH_INVALID', 401, 4401,
      'The token is malformed, forged, expired or names an unknown user.'),
  forbidden('FORBIDDEN', 403, 4403,
      'The token is valid but its role may not do this, or the row belongs to someone else.'),
  badRequest('BAD_REQUEST', 400, 4400,
      'The body is not msgpack, or a field is missing or of the wrong type.'),
  unsupportedVersion('UNSUPPORTED_VERSION', 400, 4426,
      'The protocol version `v` is not served here; upgrade the app.'),
  payloadTooLarge('PAYLOAD_TOO_LARGE', 413, 1009,
      'The body or frame exceeds the size limit, or a push has too many mutations.'),
  rateLimited('RATE_LIMITED', 429, 4429,
      'Too many requests; retry after `retry_after` seconds.'),
  unavailable('UNAVAILABLE', 503, 1013,
      'A backend is unreachable; retry after `retry_after` seconds. Nothing was changed.'),
  internal('INTERNAL', 500, 1011,
      'A server fault; it is logged with the request id, and the request changed nothing.'),
  revoked('REVOKED', 403, 4410,
      'This device was revoked or its user deactivated; re-enrol to sync again.'),
  idleTimeout('IDLE_TIMEOUT', 408, 4408,
      'WebSocket only: no frame from the device within the idle timeout.'),
  slowClient('SLOW_CLIENT', 503, 4409,
      'WebSocket only: the device did not read its frames in time; reconnect and catch up.'),
  // mutation level (only inside push results)
  unknownMutation('UNKNOWN_MUTATION', 200, 0, 'No mutation of that name exists.'),
  invalidArgs('INVALID_ARGS', 200, 0,
      "The mutation's arguments are missing or of the wrong type."),
  notFound('NOT_FOUND', 200, 0,
      'A row the mutation refers to does not exist (or is not visible to this user).'),
  creditLimitExceeded('CREDIT_LIMIT_EXCEEDED', 200, 0,
      "The order would take the customer's balance over their credit limit."),
  insufficientStock('INSUFFICIENT_STOCK', 200, 0,
      'Not enough unreserved stock for an order line.'),
  priceChanged('PRICE_CHANGED', 200, 0,
      'The price the device used is not the price valid when the order was taken.'),
  conflict('CONFLICT', 200, 0,
      "The row changed on the server since the device's base version, or the mutation id is out of order.");

  const ErrorCode(this.wire, this.http, this.close, this.meaning);

  /// The string on the wire, e.g. `CREDIT_LIMIT_EXCEEDED`.
  final String wire;

  /// HTTP status of a request that failed with this code (200: mutation level).
  final int http;

  /// WebSocket close code (0: never closes a socket).
  final int close;

  /// What it means, as in sync/errors.py.
  final String meaning;

  ErrorLevel get level => close == 0 ? ErrorLevel.mutation : ErrorLevel.request;

  /// Retrying the same request later may succeed (after `retry_after` if given).
  bool get isTransient =>
      this == rateLimited ||
      this == unavailable ||
      this == internal ||
      this == idleTimeout ||
      this == slowClient;

  /// Reconnecting cannot help until the user or the app does something
  /// (sign in again, re-enrol, upgrade).
  bool get needsUser =>
      this == authRequired || this == authInvalid || this == revoked || this == unsupportedVersion;

  static final Map<String, ErrorCode> _byWire = {for (final c in values) c.wire: c};

  /// The code for a wire string, or null for a code this client does not know
  /// (a newer server): callers keep the raw string then.
  static ErrorCode? fromWire(String? wire) => _byWire[wire];

  /// The request-level code a WebSocket close code stands for (the first one
  /// in table order when several share it, e.g. 4401), or null.
  static ErrorCode? fromClose(int? close) {
    if (close == null || close == 0) return null;
    for (final c in values) {
      if (c.close == close) return c;
    }
    return null;
  }
}

/// A message from the server (or for it) that does not have the shape of
/// protocol v1: a bug on one side, never a network condition.
class ProtocolException implements Exception {
  ProtocolException(this.message);
  final String message;
  @override
  String toString() => 'ProtocolException: $message';
}

/// The network failed (refused, reset, timed out, DNS): retry later with the
/// same request; nothing is known about whether the server acted on it.
class TransportException implements Exception {
  TransportException(this.message, [this.cause]);
  final String message;
  final Object? cause;
  @override
  String toString() => 'TransportException: $message${cause == null ? '' : ' ($cause)'}';
}

/// The server answered with an error body `{error: {code, message}}` (HTTP),
/// an `error` frame, or closed the socket with an error close code.
class SyncServerException implements Exception {
  SyncServerException(this.codeName, this.message, {this.status, this.retryAfter, this.closeCode});

  /// The code as sent (kept even when this client does not know it).
  final String codeName;
  final String message;

  /// HTTP status, when the error came over HTTP.
  final int? status;

  /// Seconds to wait before retrying (`retry_after`), when the server said so.
  final int? retryAfter;

  /// WebSocket close code, when the error closed a socket.
  final int? closeCode;

  ErrorCode? get code => ErrorCode.fromWire(codeName);

  @override
  String toString() => 'SyncServerException: ${status ?? closeCode ?? ''} $codeName: $message'
      '${retryAfter == null ? '' : ' (retry after ${retryAfter}s)'}';
}
