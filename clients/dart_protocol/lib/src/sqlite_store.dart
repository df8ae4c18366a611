/// [SqliteStore]: the device's datasets as real SQLite tables (one per
/// dataset, named like it, typed from `/sync/schema`), the cursor, and (see
/// sqlite_outbox.dart) the outbox, all in one database, so a batch and its
/// cursor, or an optimistic change and its outbox entry, commit together.
/// Written against [SqlDatabase]: web-safe, any driver.
library;

import 'dart:async';
import 'dart:typed_data';

import 'messages.dart';
import 'msgpack.dart';
import 'optimistic.dart';
import 'schema.dart';
import 'sql.dart';
import 'sqlite_outbox.dart';
import 'store.dart';

const _metaDdl = [
  'CREATE TABLE IF NOT EXISTS _sync_state (key TEXT PRIMARY KEY, value)',
  'CREATE TABLE IF NOT EXISTS _sync_tables (name TEXT PRIMARY KEY, shape BLOB NOT NULL, synced INTEGER NOT NULL)',
];

class SqliteStore implements LocalStore {
  SqliteStore._(this.db) {
    overlay = Overlay((name) => _tables[name]);
    outbox = SqliteOutbox(this);
  }

  /// Opens the store on [db], creating its bookkeeping tables on first use.
  static Future<SqliteStore> open(SqlDatabase db) async {
    final store = SqliteStore._(db);
    await db.transaction((tx) async {
      for (final sql in [..._metaDdl, ...overlayDdl, ...outboxDdl]) {
        await tx.execute(sql);
      }
      for (final r in await tx.select('SELECT name, shape, synced FROM _sync_tables')) {
        store._tables[r['name'] as String] = DatasetSchema.fromMsgpack(msgpackDecode(r['shape'] as Uint8List));
        if (r['synced'] == 1) store._synced.add(r['name'] as String);
      }
      final schema = await _state(tx, 'schema');
      if (schema is Uint8List) store._schema = SyncSchema.fromMsgpack(msgpackDecode(schema));
    });
    return store;
  }

  final SqlDatabase db;
  late final Overlay overlay;

  /// The outbox in this same database.
  late final SqliteOutbox outbox;

  final Map<String, DatasetSchema> _tables = {};
  final Set<String> _synced = {};
  SyncSchema? _schema;
  final _changes = StreamController<Set<String>>.broadcast(sync: true);

  /// Tests only: runs inside a batch's transaction after its rows, before
  /// its cursor and the commit (to kill the process mid-batch).
  Future<void> Function()? beforeCommit;

  /// The names of the tables each commit changed, right after it.
  Stream<Set<String>> get tableChanges => _changes.stream;

  void notify(Set<String> tables) {
    if (tables.isNotEmpty && !_changes.isClosed) _changes.add(tables);
  }

  /// The shape of a dataset's table, if it has one.
  DatasetSchema? table(String dataset) => _tables[dataset];

  SyncSchema? get schema => _schema;

  static Future<Object?> _state(SqlExecutor tx, String key) async {
    final r = await tx.select('SELECT value FROM _sync_state WHERE key = ?', [key]);
    return r.isEmpty ? null : r.single['value'];
  }

  static Future<void> _setState(SqlExecutor tx, String key, Object? value) =>
      tx.execute('INSERT OR REPLACE INTO _sync_state (key, value) VALUES (?, ?)', [key, value]);

  /// This install's client id, made by [create] once and kept in this file
  /// (mutation ids count per client id: the two live and die together).
  Future<String> clientId(String Function() create) => db.transaction((tx) async {
        final id = await _state(tx, 'client_id');
        if (id is String) return id;
        final made = create();
        await _setState(tx, 'client_id', made);
        return made;
      });

