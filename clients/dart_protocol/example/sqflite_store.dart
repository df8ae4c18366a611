// A SQLite LocalStore and Outbox for Flutter apps, on package:sqflite.
//
// NOT part of the package (dart_protocol has no dependencies and its tests
// run on a bare Dart VM): copy this file into your app and add `sqflite` to
// its pubspec.yaml. It is not compiled by our test runner.
//
// One database file holds the rows, the cursor and the outbox, so a batch
// and its cursor commit in ONE SQLite transaction (protocol invariant 4): an
// app killed in the middle of a batch restarts from the previous cursor with
// the previous data, never with a mix.
//
// Rows are stored generically (table fs_rows: dataset, key, msgpack blob),
// which needs no migration when the server adds a dataset. Datasets you want
// to query with SQL (WHERE city = ?, ORDER BY name) can be mapped to real
// tables instead, whose column names are the dataset's wire columns:
//
//   final db = await openSyncDatabase(path, extraSchema: [
//     'CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, city TEXT, credit_limit INTEGER, '
//         'balance INTEGER, currency TEXT, pricelist_id INTEGER, contact_name TEXT, phone TEXT, '
//         'email TEXT, address TEXT, version INTEGER)',
//   ]);
//   final store = SqfliteStore(db, tables: {'customers': 'customers'});
//   final outbox = SqfliteOutbox(db);
//   ...
//   final rows = await db.query('customers', where: 'city = ?', whereArgs: ['Utrecht'], orderBy: 'name');
//
// In mapped tables, bools are stored as 0/1, maps and lists (`json` columns such
// as order lines) as JSON text, bin as BLOB. Columns the server sends that the
// table lacks make the insert fail: add them in a migration when /sync/schema
// changes (the server resets such a dataset anyway).
import 'dart:convert';
import 'dart:typed_data';

import 'package:dart_protocol/dart_protocol.dart';
import 'package:sqflite/sqflite.dart';

/// Opens (and on first use creates) the sync database at [path].
/// [extraSchema]: CREATE TABLE statements of your mapped datasets.
Future<Database> openSyncDatabase(String path, {List<String> extraSchema = const []}) => openDatabase(
      path,
      version: 1,
      onCreate: (db, version) async {
        await db.execute('CREATE TABLE fs_meta (key TEXT PRIMARY KEY, value BLOB)');
        await db.execute('CREATE TABLE fs_rows (dataset TEXT NOT NULL, key TEXT NOT NULL, '
            'row BLOB NOT NULL, PRIMARY KEY (dataset, key)) WITHOUT ROWID');
        await db.execute('CREATE TABLE fs_outbox (id INTEGER PRIMARY KEY, name TEXT NOT NULL, '
            'args BLOB NOT NULL, at INTEGER NOT NULL, status TEXT NOT NULL, code TEXT, message TEXT, result BLOB)');
        for (final sql in extraSchema) {
          await db.execute(sql);
        }
      },
    );

/// This install's client id, made once and kept in the same file as the
/// outbox: mutation ids count per client id, so the two must live and die
/// together (a reinstall gets a new id and starts its ids at 1).
Future<String> installClientId(Database db) => db.transaction((txn) async {
      final rows = await txn.query('fs_meta', columns: ['value'], where: 'key = ?', whereArgs: ['client_id']);
      if (rows.isNotEmpty) return rows.single['value'] as String;
      final id = 'app-${uuidV4()}';
      await txn.insert('fs_meta', {'key': 'client_id', 'value': id});
      return id;
    });

/// The text form of a row key in fs_rows: JSON, so 1 and "1" stay apart.
String keyText(Object? key) => jsonEncode(key is RowKey ? key.parts : key);

/// A wire value as a SQLite column value (mapped tables).
Object? sqlValue(Object? v) => switch (v) {
      bool() => v ? 1 : 0,
      Uint8List() => v,
      Map() || List() => jsonEncode(v),
      _ => v,
    };

class SqfliteStore implements LocalStore {
  /// [tables]: dataset → SQL table for datasets mapped to real tables (the
  /// rest go to fs_rows). [keys]: dataset → key column(s), `id` by default.
  SqfliteStore(this.db, {Map<String, String> tables = const {}, Map<String, Object> keys = const {}})
      : tables = Map.unmodifiable(tables),
        keyColumns = KeyColumns(keys);

  final Database db;
  final Map<String, String> tables;
  final KeyColumns keyColumns;

  @override
  Future<Uint8List?> readCursor() async {
    final rows = await db.query('fs_meta', columns: ['value'], where: 'key = ?', whereArgs: ['cursor']);
    return rows.isEmpty ? null : rows.single['value'] as Uint8List?;
  }

