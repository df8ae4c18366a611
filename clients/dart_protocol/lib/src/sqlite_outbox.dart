/// [SqliteOutbox]: the outbox as a table of the [SqliteStore]'s database,
/// so a mutation's optimistic change and its outbox entry commit in one
/// transaction, and a result's bookkeeping and its rollback in another.
library;

import 'dart:typed_data';

import 'messages.dart';
import 'msgpack.dart';
import 'optimistic.dart';
import 'sql.dart';
import 'sqlite_store.dart';
import 'store.dart';

const outboxTable = '_sync_outbox';

const outboxDdl = [
  'CREATE TABLE IF NOT EXISTS _sync_outbox (id INTEGER PRIMARY KEY, name TEXT NOT NULL, args BLOB NOT NULL, '
      'at INTEGER NOT NULL, status TEXT NOT NULL, code TEXT, message TEXT)',
];

/// The app's optimistic change for one mutation (see [OptimisticWriter]).
typedef Optimistic = Future<void> Function(OptimisticWriter w);

class SqliteOutbox implements Outbox {
  SqliteOutbox(this.store);
  final SqliteStore store;

  SqlDatabase get _db => store.db;

  @override
  Future<OutboxEntry> enqueue(String name, Map<String, Object?> args, {int? at}) =>
      enqueueWith(name, args, at: at);

  /// [enqueue] plus the optimistic change, in one transaction: both are
  /// stored, or neither (an [optimistic] that throws stores nothing).
  Future<OutboxEntry> enqueueWith(String name, Map<String, Object?> args, {int? at, Optimistic? optimistic}) async {
    final touched = <String>{outboxTable};
    final entry = await _db.transaction((tx) async {
      final last = await tx.select("SELECT value FROM _sync_state WHERE key = 'last_mutation_id'");
      final id = (last.isEmpty ? 0 : last.single['value'] as int) + 1;
      final m = newMutation(id, name, args, at: at);
      await tx.execute("INSERT OR REPLACE INTO _sync_state (key, value) VALUES ('last_mutation_id', ?)", [id]);
      await tx.execute('INSERT INTO _sync_outbox (id, name, args, at, status) VALUES (?, ?, ?, ?, ?)',
          [id, name, msgpackEncode(m.args), m.at, 'pending']);
      if (optimistic != null) {
        final w = OverlayWriter(store.overlay, tx, id);
        await optimistic(w);
        touched.addAll(w.touched);
      }
      return OutboxEntry(m);
    });
    store.notify(touched);
    return entry;
  }

  Mutation _mutation(Map<String, Object?> r) => Mutation(
      id: r['id'] as int,
      name: r['name'] as String,
      args: (msgpackDecode(r['args'] as Uint8List) as Map).cast<String, Object?>(),
      at: r['at'] as int);

  @override
  Future<List<Mutation>> pending() async => [
        for (final r in await _db.select("SELECT * FROM _sync_outbox WHERE status = 'pending' ORDER BY id"))
          _mutation(r)
      ];

  /// Applied: the entry leaves and its optimistic rows wait for the
  /// server's (next batch, or [SqliteStore.settle]). Rejected: the entry
  /// stays, with code and message, and its optimistic rows go at once.
  @override
  Future<void> markResult(int id, MutationResult result) async {
    final touched = await _db.transaction((tx) async {
      final r = await tx.select('SELECT status FROM _sync_outbox WHERE id = ?', [id]);
      if (r.isEmpty || r.single['status'] != 'pending') return <String>{};
      if (result.applied) {
        await tx.execute('DELETE FROM _sync_outbox WHERE id = ?', [id]);
        await store.overlay.settleLater(tx, id);
        return {outboxTable};
      }
      await tx.execute("UPDATE _sync_outbox SET status = 'rejected', code = ?, message = ? WHERE id = ?",
          [result.code, result.message, id]);
      return {outboxTable, ...await store.overlay.drop(tx, [id])};
    });
    store.notify(touched);
  }

  @override
  Future<List<OutboxEntry>> entries() async => [
        for (final r in await _db.select('SELECT * FROM _sync_outbox ORDER BY id'))
          OutboxEntry(_mutation(r),
              status: r['status'] == 'rejected' ? OutboxStatus.rejected : OutboxStatus.pending,
              code: r['code'] as String?,
              message: r['message'] as String?)
      ];

  @override
  Future<void> dismiss(int id) async {
    await _db.execute("DELETE FROM _sync_outbox WHERE id = ? AND status = 'rejected'", [id]);
    store.notify({outboxTable});
  }
}
