/// The messages of protocol v1 (docs/protocol.md; mirrors sync/messages.py):
/// HTTP pull and push bodies, error bodies and the WebSocket frames.
///
/// `toMsgpack()` gives the map to encode, with keys in the order the server
/// writes them (so bytes match tests/vectors/ exactly); `fromMsgpack(value)`
/// takes a decoded value, checks its shape and throws a [ProtocolException]
/// naming the offending field.
library;

import 'dart:typed_data';

import 'errors.dart';
import 'msgpack.dart';

part 'frames.dart';

const int protocolVersion = 1;

/// Integers on the wire stay within ±(2^53 − 1) (Dart on the web).
const int maxSafeInt = 9007199254740991;

/// Deepest nesting the server accepts in a value (sync/wire.py MAX_DEPTH).
const int maxWireDepth = 32;

/// Throws a [ProtocolException] for what protocol v1 rules out even where
/// msgpack allows it (sync/wire.py `check_values`): ints beyond ±(2^53 − 1),
/// NaN and infinities, U+0000 in strings, non-string map keys, nesting deeper
/// than [maxWireDepth], and types msgpack cannot carry.
void checkWireValue(Object? value, [String where = 'value', int depth = 0]) {
  if (depth > maxWireDepth) throw ProtocolException('$where nests deeper than $maxWireDepth levels');
  if (value == null || value is bool || value is Uint8List) return;
  if (value is int) {
    if (value > maxSafeInt || value < -maxSafeInt) {
      throw ProtocolException('$where: integer $value is outside ±(2^53-1); send large ids as strings');
    }
  } else if (value is double) {
    if (value.isNaN || value.isInfinite) throw ProtocolException('$where: NaN and infinities are not allowed');
  } else if (value is String) {
    if (value.contains('\u0000')) throw ProtocolException('$where: strings may not contain U+0000');
  } else if (value is Map) {
    value.forEach((k, v) {
      if (k is! String) throw ProtocolException('$where: map keys must be strings, got ${_kind(k)}');
      checkWireValue(k, where, depth + 1);
      checkWireValue(v, '$where.$k', depth + 1);
    });
  } else if (value is List) {
    for (var i = 0; i < value.length; i++) {
      checkWireValue(value[i], '$where[$i]', depth + 1);
    }
  } else {
    throw ProtocolException('$where: ${value.runtimeType} cannot travel in msgpack');
  }
}

// --- shape helpers ------------------------------------------------------------

String _kind(Object? v) => switch (v) {
      null => 'nil',
      bool() => 'bool',
      int() => 'int',
      double() => 'float',
      String() => 'str',
      Uint8List() => 'bin',
      List() => 'array',
      Map() => 'map',
      _ => v.runtimeType.toString(),
    };

Map<String, Object?> _map(Object? v, String what) {
  if (v is Map<String, Object?>) return v;
  if (v is Map && v.keys.every((k) => k is String)) return v.cast<String, Object?>();
  throw ProtocolException('$what must be a map with string keys, got ${_kind(v)}');
}

T _req<T>(Map<String, Object?> m, String key, String what, String type) {
  if (!m.containsKey(key)) throw ProtocolException('$what needs `$key`');
  return _opt<T>(m, key, what, type) ?? (throw ProtocolException('`$key` in $what must be $type, got nil'));
}

T? _opt<T>(Map<String, Object?> m, String key, String what, String type) {
  final v = m[key];
  // A bin is a List<int> in Dart: it never stands for an array.
  if (v == null || (v is T && !(v is Uint8List && T == List<Object?>))) return v as T?;
  throw ProtocolException('`$key` in $what must be $type, got ${_kind(v)}');
}

List<String> _strings(Map<String, Object?> m, String key, String what) {
  final raw = _req<List<Object?>>(m, key, what, 'an array');
  for (final s in raw) {
    if (s is! String) throw ProtocolException('`$key` in $what must hold strings, got ${_kind(s)}');
  }
  return raw.cast<String>();
}

void _version(Map<String, Object?> m, String what) {
  final v = _req<int>(m, 'v', what, 'an int');
  if (v != protocolVersion) {
    throw ProtocolException('$what speaks protocol v$v; this client speaks v$protocolVersion');
  }
}

// --- pull -------------------------------------------------------------------------

class PullRequest {
  const PullRequest({required this.clientId, this.cursor, this.limit});

  final String clientId;
  final Uint8List? cursor;
  final int? limit;

  Map<String, Object?> toMsgpack() =>
      {'v': protocolVersion, 'client_id': clientId, 'cursor': cursor, if (limit != null) 'limit': limit};

