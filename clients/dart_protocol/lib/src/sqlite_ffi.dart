/// [FfiSqlDatabase]: the [SqlDatabase] on the system's SQLite through
/// `dart:ffi`, with bindings for the dozen C functions it needs (no
/// package:ffi, no pub: memory comes from `sqlite3_malloc`).
///
/// Native only (Flutter iOS/Android/desktop, the Dart VM); Flutter web uses
/// an adapter on a WASM SQLite instead (see README.md).
library;

import 'dart:convert';
import 'dart:ffi';
import 'dart:typed_data';

import 'sql.dart';

final class _Db extends Opaque {}

final class _Stmt extends Opaque {}

typedef _OpenN = Int32 Function(Pointer<Uint8>, Pointer<Pointer<_Db>>, Int32, Pointer<Void>);
typedef _OpenD = int Function(Pointer<Uint8>, Pointer<Pointer<_Db>>, int, Pointer<Void>);
typedef _PrepareN = Int32 Function(Pointer<_Db>, Pointer<Uint8>, Int32, Pointer<Pointer<_Stmt>>, Pointer<Void>);
typedef _PrepareD = int Function(Pointer<_Db>, Pointer<Uint8>, int, Pointer<Pointer<_Stmt>>, Pointer<Void>);
typedef _StmtIntN = Int32 Function(Pointer<_Stmt>);
typedef _StmtIntD = int Function(Pointer<_Stmt>);
typedef _ColN<R extends NativeType> = R Function(Pointer<_Stmt>, Int32);
typedef _BindInt64N = Int32 Function(Pointer<_Stmt>, Int32, Int64);
typedef _BindInt64D = int Function(Pointer<_Stmt>, int, int);
typedef _BindDoubleN = Int32 Function(Pointer<_Stmt>, Int32, Double);
typedef _BindDoubleD = int Function(Pointer<_Stmt>, int, double);
typedef _BindBytesN = Int32 Function(Pointer<_Stmt>, Int32, Pointer<Uint8>, Int32, Pointer<Void>);
typedef _BindBytesD = int Function(Pointer<_Stmt>, int, Pointer<Uint8>, int, Pointer<Void>);

/// The C functions, looked up once per library.
class _Lib {
  _Lib(DynamicLibrary l)
      : open = l.lookupFunction<_OpenN, _OpenD>('sqlite3_open_v2'),
        close = l.lookupFunction<Int32 Function(Pointer<_Db>), int Function(Pointer<_Db>)>('sqlite3_close_v2'),
        errmsg = l.lookupFunction<Pointer<Uint8> Function(Pointer<_Db>), Pointer<Uint8> Function(Pointer<_Db>)>(
            'sqlite3_errmsg'),
        malloc = l.lookupFunction<Pointer<Uint8> Function(Int32), Pointer<Uint8> Function(int)>('sqlite3_malloc'),
        free = l.lookupFunction<Void Function(Pointer<Uint8>), void Function(Pointer<Uint8>)>('sqlite3_free'),
        changes = l.lookupFunction<Int32 Function(Pointer<_Db>), int Function(Pointer<_Db>)>('sqlite3_changes'),
        prepare = l.lookupFunction<_PrepareN, _PrepareD>('sqlite3_prepare_v2'),
        step = l.lookupFunction<_StmtIntN, _StmtIntD>('sqlite3_step'),
        reset = l.lookupFunction<_StmtIntN, _StmtIntD>('sqlite3_reset'),
        clear = l.lookupFunction<_StmtIntN, _StmtIntD>('sqlite3_clear_bindings'),
        finalize = l.lookupFunction<_StmtIntN, _StmtIntD>('sqlite3_finalize'),
        bindNull = l.lookupFunction<Int32 Function(Pointer<_Stmt>, Int32), int Function(Pointer<_Stmt>, int)>(
            'sqlite3_bind_null'),
        bindInt64 = l.lookupFunction<_BindInt64N, _BindInt64D>('sqlite3_bind_int64'),
        bindDouble = l.lookupFunction<_BindDoubleN, _BindDoubleD>('sqlite3_bind_double'),
        bindText = l.lookupFunction<_BindBytesN, _BindBytesD>('sqlite3_bind_text'),
        bindBlob = l.lookupFunction<_BindBytesN, _BindBytesD>('sqlite3_bind_blob'),
        columnCount = l.lookupFunction<_StmtIntN, _StmtIntD>('sqlite3_column_count'),
        columnName = l.lookupFunction<_ColN<Pointer<Uint8>>, Pointer<Uint8> Function(Pointer<_Stmt>, int)>(
            'sqlite3_column_name'),
        columnType = l.lookupFunction<_ColN<Int32>, int Function(Pointer<_Stmt>, int)>('sqlite3_column_type'),
        columnInt64 = l.lookupFunction<_ColN<Int64>, int Function(Pointer<_Stmt>, int)>('sqlite3_column_int64'),
        columnDouble = l.lookupFunction<_ColN<Double>, double Function(Pointer<_Stmt>, int)>('sqlite3_column_double'),
        columnText = l.lookupFunction<_ColN<Pointer<Uint8>>, Pointer<Uint8> Function(Pointer<_Stmt>, int)>(
            'sqlite3_column_text'),
        columnBlob = l.lookupFunction<_ColN<Pointer<Uint8>>, Pointer<Uint8> Function(Pointer<_Stmt>, int)>(
            'sqlite3_column_blob'),
        columnBytes = l.lookupFunction<_ColN<Int32>, int Function(Pointer<_Stmt>, int)>('sqlite3_column_bytes');

