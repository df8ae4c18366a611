/// [SqlDatabase]: the small SQL interface the SQLite store is written
/// against (execute, select, transaction), so one store runs on the
/// package's `dart:ffi` SQLite ([FfiSqlDatabase]), on package:sqlite3 or on
/// sqflite (adapters in README.md). No `dart:io` here: web-safe.
library;

import 'dart:async';

/// A failed statement (syntax, constraint, I/O), whatever the driver.
class SqlException implements Exception {
  SqlException(this.message);
  final String message;
  @override
  String toString() => 'SqlException: $message';
}

/// What statements run on: the database itself, or an open transaction.
abstract class SqlExecutor {
  /// Runs one statement that returns no rows.
  Future<void> execute(String sql, [List<Object?> params = const []]);

  /// Runs a query; each row as column → value (INTEGER as int, REAL as
  /// double, TEXT as String, BLOB as Uint8List, NULL as null).
  Future<List<Map<String, Object?>>> select(String sql, [List<Object?> params = const []]);

  /// One statement for many parameter lists (bulk upserts); drivers with a
  /// batch API make it one call.
  Future<void> executeMany(String sql, Iterable<List<Object?>> rows);
}

/// A database connection with transactions.
abstract class SqlDatabase implements SqlExecutor {
  /// Runs [action] in one transaction: committed when it completes, rolled
  /// back when it throws. Other statements on this database wait meanwhile,
  /// so use only [tx] inside [action] (the database itself would deadlock).
  Future<T> transaction<T>(Future<T> Function(SqlExecutor tx) action);

  Future<void> close();
}

/// Column names plus rows as lists: the cheap form of a result.
class SqlResult {
  SqlResult(this.columns, this.rows);
  final List<String> columns;
  final List<List<Object?>> rows;

  List<Map<String, Object?>> get maps => [
        for (final r in rows) {for (var i = 0; i < columns.length; i++) columns[i]: r[i]}
      ];
}

/// Serialises async work: one transaction (or statement) at a time.
class _Lock {
  Future<void> _last = Future.value();

  Future<T> run<T>(Future<T> Function() fn) {
    final result = _last.then((_) => fn());
    _last = result.then((_) {}, onError: (_) {});
    return result;
  }
}

/// A [SqlDatabase] over a synchronous driver: implement the three `*Sync`
/// methods; transactions and the lock come from here.
abstract class SqlDatabaseBase implements SqlDatabase {
  final _lock = _Lock();
  bool _closed = false;

  void executeSync(String sql, [List<Object?> params = const []]);
  SqlResult selectSync(String sql, [List<Object?> params = const []]);
  void executeManySync(String sql, Iterable<List<Object?>> rows);

  void _open() {
    if (_closed) throw SqlException('the database is closed');
  }

  @override
  Future<void> execute(String sql, [List<Object?> params = const []]) => _lock.run(() async {
        _open();
        executeSync(sql, params);
      });

  @override
  Future<List<Map<String, Object?>>> select(String sql, [List<Object?> params = const []]) => _lock.run(() async {
        _open();
        return selectSync(sql, params).maps;
      });

  @override
  Future<void> executeMany(String sql, Iterable<List<Object?>> rows) => _lock.run(() async {
        _open();
        executeManySync(sql, rows);
      });

  @override
  Future<T> transaction<T>(Future<T> Function(SqlExecutor tx) action) => _lock.run(() async {
        _open();
        // IMMEDIATE: take the write lock now, so a second process fails at
        // BEGIN (busy_timeout) rather than half-way through the batch.
        executeSync('BEGIN IMMEDIATE');
        final tx = _Tx(this);
        try {
          final result = await action(tx);
          tx.done = true;
          executeSync('COMMIT');
          return result;
        } catch (_) {
          tx.done = true;
          executeSync('ROLLBACK');
          rethrow;
        }
      });

  @override
  Future<void> close() => _lock.run(() async {
        _closed = true;
      });
}

class _Tx implements SqlExecutor {
  _Tx(this.db);
  final SqlDatabaseBase db;
  bool done = false;

  void _live() {
    if (done) throw SqlException('the transaction has ended');
  }

  @override
  Future<void> execute(String sql, [List<Object?> params = const []]) async {
    _live();
    db.executeSync(sql, params);
  }

  @override
  Future<List<Map<String, Object?>>> select(String sql, [List<Object?> params = const []]) async {
    _live();
    return db.selectSync(sql, params).maps;
  }

  @override
  Future<void> executeMany(String sql, Iterable<List<Object?>> rows) async {
    _live();
    db.executeManySync(sql, rows);
  }
}
