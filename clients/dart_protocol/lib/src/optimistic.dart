/// Optimistic local changes on top of the server's rows.
///
/// A mutation's optimistic writes are kept as *ops* (put a row, patch
/// columns, delete a row) in `_sync_ops`; the server's version of every row
/// an op touches is kept in `_sync_base`. A dataset table always holds
/// base + the ops of the mutations not yet settled, in mutation order, so:
/// a server batch touching such a row moves the base and re-applies the ops
/// (rebase); a rejection drops the mutation's ops and the row falls back to
/// the server's; an applied mutation's ops are dropped at the next batch
/// (which carries its effects: read your writes) or by [settle].
/// Everything here runs inside the caller's transaction.
library;

import 'dart:typed_data';

import 'msgpack.dart';
import 'schema.dart';
import 'sql.dart';

const overlayDdl = [
  'CREATE TABLE IF NOT EXISTS _sync_ops (mutation_id INTEGER NOT NULL, seq INTEGER NOT NULL, '
      'dataset TEXT NOT NULL, key BLOB NOT NULL, op TEXT NOT NULL, vals BLOB, state TEXT NOT NULL, '
      'PRIMARY KEY (mutation_id, seq))',
  'CREATE INDEX IF NOT EXISTS _sync_ops_row ON _sync_ops (dataset, key)',
  'CREATE TABLE IF NOT EXISTS _sync_base (dataset TEXT NOT NULL, key BLOB NOT NULL, row BLOB, '
      'PRIMARY KEY (dataset, key))',
];

/// Looks up a dataset's table shape (null: no such table).
typedef TableLookup = DatasetSchema? Function(String dataset);

/// The row-level writes of a mutation's optimistic change, as an app makes
/// them in `db.mutate(..., optimistic: (w) async { ... })`. Values are wire
/// values (bools, maps and lists for `json` columns).
abstract class OptimisticWriter {
  /// The row as the app sees it now (server row plus pending changes).
  Future<Map<String, Object?>?> get(String dataset, Object key);

  /// Inserts or replaces a whole row (its key column included).
  Future<void> upsert(String dataset, Map<String, Object?> row);

  /// Changes some columns of an existing row (nothing if it is absent).
  Future<void> update(String dataset, Object key, Map<String, Object?> values);

  Future<void> delete(String dataset, Object key);
}

class Overlay {
  Overlay(this.tables);
  final TableLookup tables;

  DatasetSchema _table(String dataset) =>
      tables(dataset) ?? (throw ArgumentError.value(dataset, 'dataset', 'no such synced table'));

  /// The current row of [dataset] with key [key], as wire values.
  Future<Map<String, Object?>?> read(SqlExecutor tx, String dataset, Object? key) async {
    final t = _table(dataset);
    final rows = await tx.select('SELECT * FROM ${quote(dataset)} WHERE ${quote(t.key)} = ?', [key]);
    if (rows.isEmpty) return null;
    return {for (final e in rows.single.entries) e.key: DatasetSchema.fromSql(t.typeOf(e.key), e.value)};
  }

  Future<void> _write(SqlExecutor tx, String dataset, Object? key, Map<String, Object?>? row) async {
    final t = _table(dataset);
    if (row == null) {
      await tx.execute('DELETE FROM ${quote(dataset)} WHERE ${quote(t.key)} = ?', [key]);
      return;
    }
    final cols = [for (final c in t.cols) if (row.containsKey(c)) c];
    await tx.execute(
        'INSERT OR REPLACE INTO ${quote(dataset)} (${cols.map(quote).join(', ')}) '
        'VALUES (${List.filled(cols.length, '?').join(', ')})',
        [for (final c in cols) DatasetSchema.toSql(t.typeOf(c), row[c])]);
  }

  /// Records one op of mutation [mutationId] and applies it.
  Future<void> record(SqlExecutor tx, int mutationId, String dataset, Object? key, String op,
      Map<String, Object?>? vals) async {
    final k = msgpackEncode(key);
    final base = await tx.select('SELECT 1 FROM _sync_base WHERE dataset = ? AND key = ?', [dataset, k]);
    if (base.isEmpty) {
      final row = await read(tx, dataset, key);
      await tx.execute('INSERT INTO _sync_base (dataset, key, row) VALUES (?, ?, ?)',
          [dataset, k, row == null ? null : msgpackEncode(row)]);
    }
    final seq = await tx.select('SELECT count(*) AS n FROM _sync_ops WHERE mutation_id = ?', [mutationId]);
    await tx.execute(
        'INSERT INTO _sync_ops (mutation_id, seq, dataset, key, op, vals, state) VALUES (?, ?, ?, ?, ?, ?, ?)',
        [mutationId, seq.single['n'], dataset, k, op, vals == null ? null : msgpackEncode(vals), 'pending']);
    await _recompute(tx, dataset, k);
  }

