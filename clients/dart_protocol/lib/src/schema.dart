/// The server's `GET /sync/schema` as types, and how a dataset becomes a
/// SQLite table: column affinities per wire type, the key, the indexes, and
/// the value conversions both ways. Web-safe (no `dart:io`).
library;

import 'dart:convert';
import 'dart:typed_data';

import 'errors.dart';

/// One dataset as `/sync/schema` describes it.
class DatasetSchema {
  DatasetSchema(
      {required this.name, required this.cols, required this.types, required this.key, this.priority = 0, this.scopeCols})
      : assert(cols.length == types.length);

  final String name;
  final List<String> cols;

  /// Wire types, one per column: int str bool float json bytes time money
  /// (`any` when the store had to infer a column it was never told about).
  final List<String> types;
  final String key;
  final int priority;

  /// The columns the server's scopes filter on (`scope_cols`), indexed locally;
  /// null from a server that does not send them.
  final List<String>? scopeCols;

  String typeOf(String col) {
    final i = cols.indexOf(col);
    return i < 0 ? 'any' : types[i];
  }

  Map<String, Object?> toMsgpack() => {
        'name': name, 'cols': cols, 'types': types, 'key': key, 'priority': priority,
        if (scopeCols != null) 'scope_cols': scopeCols,
      };

  static DatasetSchema fromMsgpack(Object? value) {
    if (value is! Map) throw ProtocolException('schema dataset: expected a map, got $value');
    final cols = value['cols'], types = value['types'], name = value['name'], key = value['key'];
    if (name is! String || key is! String || cols is! List || types is! List || cols.length != types.length) {
      throw ProtocolException('schema dataset: bad shape $value');
    }
    return DatasetSchema(
        name: name,
        cols: cols.cast<String>().toList(growable: false),
        types: types.cast<String>().toList(growable: false),
        key: key,
        priority: value['priority'] is int ? value['priority'] as int : 0,
        scopeCols: value['scope_cols'] is List
            ? (value['scope_cols'] as List).whereType<String>().where(cols.contains).toList(growable: false)
            : null);
  }

  /// The shape for a batch whose cols this schema does not match (a reset
  /// that came before the app refetched the schema): types guessed from the
  /// first row, `any` for nils.
  static DatasetSchema infer(String name, List<String> cols, List<List<Object?>> rows, {String key = 'id'}) {
    String typeOf(Object? v) => switch (v) {
          bool() => 'bool',
          int() => 'int',
          double() => 'float',
          String() => 'str',
          Uint8List() => 'bytes',
          List() || Map() => 'json',
          _ => 'any',
        };
    final first = rows.isEmpty ? null : rows.first;
    return DatasetSchema(
        name: name, cols: cols, types: [for (var i = 0; i < cols.length; i++) typeOf(first?[i])], key: key);
  }

  /// Same columns, types and key: the table can stay as it is.
  bool sameShape(DatasetSchema other) =>
      key == other.key && _eq(cols, other.cols) && _eq(types, other.types);

  static bool _eq(List<String> a, List<String> b) {
    if (a.length != b.length) return false;
    for (var i = 0; i < a.length; i++) {
      if (a[i] != b[i]) return false;
    }
    return true;
  }

  // --- SQL ---------------------------------------------------------------------

  static String affinity(String type) => switch (type) {
        'int' || 'time' || 'money' || 'bool' => 'INTEGER',
        'float' => 'REAL',
        'str' || 'json' => 'TEXT',
        'bytes' => 'BLOB',
        _ => '', // no affinity: the value is stored as it comes
      };

  /// CREATE TABLE plus one index per scope column ([scopeCols]); from a server
  /// that does not name them, one per `*_id` column (customer_id, branch_id…),
  /// which apps also join and filter on.
  List<String> ddl() {
    final defs = [
      for (var i = 0; i < cols.length; i++)
        '${quote(cols[i])} ${affinity(types[i])}${cols[i] == key ? ' PRIMARY KEY' : ''}'.trimRight()
    ];
    return [
      'CREATE TABLE ${quote(name)} (${defs.join(', ')})',
      for (final c in scopeCols ?? cols.where((c) => c.endsWith('_id')))
        if (c != key) 'CREATE INDEX ${quote('${name}__$c')} ON ${quote(name)} (${quote(c)})',
    ];
  }

  /// A wire value as stored: json as JSON text, bool as 0/1.
  static Object? toSql(String type, Object? v) {
    if (v == null) return null;
    if (type == 'json' || v is List && v is! Uint8List || v is Map) return jsonEncode(v);
    if (v is bool) return v ? 1 : 0;
    return v;
  }

  /// A stored value back as the wire value.
  static Object? fromSql(String type, Object? v) {
    if (v == null) return null;
    return switch (type) {
      'json' => v is String ? jsonDecode(v) : v,
      'bool' => v is int ? v != 0 : v,
      'float' => v is int ? v.toDouble() : v,
      _ => v,
    };
  }
}

/// Double-quoted SQL identifier (dataset and column names come from the
/// server; never paste them bare).
String quote(String identifier) => '"${identifier.replaceAll('"', '""')}"';

/// `GET /sync/schema`: every dataset (all roles) and the mutations.
class SyncSchema {
  SyncSchema(this.datasets, {this.mutations = const []});

  final Map<String, DatasetSchema> datasets;
  final List<Map<String, Object?>> mutations;

  static SyncSchema fromMsgpack(Object? value) {
    if (value is! Map || value['datasets'] is! List) throw ProtocolException('schema: no datasets list');
    final list = [for (final d in value['datasets'] as List) DatasetSchema.fromMsgpack(d)];
    final muts = value['mutations'];
    return SyncSchema({for (final d in list) d.name: d},
        mutations: muts is List ? [for (final m in muts) if (m is Map) m.cast<String, Object?>()] : const []);
  }

  Map<String, Object?> toMsgpack() => {
        'datasets': [for (final d in datasets.values) d.toMsgpack()],
        'mutations': mutations,
      };
}
