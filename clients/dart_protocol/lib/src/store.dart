/// The device side of the data: a [LocalStore] holding the datasets and the
/// cursor, and an [Outbox] of mutations waiting for the server. Both are
/// interfaces; [MemoryStore] and [MemoryOutbox] are in-memory versions for
/// tests, and example/sqflite_store.dart is a SQLite one for Flutter apps.
library;

import 'dart:typed_data';

import 'errors.dart';
import 'messages.dart';

// --- keys ---------------------------------------------------------------------------

/// The key of a row with a composite key (several key columns), and of a
/// composite delete key sent as an array; equal when the parts are equal.
class RowKey {
  RowKey(List<Object?> parts) : parts = List.unmodifiable(parts);
  final List<Object?> parts;

  @override
  bool operator ==(Object other) {
    if (other is! RowKey || other.parts.length != parts.length) return false;
    for (var i = 0; i < parts.length; i++) {
      if (normalizeKey(other.parts[i]) != normalizeKey(parts[i])) return false;
    }
    return true;
  }

  @override
  int get hashCode => Object.hashAll(parts.map(normalizeKey));

  @override
  String toString() => parts.join('|');
}

/// A wire key made usable as a map key: arrays (and bin) become [RowKey]s.
Object? normalizeKey(Object? key) => key is List ? RowKey(key) : key;

/// Which columns form each dataset's key: `id` unless told otherwise.
class KeyColumns {
  /// [keys]: dataset → column name, or list of column names for a composite key.
  KeyColumns([Map<String, Object> keys = const {}])
      : _keys = {
          for (final e in keys.entries)
            e.key: switch (e.value) {
              final String c => [c],
              final List<String> cs when cs.isNotEmpty => cs,
              _ => throw ArgumentError.value(e.value, 'keys[${e.key}]', 'a column or a list of columns'),
            }
        };

  final Map<String, List<String>> _keys;

  List<String> of(String dataset) => _keys[dataset] ?? const ['id'];
}

// --- one batch, checked ------------------------------------------------------

/// What applying one batch changed in one dataset; emitted after the commit.
class DatasetChange {
  DatasetChange(this.dataset, {required this.reset, required this.upserted, required this.deleted});

  final String dataset;

  /// The dataset was cleared first (a snapshot starts, or a schema change).
  final bool reset;

  /// Keys of upserted rows ([RowKey] for composite keys).
  final List<Object?> upserted;

  /// Keys of deleted rows.
  final List<Object?> deleted;

  @override
  String toString() => 'DatasetChange($dataset${reset ? ', reset' : ''}, '
      '${upserted.length} upserted, ${deleted.length} deleted)';
}

/// One dataset of a batch, checked and with its keys worked out: what a
/// store writes inside its transaction.
class PreparedDataset {
  PreparedDataset(this.name, this.reset, this.cols, this.keys, this.rows, this.deletes);

  final String name;
  final bool reset;
  final List<String> cols;

  /// keys[i] is the key of rows[i].
  final List<Object?> keys;
  final List<List<Object?>> rows;
  final List<Object?> deletes;

  DatasetChange get change => DatasetChange(name, reset: reset, upserted: keys, deleted: deletes);
}

/// Checks a batch before anything is written (so a bad batch changes
/// nothing): every dataset's cols hold its key columns, and a key appears at
/// most once per dataset (never both upserted and deleted). Throws a
/// [ProtocolException] otherwise. Datasets come out in the batch's order,
/// reset-only datasets first.
List<PreparedDataset> prepareBatch(PullResponse batch, KeyColumns keyColumns) {
  final out = <PreparedDataset>[];
  final resets = batch.reset.toSet();
  for (final name in batch.reset) {
    if (!batch.data.containsKey(name)) out.add(PreparedDataset(name, true, const [], const [], const [], const []));
  }
  batch.data.forEach((name, part) {
    final keyCols = keyColumns.of(name);
    final at = [for (final c in keyCols) part.cols.indexOf(c)];
    if (at.contains(-1) && part.rows.isNotEmpty) {
      throw ProtocolException('dataset $name: cols ${part.cols} lack the key ${keyCols.join(', ')}');
    }
    final seen = <Object?>{};
    final keys = List<Object?>.generate(part.rows.length, (i) {
      final row = part.rows[i];
      final key = at.length == 1 ? normalizeKey(row[at[0]]) : RowKey([for (final j in at) row[j]]);
      if (!seen.add(key)) throw ProtocolException('dataset $name: key $key twice in one batch');
      return key;
    }, growable: false);
    final deletes = [for (final k in part.deletes) normalizeKey(k)];
    for (final key in deletes) {
      if (!seen.add(key)) throw ProtocolException('dataset $name: key $key upserted and deleted in one batch');
    }
    out.add(PreparedDataset(name, resets.contains(name), part.cols, keys, part.rows, deletes));
  });
  return out;
}