  /// Keeps the server's schema (for typed tables when offline later) and
  /// creates the tables of datasets that have none yet, so an app's queries
  /// work before the first rows arrive. Existing tables change shape only
  /// with the reset the server sends for a shape change.
  Future<void> useSchema(SyncSchema schema) async {
    final made = <String>{};
    try {
      await db.transaction((tx) async {
        await _setState(tx, 'schema', msgpackEncode(schema.toMsgpack()));
        for (final d in schema.datasets.values) {
          if (!_tables.containsKey(d.name)) {
            await _create(tx, d, synced: false);
            made.add(d.name);
          }
        }
      });
    } catch (_) {
      made.forEach(_tables.remove); // rolled back with the transaction
      rethrow;
    }
    _schema = schema;
    notify(made);
  }

  Future<void> _create(SqlExecutor tx, DatasetSchema shape, {required bool synced}) async {
    await tx.execute('DROP TABLE IF EXISTS ${quote(shape.name)}');
    for (final sql in shape.ddl()) {
      await tx.execute(sql);
    }
    await tx.execute('INSERT OR REPLACE INTO _sync_tables (name, shape, synced) VALUES (?, ?, ?)',
        [shape.name, msgpackEncode(shape.toMsgpack()), synced ? 1 : 0]);
    _tables[shape.name] = shape;
    if (synced) _synced.add(shape.name);
  }

  /// The shape a batch's dataset should have: the schema's when its columns
  /// match the batch's, else inferred from the rows.
  DatasetSchema _shapeFor(String name, List<String> cols, List<List<Object?>> rows) {
    final known = _schema?.datasets[name] ?? _tables[name];
    if (known != null && (cols.isEmpty || _sameSet(known.cols, cols))) return known;
    return DatasetSchema.infer(name, cols, rows, key: known?.key ?? 'id');
  }

  static bool _sameSet(List<String> a, List<String> b) => a.length == b.length && a.toSet().containsAll(b);

  @override
  Future<Uint8List?> readCursor() async {
    final r = await db.select("SELECT value FROM _sync_state WHERE key = 'cursor'");
    return r.isEmpty ? null : r.single['value'] as Uint8List?;
  }

  @override
  Future<List<DatasetChange>> applyBatch(PullResponse batch) async {
    final keys = KeyColumns({
      for (final name in batch.data.keys) name: (_schema?.datasets[name] ?? _tables[name])?.key ?? 'id',
    });
    final prepared = prepareBatch(batch, keys); // throws before any write
    final changed = <String>{};
    final tablesBefore = Map.of(_tables), syncedBefore = Set.of(_synced);
    try {
      await db.transaction((tx) async {
        final overlaid = await overlay.any(tx);
        for (final ds in prepared) {
          await _applyDataset(tx, ds);
          changed.add(ds.name);
          if (overlaid) {
            final keySet = {...ds.keys, ...ds.deletes};
            await overlay.rebase(tx, ds.name, (k) => ds.reset || keySet.contains(normalizeKey(k)));
          }
        }
        if (overlaid) changed.addAll(await overlay.drop(tx, await overlay.settling(tx)));
        await _setState(tx, 'cursor', batch.cursor);
        await beforeCommit?.call();
      });
    } catch (_) {
      // The transaction rolled back: so must the table shapes it made.
      _tables
        ..clear()
        ..addAll(tablesBefore);
      _synced
        ..clear()
        ..addAll(syncedBefore);
      rethrow;
    }
    notify(changed);
    return [for (final ds in prepared) ds.change];
  }