  static PullRequest fromMsgpack(Object? value) {
    final m = _map(value, 'pull request');
    _version(m, 'pull request');
    final limit = _opt<int>(m, 'limit', 'pull request', 'a positive int');
    if (limit != null && limit < 1) throw ProtocolException('`limit` must be a positive int');
    return PullRequest(
        clientId: _clientId(m, 'pull request'),
        cursor: _opt<Uint8List>(m, 'cursor', 'pull request', 'bin or nil'),
        limit: limit);
  }
}

String _clientId(Map<String, Object?> m, String what) {
  final id = _req<String>(m, 'client_id', what, 'a str');
  if (id.isEmpty || id.length > 128) throw ProtocolException('`client_id` must be 1 to 128 characters');
  return id;
}

/// One dataset's part of a batch: rows are arrays against [cols].
class DatasetBatch {
  DatasetBatch({required this.cols, required this.rows, required this.deletes});

  final List<String> cols;
  final List<List<Object?>> rows;
  final List<Object?> deletes;

  int get size => rows.length + deletes.length;

  Map<String, Object?> toMsgpack() => {'cols': cols, 'rows': rows, 'deletes': deletes};

  static DatasetBatch fromMsgpack(Object? value, [String name = '?']) {
    final what = 'dataset $name';
    final m = _map(value, what);
    final cols = _strings(m, 'cols', what);
    final raw = _req<List<Object?>>(m, 'rows', what, 'an array');
    final width = cols.length;
    final rows = List<List<Object?>>.generate(raw.length, (i) {
      final row = raw[i];
      if (row is List<Object?> && row.length == width && row is! Uint8List) return row;
      throw ProtocolException('row $i of $what must be an array of ${cols.length} values, got '
          '${row is List ? '${row.length} values' : _kind(row)}');
    }, growable: false);
    return DatasetBatch(cols: cols, rows: rows, deletes: _req<List<Object?>>(m, 'deletes', what, 'an array'));
  }
}

/// A batch of changes: a pull response, or the body of a `changes` frame.
class PullResponse {
  PullResponse(
      {required this.cursor, required this.more, this.reset = const [], this.data = const {}, this.expected = const {}});

  final Uint8List cursor;

  /// true: pull again now; false: a consistent checkpoint.
  final bool more;

  /// Datasets to clear before applying [data].
  final List<String> reset;
  final Map<String, DatasetBatch> data;

  /// With a reset: the rows each snapshot begun here holds (for progress).
  final Map<String, int> expected;

  /// Rows plus deletes in this batch.
  int get size => data.values.fold(0, (n, d) => n + d.size);

  Map<String, Object?> _fields() => {
        'cursor': cursor,
        'more': more,
        'reset': reset,
        if (expected.isNotEmpty) 'expected': expected,
        'data': {for (final e in data.entries) e.key: e.value.toMsgpack()},
      };

  Map<String, Object?> toMsgpack() => {'v': protocolVersion, ..._fields()};

  static PullResponse fromMsgpack(Object? value) {
    final m = _map(value, 'pull response');
    _version(m, 'pull response');
    return _batch(m, 'pull response');
  }

  static PullResponse _batch(Map<String, Object?> m, String what) {
    final data = _map(_req<Map<Object?, Object?>>(m, 'data', what, 'a map'), '`data` of $what');
    return PullResponse(
      cursor: _req<Uint8List>(m, 'cursor', what, 'bin'),
      more: _req<bool>(m, 'more', what, 'a bool'),
      reset: _strings(m, 'reset', what),
      data: {for (final e in data.entries) e.key: DatasetBatch.fromMsgpack(e.value, e.key)},
      expected: _expected(m['expected'], what),
    );
  }
}

Map<String, int> _expected(Object? value, String what) {
  if (value == null) return const {};
  if (value is! Map || value.entries.any((e) => e.key is! String || e.value is! int)) {
    throw ProtocolException('`expected` of $what must map dataset names to ints');
  }
  return {for (final e in value.entries) e.key as String: e.value as int};
}

// --- push --------------------------------------------------------------------------

/// One outbox entry on the wire. [id]s strictly increase per client.
class Mutation {
  Mutation({required this.id, required this.name, required this.args, required this.at});

  final int id;
  final String name;
  final Map<String, Object?> args;

  /// When the user did it (ms since the epoch, UTC).
  final int at;

  Map<String, Object?> toMsgpack() => {'id': id, 'name': name, 'args': args, 'at': at};