// --- the local store --------------------------------------------------------------

/// The device's copy of its datasets, with the cursor they are at.
abstract class LocalStore {
  /// The cursor stored with the last applied batch; null when never synced.
  Future<Uint8List?> readCursor();

  /// Applies one pull response or `changes` frame in ONE transaction: clear
  /// the datasets in `reset`, upsert `rows`, delete `deletes`, and store
  /// `cursor`. All of it or nothing (invariant 4: data and cursor together).
  /// Returns what changed, per dataset.
  Future<List<DatasetChange>> applyBatch(PullResponse batch);

  /// Every row of a dataset as column → value (empty when unknown).
  Future<List<Map<String, Object?>>> readRows(String dataset);

  /// One row by key (a [RowKey] or a list for composite keys), or null.
  Future<Map<String, Object?>?> readRow(String dataset, Object key);

  /// Names of the datasets the store has rows (or a reset) for.
  Future<List<String>> datasets();

  /// Forgets everything, cursor included (sign-out, or a new device id).
  Future<void> clear();
}

class _Row {
  _Row(this.cols, this.values);
  final List<String> cols;
  final List<Object?> values;

  Map<String, Object?> toMap() => {for (var i = 0; i < cols.length; i++) cols[i]: values[i]};
}

/// An in-memory [LocalStore] (tests, benchmarks, or a cache in front of a
/// real one). Rows keep the decoded arrays as they came, sharing one `cols`
/// list per dataset: no per-row maps.
class MemoryStore implements LocalStore {
  /// [keys]: dataset → key column (or list of columns); `id` by default.
  MemoryStore({Map<String, Object> keys = const {}}) : keyColumns = KeyColumns(keys);

  final KeyColumns keyColumns;
  final Map<String, Map<Object?, _Row>> _data = {};
  final Map<String, List<String>> _cols = {};
  Uint8List? _cursor;

  /// Batches applied so far.
  int batches = 0;

  /// The stored cursor, without the Future.
  Uint8List? get cursor => _cursor;

  @override
  Future<Uint8List?> readCursor() async => _cursor;

  @override
  Future<List<DatasetChange>> applyBatch(PullResponse batch) async => applyBatchSync(batch);

  /// [applyBatch] without the Future (benchmarks, tests).
  List<DatasetChange> applyBatchSync(PullResponse batch) {
    final prepared = prepareBatch(batch, keyColumns); // throws before any write
    for (final ds in prepared) {
      final table = ds.reset ? (_data[ds.name] = {}) : _data.putIfAbsent(ds.name, () => {});
      if (ds.rows.isNotEmpty) {
        final known = _cols[ds.name];
        final cols = known != null && _sameList(known, ds.cols) ? known : (_cols[ds.name] = ds.cols);
        for (var i = 0; i < ds.rows.length; i++) {
          table[ds.keys[i]] = _Row(cols, ds.rows[i]);
        }
      }
      for (final key in ds.deletes) {
        table.remove(key);
      }
    }
    _cursor = batch.cursor;
    batches++;
    return [for (final ds in prepared) ds.change];
  }

  static bool _sameList(List<String> a, List<String> b) {
    if (a.length != b.length) return false;
    for (var i = 0; i < a.length; i++) {
      if (a[i] != b[i]) return false;
    }
    return true;
  }

  @override
  Future<List<Map<String, Object?>>> readRows(String dataset) async => rowsSync(dataset);

  List<Map<String, Object?>> rowsSync(String dataset) =>
      [for (final r in (_data[dataset] ?? const {}).values) r.toMap()];

  /// Rows by key, as maps.
  Map<Object?, Map<String, Object?>> rowsByKey(String dataset) =>
      {for (final e in (_data[dataset] ?? const {}).entries) e.key: e.value.toMap()};