  Future<void> _applyDataset(SqlExecutor tx, PreparedDataset ds) async {
    var shape = _tables[ds.name];
    if (shape == null && ds.cols.isEmpty && _schema?.datasets[ds.name] == null) {
      return; // a reset of a dataset this store never had, with no rows and no schema: nothing to make
    }
    if (ds.reset) {
      final want = _shapeFor(ds.name, ds.cols, ds.rows);
      if (shape == null || !shape.sameShape(want)) {
        await _create(tx, want, synced: true); // the migration: a new shape comes with a reset
      } else {
        await tx.execute('DELETE FROM ${quote(ds.name)}');
      }
      shape = want;
    } else if (shape == null) {
      shape = _shapeFor(ds.name, ds.cols, ds.rows);
      await _create(tx, shape, synced: true);
    } else if (ds.cols.any((c) => !shape!.cols.contains(c))) {
      shape = await _addColumns(tx, shape, ds);
    }
    if (!_synced.contains(ds.name)) {
      await tx.execute('UPDATE _sync_tables SET synced = 1 WHERE name = ?', [ds.name]);
      _synced.add(ds.name);
    }
    if (ds.rows.isNotEmpty) {
      final types = [for (final c in ds.cols) shape.typeOf(c)];
      final convert = types.any((t) => t == 'json' || t == 'any');
      await tx.executeMany(
          'INSERT OR REPLACE INTO ${quote(ds.name)} (${ds.cols.map(quote).join(', ')}) '
          'VALUES (${List.filled(ds.cols.length, '?').join(', ')})',
          convert
              ? ds.rows.map((r) => [for (var i = 0; i < r.length; i++) DatasetSchema.toSql(types[i], r[i])])
              : ds.rows);
    }
    if (ds.deletes.isNotEmpty) {
      await tx.executeMany('DELETE FROM ${quote(ds.name)} WHERE ${quote(shape.key)} = ?', [
        for (final k in ds.deletes) [k is RowKey ? k.parts.first : k]
      ]);
    }
  }

  /// A batch without a reset brought columns the table lacks (the server
  /// resets on a shape change, so this is a safety net): add them.
  Future<DatasetSchema> _addColumns(SqlExecutor tx, DatasetSchema shape, PreparedDataset ds) async {
    final extra = DatasetSchema.infer(ds.name, ds.cols, ds.rows);
    final cols = [...shape.cols], types = [...shape.types];
    for (var i = 0; i < ds.cols.length; i++) {
      if (cols.contains(ds.cols[i])) continue;
      await tx.execute('ALTER TABLE ${quote(ds.name)} ADD COLUMN ${quote(ds.cols[i])} '
          '${DatasetSchema.affinity(extra.types[i])}');
      cols.add(ds.cols[i]);
      types.add(extra.types[i]);
    }
    final grown = DatasetSchema(name: ds.name, cols: cols, types: types, key: shape.key, priority: shape.priority);
    await tx.execute('UPDATE _sync_tables SET shape = ? WHERE name = ?', [msgpackEncode(grown.toMsgpack()), ds.name]);
    return _tables[ds.name] = grown;
  }

  /// Drops the ops of applied mutations whose effects never came in a
  /// batch (they came before their results, over the WebSocket).
  Future<void> settle() async {
    final changed = await db.transaction((tx) async => overlay.drop(tx, await overlay.settling(tx)));
    notify(changed);
  }

  /// Rows as the server sent them (typed back from SQLite: bools, json).
  Map<String, Object?> _typed(DatasetSchema t, Map<String, Object?> row) =>
      {for (final c in t.cols) c: DatasetSchema.fromSql(t.typeOf(c), row[c])};

  @override
  Future<List<Map<String, Object?>>> readRows(String dataset) async {
    final t = _tables[dataset];
    if (t == null) return const [];
    return [for (final r in await db.select('SELECT * FROM ${quote(dataset)}')) _typed(t, r)];
  }

  @override
  Future<Map<String, Object?>?> readRow(String dataset, Object key) async {
    final t = _tables[dataset];
    if (t == null) return null;
    final k = key is List ? key.first : (key is RowKey ? key.parts.first : key);
    final r = await db.select('SELECT * FROM ${quote(dataset)} WHERE ${quote(t.key)} = ?', [k]);
    return r.isEmpty ? null : _typed(t, r.single);
  }

  @override
  Future<List<String>> datasets() async => _synced.toList();

  @override
  Future<void> clear() async {
    await db.transaction((tx) async {
      for (final name in _tables.keys) {
        await tx.execute('DELETE FROM ${quote(name)}');
      }
      await tx.execute('DELETE FROM _sync_ops');
      await tx.execute('DELETE FROM _sync_base');
      await tx.execute("DELETE FROM _sync_state WHERE key = 'cursor'");
    });
    notify(_tables.keys.toSet());
  }

  Future<void> close() async {
    await _changes.close();
  }
}