  @override
  Future<List<DatasetChange>> applyBatch(PullResponse batch) async {
    final prepared = prepareBatch(batch, keyColumns); // a bad batch throws before the transaction
    await db.transaction((txn) async {
      final b = txn.batch();
      for (final ds in prepared) {
        final table = tables[ds.name];
        if (ds.reset) {
          if (table == null) {
            b.delete('fs_rows', where: 'dataset = ?', whereArgs: [ds.name]);
          } else {
            b.delete(table);
          }
        }
        for (var i = 0; i < ds.rows.length; i++) {
          final row = ds.rows[i];
          if (table == null) {
            final map = {for (var c = 0; c < ds.cols.length; c++) ds.cols[c]: row[c]};
            b.insert('fs_rows', {'dataset': ds.name, 'key': keyText(ds.keys[i]), 'row': msgpackEncode(map)},
                conflictAlgorithm: ConflictAlgorithm.replace);
          } else {
            b.insert(table, {for (var c = 0; c < ds.cols.length; c++) ds.cols[c]: sqlValue(row[c])},
                conflictAlgorithm: ConflictAlgorithm.replace);
          }
        }
        final keyCols = keyColumns.of(ds.name);
        for (final key in ds.deletes) {
          if (table == null) {
            b.delete('fs_rows', where: 'dataset = ? AND key = ?', whereArgs: [ds.name, keyText(key)]);
          } else {
            final parts = key is RowKey ? key.parts : [key];
            b.delete(table, where: keyCols.map((c) => '$c = ?').join(' AND '), whereArgs: parts.map(sqlValue).toList());
          }
        }
      }
      b.insert('fs_meta', {'key': 'cursor', 'value': batch.cursor}, conflictAlgorithm: ConflictAlgorithm.replace);
      await b.commit(noResult: true); // inside the transaction: all of it or nothing
    });
    return [for (final ds in prepared) ds.change];
  }

  @override
  Future<List<Map<String, Object?>>> readRows(String dataset) async {
    final table = tables[dataset];
    if (table != null) return db.query(table); // SQL values: see sqlValue
    final rows = await db.query('fs_rows', columns: ['row'], where: 'dataset = ?', whereArgs: [dataset]);
    return [for (final r in rows) (msgpackDecode(r['row'] as Uint8List) as Map).cast<String, Object?>()];
  }

  @override
  Future<Map<String, Object?>?> readRow(String dataset, Object key) async {
    final table = tables[dataset];
    final parts = key is RowKey ? key.parts : (key is List ? key : [key]);
    if (table != null) {
      final keyCols = keyColumns.of(dataset);
      final rows = await db.query(table,
          where: keyCols.map((c) => '$c = ?').join(' AND '), whereArgs: parts.map(sqlValue).toList(), limit: 1);
      return rows.isEmpty ? null : rows.single;
    }
    final rows = await db.query('fs_rows',
        columns: ['row'], where: 'dataset = ? AND key = ?', whereArgs: [dataset, keyText(normalizeKey(key))]);
    return rows.isEmpty ? null : (msgpackDecode(rows.single['row'] as Uint8List) as Map).cast<String, Object?>();
  }

  @override
  Future<List<String>> datasets() async {
    final rows = await db.rawQuery('SELECT DISTINCT dataset FROM fs_rows');
    return [...rows.map((r) => r['dataset'] as String), ...tables.keys];
  }

  @override
  Future<void> clear() => db.transaction((txn) async {
        await txn.delete('fs_rows');
        for (final table in tables.values) {
          await txn.delete(table);
        }
        await txn.delete('fs_meta', where: 'key = ?', whereArgs: ['cursor']);
      });
}

/// The outbox in the same database. Ids come from a counter in fs_meta, so
/// they keep increasing after entries are deleted (the server answers a
/// reused id with the first mutation's result, or CONFLICT).
class SqfliteOutbox implements Outbox {
  SqfliteOutbox(this.db);
  final Database db;

  @override
  Future<OutboxEntry> enqueue(String name, Map<String, Object?> args, {int? at}) =>
      db.transaction((txn) async {
        final last = await txn.query('fs_meta', columns: ['value'], where: 'key = ?', whereArgs: ['last_mutation_id']);
        final id = (last.isEmpty ? 0 : last.single['value'] as int) + 1;
        final mutation = newMutation(id, name, args, at: at); // checks args: throws before writing
        await txn.insert('fs_meta', {'key': 'last_mutation_id', 'value': id},
            conflictAlgorithm: ConflictAlgorithm.replace);
        await txn.insert('fs_outbox', {
          'id': id,
          'name': name,
          'args': msgpackEncode(mutation.args),
          'at': mutation.at,
          'status': OutboxStatus.pending.name,
        });
        return OutboxEntry(mutation);
      });

  @override
  Future<List<Mutation>> pending() async =>
      [for (final e in await _query("status = 'pending'")) e.mutation];

  @override
  Future<void> markResult(int id, MutationResult result) async {
    if (result.applied) {
      await db.delete('fs_outbox', where: "id = ? AND status = 'pending'", whereArgs: [id]);
    } else {
      await db.update(
          'fs_outbox',
          {
            'status': OutboxStatus.rejected.name,
            'code': result.code,
            'message': result.message,
            'result': result.result == null ? null : msgpackEncode(result.result),
          },
          where: "id = ? AND status = 'pending'",
          whereArgs: [id]);
    }
  }

  @override
  Future<List<OutboxEntry>> entries() => _query(null);

  @override
  Future<void> dismiss(int id) =>
      db.delete('fs_outbox', where: "id = ? AND status = 'rejected'", whereArgs: [id]);

  Future<List<OutboxEntry>> _query(String? where) async {
    final rows = await db.query('fs_outbox', where: where, orderBy: 'id');
    return [
      for (final r in rows)
        OutboxEntry(
          Mutation(
              id: r['id'] as int,
              name: r['name'] as String,
              args: (msgpackDecode(r['args'] as Uint8List) as Map).cast<String, Object?>(),
              at: r['at'] as int),
          status: OutboxStatus.values.byName(r['status'] as String),
          code: r['code'] as String?,
          message: r['message'] as String?,
          result: r['result'] == null ? null : (msgpackDecode(r['result'] as Uint8List) as Map).cast<String, Object?>(),
        )
    ];
  }
}