  int count(String dataset) => _data[dataset]?.length ?? 0;

  @override
  Future<Map<String, Object?>?> readRow(String dataset, Object key) async =>
      _data[dataset]?[normalizeKey(key)]?.toMap();

  @override
  Future<List<String>> datasets() async => datasetsSync();

  List<String> datasetsSync() => _data.keys.toList();

  @override
  Future<void> clear() async {
    _data.clear();
    _cols.clear();
    _cursor = null;
  }
}

// --- the outbox -----------------------------------------------------------------------

enum OutboxStatus { pending, applied, rejected }

/// A mutation in the outbox with what became of it.
class OutboxEntry {
  OutboxEntry(this.mutation, {this.status = OutboxStatus.pending, this.code, this.message, this.result});

  final Mutation mutation;
  final OutboxStatus status;

  /// The rejection's code and message (rejected entries only).
  final String? code;
  final String? message;

  /// What the server returned for an applied mutation (e.g. the order number).
  final Map<String, Object?>? result;

  int get id => mutation.id;
  ErrorCode? get errorCode => ErrorCode.fromWire(code);

  OutboxEntry withResult(MutationResult r) => OutboxEntry(mutation,
      status: r.applied ? OutboxStatus.applied : OutboxStatus.rejected,
      code: r.code,
      message: r.message,
      result: r.result);

  @override
  String toString() => 'OutboxEntry(${mutation.id} ${mutation.name} ${status.name}'
      '${code == null ? '' : ' $code: $message'})';
}

/// The device's durable, ordered queue of mutations.
///
/// Mutation ids are assigned at [enqueue], strictly increasing and never
/// reused (not even after the entry is gone): the server keeps the highest id
/// it has seen per client and answers a replayed id with the first result.
abstract class Outbox {
  /// Stores a new mutation with the next id and `at` = now (ms), durably,
  /// before returning it. [args] must be a valid wire value
  /// ([checkWireValue]): a bad one throws here, not at push time.
  Future<OutboxEntry> enqueue(String name, Map<String, Object?> args, {int? at});

  /// Mutations still to send, oldest first.
  Future<List<Mutation>> pending();

  /// Records the server's answer for mutation [id]: applied ones leave the
  /// queue; rejected ones stay visible (with code and message) until the app
  /// calls [dismiss]. Results for unknown ids are ignored.
  Future<void> markResult(int id, MutationResult result);

  /// Everything the app should see: pending and rejected entries, by id.
  Future<List<OutboxEntry>> entries();

  /// The app has shown a rejection to the user: forget it.
  Future<void> dismiss(int id);
}

/// Builds the mutation an [Outbox.enqueue] stores, checking its arguments.
Mutation newMutation(int id, String name, Map<String, Object?> args, {int? at}) {
  if (name.isEmpty) throw ArgumentError.value(name, 'name', 'a mutation needs a name');
  checkWireValue(args, 'args of $name');
  return Mutation(id: id, name: name, args: args, at: at ?? DateTime.now().millisecondsSinceEpoch);
}

/// An in-memory [Outbox] for tests (durable only as long as the process).
class MemoryOutbox implements Outbox {
  MemoryOutbox({int lastId = 0}) : _lastId = lastId;

  int _lastId;
  final Map<int, OutboxEntry> _entries = {}; // insertion order = id order

  /// The last id handed out.
  int get lastId => _lastId;

  @override
  Future<OutboxEntry> enqueue(String name, Map<String, Object?> args, {int? at}) async {
    final entry = OutboxEntry(newMutation(_lastId + 1, name, args, at: at));
    _lastId++;
    _entries[entry.id] = entry;
    return entry;
  }

  @override
  Future<List<Mutation>> pending() async =>
      [for (final e in _entries.values) if (e.status == OutboxStatus.pending) e.mutation];

  @override
  Future<void> markResult(int id, MutationResult result) async {
    final entry = _entries[id];
    if (entry == null || entry.status != OutboxStatus.pending) return;
    if (result.applied) {
      _entries.remove(id);
    } else {
      _entries[id] = entry.withResult(result);
    }
  }

  @override
  Future<List<OutboxEntry>> entries() async => _entries.values.toList();

  @override
  Future<void> dismiss(int id) async {
    if (_entries[id]?.status == OutboxStatus.rejected) _entries.remove(id);
  }
}