  final _OpenD open;
  final int Function(Pointer<_Db>) close;
  final Pointer<Uint8> Function(Pointer<_Db>) errmsg;
  final Pointer<Uint8> Function(int) malloc;
  final void Function(Pointer<Uint8>) free;
  final int Function(Pointer<_Db>) changes;
  final _PrepareD prepare;
  final _StmtIntD step, reset, clear, finalize, columnCount;
  final int Function(Pointer<_Stmt>, int) bindNull, columnType, columnBytes;
  final _BindInt64D bindInt64;
  final _BindDoubleD bindDouble;
  final _BindBytesD bindText, bindBlob;
  final Pointer<Uint8> Function(Pointer<_Stmt>, int) columnName, columnText, columnBlob;
  final int Function(Pointer<_Stmt>, int) columnInt64;
  final double Function(Pointer<_Stmt>, int) columnDouble;
}

const _ok = 0, _row = 100, _done = 101;
const _integer = 1, _float = 2, _text = 3, _blob = 4;

// SQLITE_TRANSIENT: SQLite copies the bound bytes at once, so one scratch
// buffer serves every bind.
final _transient = Pointer<Void>.fromAddress(-1);

String _cString(Pointer<Uint8> p) {
  if (p.address == 0) return '';
  var n = 0;
  while (p[n] != 0) {
    n++;
  }
  return utf8.decode(p.asTypedList(n));
}

/// A raised SQLite result code with the connection's message.
class SqliteException extends SqlException {
  SqliteException(this.resultCode, String message) : super('sqlite error $resultCode: $message');
  final int resultCode;
}

/// One connection to a SQLite file, used synchronously underneath the async
/// [SqlDatabase] API (the calls are short; a Flutter app that must keep the
/// UI isolate free uses the sqflite adapter, or runs this in an isolate).
class FfiSqlDatabase extends SqlDatabaseBase {
  FfiSqlDatabase._(this._lib, this._db);