  static Mutation fromMsgpack(Object? value) {
    final m = _map(value, 'mutation');
    final id = _req<int>(m, 'id', 'mutation', 'an int');
    if (id < 1 || id > maxSafeInt) throw ProtocolException('mutation `id` must be a positive int below 2^53');
    return Mutation(
        id: id,
        name: _req<String>(m, 'name', 'mutation', 'a str'),
        args: _map(_req<Map<Object?, Object?>>(m, 'args', 'mutation', 'a map'), '`args` of mutation'),
        at: _req<int>(m, 'at', 'mutation', 'an int'));
  }
}

List<Mutation> _mutations(Map<String, Object?> m, String what) {
  final list = [for (final x in _req<List<Object?>>(m, 'mutations', what, 'an array')) Mutation.fromMsgpack(x)];
  for (var i = 1; i < list.length; i++) {
    if (list[i].id <= list[i - 1].id) throw ProtocolException('mutation ids must strictly increase in $what');
  }
  return list;
}

class PushRequest {
  PushRequest({required this.clientId, required this.mutations});

  final String clientId;
  final List<Mutation> mutations;

  Map<String, Object?> toMsgpack() => {
        'v': protocolVersion,
        'client_id': clientId,
        'mutations': [for (final x in mutations) x.toMsgpack()],
      };

  static PushRequest fromMsgpack(Object? value) {
    final m = _map(value, 'push request');
    _version(m, 'push request');
    return PushRequest(clientId: _clientId(m, 'push request'), mutations: _mutations(m, 'push request'));
  }
}

enum MutationStatus { applied, rejected }

/// The outcome of one mutation. A rejection is final; [code] is kept as sent
/// (see [errorCode] for the enum, null when this client does not know it).
class MutationResult {
  MutationResult({required this.id, required this.status, this.code, this.message, this.result});

  final int id;
  final MutationStatus status;
  final String? code;
  final String? message;
  final Map<String, Object?>? result;

  bool get applied => status == MutationStatus.applied;
  ErrorCode? get errorCode => ErrorCode.fromWire(code);

  Map<String, Object?> toMsgpack() => {
        'id': id,
        'status': status.name,
        if (code != null) 'code': code,
        if (code != null || message != null) 'message': message ?? '',
        if (result != null) 'result': result,
      };

  static MutationResult fromMsgpack(Object? value) {
    const what = 'mutation result';
    final m = _map(value, what);
    final status = switch (_req<String>(m, 'status', what, 'a str')) {
      'applied' => MutationStatus.applied,
      'rejected' => MutationStatus.rejected,
      final s => throw ProtocolException('`status` of $what must be applied or rejected, got $s'),
    };
    final code = _opt<String>(m, 'code', what, 'a str');
    if (status == MutationStatus.rejected && code == null) throw ProtocolException('a rejected $what needs `code`');
    final result = _opt<Map<Object?, Object?>>(m, 'result', what, 'a map');
    return MutationResult(
        id: _req<int>(m, 'id', what, 'an int'),
        status: status,
        code: code,
        message: _opt<String>(m, 'message', what, 'a str'),
        result: result == null ? null : _map(result, '`result` of $what'));
  }

  @override
  String toString() => 'MutationResult($id ${status.name}${code == null ? '' : ' $code: $message'}'
      '${result == null ? '' : ' $result'})';
}

List<MutationResult> _results(Map<String, Object?> m, String what) =>
    [for (final x in _req<List<Object?>>(m, 'results', what, 'an array')) MutationResult.fromMsgpack(x)];

class PushResponse {
  PushResponse(this.results);

  final List<MutationResult> results;

  Map<String, Object?> toMsgpack() =>
      {'v': protocolVersion, 'results': [for (final r in results) r.toMsgpack()]};

  static PushResponse fromMsgpack(Object? value) {
    final m = _map(value, 'push response');
    _version(m, 'push response');
    return PushResponse(_results(m, 'push response'));
  }
}

/// `{error: {code, message, retry_after?}}`, the body of every HTTP error.
class ErrorBody {
  ErrorBody(this.code, this.message, {this.retryAfter});

  final String code;
  final String message;
  final int? retryAfter;

  Map<String, Object?> toMsgpack() => {
        'error': {'code': code, 'message': message, if (retryAfter != null) 'retry_after': retryAfter}
      };

  SyncServerException toException({int? status}) =>
      SyncServerException(code, message, status: status, retryAfter: retryAfter);

  static ErrorBody fromMsgpack(Object? value) {
    final e = _map(_req<Map<Object?, Object?>>(_map(value, 'error body'), 'error', 'error body', 'a map'),
        '`error` of error body');
    return ErrorBody(_req<String>(e, 'code', 'error', 'a str'), _opt<String>(e, 'message', 'error', 'a str') ?? '',
        retryAfter: _opt<int>(e, 'retry_after', 'error', 'an int'));
  }
}
