/// Live queries: which tables a SELECT reads (from SQLite's own query plan,
/// `EXPLAIN`, so views, joins and subqueries count), and a stream that
/// re-runs the query only after a commit that changed one of them.
/// Web-safe: works through any [SqlDatabase].
library;

import 'dart:async';

import 'sql.dart';

/// The tables (not indexes: an index counts as its table) [sql] reads.
Future<Set<String>> tablesRead(SqlExecutor db, String sql, List<Object?> params) async {
  final plan = await db.select('EXPLAIN $sql', params);
  final pages = <Object?>{
    for (final op in plan)
      if (op['opcode'] == 'OpenRead' || op['opcode'] == 'OpenWrite') op['p2']
  };
  if (pages.isEmpty) return {};
  final marks = List.filled(pages.length, '?').join(', ');
  final rows = await db.select('SELECT tbl_name FROM sqlite_master WHERE rootpage IN ($marks)', pages.toList());
  return {for (final r in rows) r['tbl_name'] as String};
}

/// One `watch` stream: runs the query on listen, then again after each
/// commit touching its tables; commits that arrive while it runs make one
/// more run, not one each.
class WatchedQuery {
  WatchedQuery(this.db, this.sql, this.params, this.changes, {this.throttle = Duration.zero}) {
    _out = StreamController<List<Map<String, Object?>>>(onListen: _start, onCancel: _stop);
  }

  final SqlDatabase db;
  final String sql;
  final List<Object?> params;
  final Stream<Set<String>> changes;

  /// At most one run per this much time (zero: run as soon as possible).
  final Duration throttle;

  late final StreamController<List<Map<String, Object?>>> _out;
  StreamSubscription<Set<String>>? _sub;
  Set<String>? _tables;
  bool _running = false, _dirty = false, _stopped = false;

  Stream<List<Map<String, Object?>>> get stream => _out.stream;

  void _start() {
    _sub = changes.listen((tables) {
      final mine = _tables;
      if (mine == null || tables.any(mine.contains)) _kick();
    });
    _kick();
  }

  Future<void> _stop() async {
    _stopped = true;
    await _sub?.cancel();
  }

  void _kick() {
    if (_stopped) return;
    if (_running) {
      _dirty = true;
      return;
    }
    _running = true;
    unawaited(_loop());
  }

  Future<void> _loop() async {
    do {
      _dirty = false;
      try {
        _tables ??= await tablesRead(db, sql, params);
        final rows = await db.select(sql, params);
        if (!_stopped) _out.add(rows);
      } catch (e, st) {
        if (!_stopped) _out.addError(e, st);
      }
      if (throttle > Duration.zero) await Future<void>.delayed(throttle);
    } while (_dirty && !_stopped);
    _running = false;
  }
}