  /// Opens (creating) [path]; [library] defaults to `libsqlite3.so.0` on
  /// Linux/Android and the process's own symbols elsewhere (iOS, macOS).
  factory FfiSqlDatabase.open(String path, {String? library}) {
    final lib = _Lib(_load(library));
    final out = lib.malloc(sizeOf<IntPtr>()).cast<Pointer<_Db>>();
    final name = _toC(lib, path);
    try {
      final rc = lib.open(name, out, 0x2 | 0x4, nullptr); // READWRITE | CREATE
      final db = out.value;
      if (rc != _ok) {
        final msg = _cString(lib.errmsg(db));
        lib.close(db);
        throw SqliteException(rc, 'cannot open $path: $msg');
      }
      final me = FfiSqlDatabase._(lib, db);
      // WAL: readers never block the writer, and a commit is one fsync'd append.
      me.executeSync('PRAGMA journal_mode=WAL');
      me.executeSync('PRAGMA synchronous=NORMAL');
      me.executeSync('PRAGMA busy_timeout=5000');
      return me;
    } finally {
      lib.free(name);
      lib.free(out.cast());
    }
  }

  static DynamicLibrary _load(String? library) {
    if (library != null) return DynamicLibrary.open(library);
    try {
      return DynamicLibrary.open('libsqlite3.so.0');
    } on ArgumentError {
      return DynamicLibrary.process();
    }
  }

  static Pointer<Uint8> _toC(_Lib lib, String s) {
    final bytes = utf8.encode(s);
    final p = lib.malloc(bytes.length + 1);
    p.asTypedList(bytes.length + 1)
      ..setAll(0, bytes)
      ..[bytes.length] = 0;
    return p;
  }

  final _Lib _lib;
  Pointer<_Db> _db;
  final Map<String, Pointer<_Stmt>> _cache = {};
  Pointer<Uint8> _scratch = nullptr;
  int _scratchSize = 0;

  Pointer<_Stmt> _prepare(String sql) {
    final cached = _cache[sql];
    if (cached != null) return cached;
    if (_db.address == 0) throw SqlException('the database is closed');
    final text = _toC(_lib, sql);
    final out = _lib.malloc(sizeOf<IntPtr>()).cast<Pointer<_Stmt>>();
    try {
      final rc = _lib.prepare(_db, text, -1, out, nullptr);
      if (rc != _ok) throw SqliteException(rc, '${_cString(_lib.errmsg(_db))} in: $sql');
      final stmt = out.value;
      if (stmt.address == 0) throw SqlException('no statement in: $sql');
      if (_cache.length > 200) _dropCache();
      return _cache[sql] = stmt;
    } finally {
      _lib.free(text);
      _lib.free(out.cast());
    }
  }

  void _dropCache() {
    for (final s in _cache.values) {
      _lib.finalize(s);
    }
    _cache.clear();
  }

  Pointer<Uint8> _bytes(List<int> b) {
    if (b.length > _scratchSize) {
      if (_scratchSize > 0) _lib.free(_scratch);
      _scratchSize = b.length < 4096 ? 4096 : b.length * 2;
      _scratch = _lib.malloc(_scratchSize);
    }
    _scratch.asTypedList(b.length).setAll(0, b);
    return _scratch;
  }

  // Most wire text is ASCII: copied straight into the native buffer, without
  // the intermediate list utf8.encode makes.
  int _bindText(Pointer<_Stmt> stmt, int at, String v) {
    final n = v.length;
    if (n >= _scratchSize) _bytes(Uint8List(n + 1)); // never the null pointer: '' is not NULL
    final buf = _scratch.asTypedList(n);
    for (var i = 0; i < n; i++) {
      final c = v.codeUnitAt(i);
      if (c > 127) {
        final b = utf8.encode(v);
        return _lib.bindText(stmt, at, _bytes(b), b.length, _transient);
      }
      buf[i] = c;
    }
    return _lib.bindText(stmt, at, _scratch, n, _transient);
  }