  /// table[key] = base + pending ops, in mutation order; forgets the base
  /// once no op is left.
  Future<void> _recompute(SqlExecutor tx, String dataset, Uint8List k) async {
    final key = msgpackDecode(k);
    if (tables(dataset) == null) {
      await tx.execute('DELETE FROM _sync_ops WHERE dataset = ? AND key = ?', [dataset, k]);
      await tx.execute('DELETE FROM _sync_base WHERE dataset = ? AND key = ?', [dataset, k]);
      return; // the dataset is gone (no longer served): nothing to show
    }
    final base = await tx.select('SELECT row FROM _sync_base WHERE dataset = ? AND key = ?', [dataset, k]);
    if (base.isEmpty) return; // no op left on this row: the table holds the server's row
    final ops = await tx.select(
        "SELECT op, vals FROM _sync_ops WHERE dataset = ? AND key = ? AND state = 'pending' "
        'ORDER BY mutation_id, seq',
        [dataset, k]);
    final stored = base.single['row'] as Uint8List?;
    var row = stored == null ? null : (msgpackDecode(stored) as Map).cast<String, Object?>();
    for (final op in ops) {
      final vals = op['vals'] == null ? null : (msgpackDecode(op['vals'] as Uint8List) as Map).cast<String, Object?>();
      switch (op['op']) {
        case 'put':
          row = vals;
        case 'patch':
          if (row != null) row = {...row, ...?vals};
        case 'delete':
          row = null;
      }
    }
    await _write(tx, dataset, key, row);
    if (ops.isEmpty) await tx.execute('DELETE FROM _sync_base WHERE dataset = ? AND key = ?', [dataset, k]);
  }

  /// Keys of [dataset] that have a base (some op touches them).
  Future<List<Uint8List>> baseKeys(SqlExecutor tx, String dataset) async => [
        for (final r in await tx.select('SELECT key FROM _sync_base WHERE dataset = ?', [dataset]))
          r['key'] as Uint8List
      ];

  /// After the server wrote [dataset]: the rows it touched ([touched] says
  /// which base keys) become the new base, and the pending ops go back on top.
  Future<void> rebase(SqlExecutor tx, String dataset, bool Function(Object? key) touched) async {
    for (final k in await baseKeys(tx, dataset)) {
      final key = msgpackDecode(k);
      if (!touched(key)) continue;
      final row = tables(dataset) == null ? null : await read(tx, dataset, key);
      await tx.execute('UPDATE _sync_base SET row = ? WHERE dataset = ? AND key = ?',
          [row == null ? null : msgpackEncode(row), dataset, k]);
      await _recompute(tx, dataset, k);
    }
  }

  /// Drops the ops of [mutationIds] (rejected, or applied and now in the
  /// server's rows) and recomputes the rows they touched. Returns the
  /// datasets changed.
  Future<Set<String>> drop(SqlExecutor tx, Iterable<int> mutationIds) async {
    final ids = mutationIds.toList();
    if (ids.isEmpty) return {};
    final marks = List.filled(ids.length, '?').join(', ');
    final touched = await tx.select('SELECT DISTINCT dataset, key FROM _sync_ops WHERE mutation_id IN ($marks)', ids);
    await tx.execute('DELETE FROM _sync_ops WHERE mutation_id IN ($marks)', ids);
    for (final r in touched) {
      await _recompute(tx, r['dataset'] as String, r['key'] as Uint8List);
    }
    return {for (final r in touched) r['dataset'] as String};
  }

  /// Marks an applied mutation's ops to be dropped at the next batch.
  Future<void> settleLater(SqlExecutor tx, int mutationId) =>
      tx.execute("UPDATE _sync_ops SET state = 'settling' WHERE mutation_id = ?", [mutationId]);

  /// Applied mutations whose ops still wait for the server's rows.
  Future<List<int>> settling(SqlExecutor tx) async => [
        for (final r in await tx.select("SELECT DISTINCT mutation_id FROM _sync_ops WHERE state = 'settling'"))
          r['mutation_id'] as int
      ];

  /// Does any op (pending or settling) exist? (A cheap check per batch.)
  Future<bool> any(SqlExecutor tx) async => (await tx.select('SELECT 1 FROM _sync_base LIMIT 1')).isNotEmpty;
}

/// The [OptimisticWriter] handed to the app inside `mutate`.
class OverlayWriter implements OptimisticWriter {
  OverlayWriter(this.overlay, this.tx, this.mutationId);
  final Overlay overlay;
  final SqlExecutor tx;
  final int mutationId;
  final Set<String> touched = {};

  @override
  Future<Map<String, Object?>?> get(String dataset, Object key) => overlay.read(tx, dataset, key);

  @override
  Future<void> upsert(String dataset, Map<String, Object?> row) {
    final key = row[overlay._table(dataset).key];
    if (key == null) throw ArgumentError('upsert into $dataset: the row has no key');
    touched.add(dataset);
    return overlay.record(tx, mutationId, dataset, key, 'put', row);
  }

  @override
  Future<void> update(String dataset, Object key, Map<String, Object?> values) {
    touched.add(dataset);
    return overlay.record(tx, mutationId, dataset, key, 'patch', values);
  }

  @override
  Future<void> delete(String dataset, Object key) {
    touched.add(dataset);
    return overlay.record(tx, mutationId, dataset, key, 'delete', null);
  }
}