  void _bind(Pointer<_Stmt> stmt, List<Object?> params) {
    for (var i = 0; i < params.length; i++) {
      final v = params[i];
      final at = i + 1;
      final int rc;
      if (v == null) {
        rc = _lib.bindNull(stmt, at);
      } else if (v is int) {
        rc = _lib.bindInt64(stmt, at, v);
      } else if (v is String) {
        rc = _bindText(stmt, at, v);
      } else if (v is bool) {
        rc = _lib.bindInt64(stmt, at, v ? 1 : 0);
      } else if (v is double) {
        rc = _lib.bindDouble(stmt, at, v);
      } else if (v is Uint8List) {
        rc = _lib.bindBlob(stmt, at, _bytes(v), v.length, _transient);
      } else {
        throw ArgumentError.value(v, 'params[$i]', 'not a SQLite value (int, double, String, bool, Uint8List, null)');
      }
      if (rc != _ok) throw SqliteException(rc, _cString(_lib.errmsg(_db)));
    }
  }

  Object? _column(Pointer<_Stmt> stmt, int i) {
    switch (_lib.columnType(stmt, i)) {
      case _integer:
        return _lib.columnInt64(stmt, i);
      case _float:
        return _lib.columnDouble(stmt, i);
      case _text:
        final p = _lib.columnText(stmt, i);
        return utf8.decode(p.asTypedList(_lib.columnBytes(stmt, i)));
      case _blob:
        final n = _lib.columnBytes(stmt, i);
        return n == 0 ? Uint8List(0) : Uint8List.fromList(_lib.columnBlob(stmt, i).asTypedList(n));
      default:
        return null;
    }
  }

  /// Runs one statement to its end; returns the rows it produced.
  SqlResult _run(String sql, List<Object?> params, {bool wantRows = true}) {
    final stmt = _prepare(sql);
    try {
      _bind(stmt, params);
      final rows = <List<Object?>>[];
      var n = -1;
      var cols = const <String>[];
      while (true) {
        final rc = _lib.step(stmt);
        if (rc != _done && rc != _row) throw SqliteException(rc, '${_cString(_lib.errmsg(_db))} in: $sql');
        if (!wantRows) {
          if (rc == _done) break;
          continue;
        }
        if (n < 0) {
          // After the first step, not before: a cached `SELECT *` is
          // re-prepared by that step when the table changed shape since.
          n = _lib.columnCount(stmt);
          cols = [for (var i = 0; i < n; i++) _cString(_lib.columnName(stmt, i))];
        }
        if (rc == _done) break;
        rows.add(List<Object?>.generate(n, (i) => _column(stmt, i), growable: false));
      }
      return SqlResult(cols, rows);
    } finally {
      _lib.reset(stmt);
      _lib.clear(stmt);
    }
  }

  @override
  void executeSync(String sql, [List<Object?> params = const []]) => _run(sql, params, wantRows: false);

  @override
  SqlResult selectSync(String sql, [List<Object?> params = const []]) => _run(sql, params);

  /// The bulk path of a batch: one prepared statement, bind-step-reset per
  /// row (clear_bindings is not needed: every row binds every parameter).
  @override
  void executeManySync(String sql, Iterable<List<Object?>> rows) {
    final stmt = _prepare(sql);
    try {
      for (final p in rows) {
        _bind(stmt, p);
        final rc = _lib.step(stmt);
        if (rc != _done && rc != _row) throw SqliteException(rc, '${_cString(_lib.errmsg(_db))} in: $sql');
        _lib.reset(stmt);
      }
    } finally {
      _lib.reset(stmt);
      _lib.clear(stmt);
    }
  }

  /// Rows changed by the last INSERT, UPDATE or DELETE.
  int get changes => _lib.changes(_db);

  @override
  Future<void> close() async {
    await super.close();
    if (_db.address == 0) return;
    _dropCache();
    if (_scratchSize > 0) _lib.free(_scratch);
    _scratchSize = 0;
    _lib.close(_db);
    _db = nullptr;
  }
}
