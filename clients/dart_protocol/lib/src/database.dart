/// [SyncDatabase]: the object an app talks to. A SQLite file holding the
/// device's datasets as tables, live queries on it (`watch`), writes as
/// mutations with an optimistic local change (`mutate`), a status stream,
/// and credentials from the app's [SyncConnector].
library;

import 'dart:async';

import 'client.dart';
import 'errors.dart';
import 'messages.dart';
import 'sql.dart';
import 'sqlite_outbox.dart';
import 'sqlite_store.dart';
import 'state.dart';
import 'store.dart';
import 'uuid.dart';
import 'watch.dart';

/// Where to sync and as whom. [expiresAt]: when the token stops working
/// (null: unknown; it is then fetched again only after `AUTH_INVALID`).
class SyncCredentials {
  SyncCredentials({required this.endpoint, required this.token, this.expiresAt});
  final Uri endpoint;
  final String token;
  final DateTime? expiresAt;
}

/// The app's side of authentication: sign in / refresh and hand over a token.
abstract class SyncConnector {
  /// Called on connect, when the last token expires (30 s early), and after
  /// the server refused it (`AUTH_INVALID`, `AUTH_REQUIRED`).
  Future<SyncCredentials> fetchCredentials();
}

/// What a sync indicator shows.
class SyncDbStatus {
  const SyncDbStatus({
    this.connected = false,
    this.connecting = false,
    this.downloading = false,
    this.rowsDownloaded = 0,
    this.rowsExpected = 0,
    this.uploading = false,
    this.pending = 0,
    this.rejected = 0,
    this.lastError,
    this.lastSyncedAt,
  });

  /// Live on the WebSocket (changes arrive as they happen).
  final bool connected;
  final bool connecting;

  /// Catching up (a snapshot or a backlog of changes).
  final bool downloading;

  /// Rows and deletes applied since this connection began.
  final int rowsDownloaded;

  /// Rows the snapshots begun on this connection hold (the server's `expected`
  /// when each began; 0 when no snapshot began): progress is
  /// [rowsDownloaded] / [rowsExpected] while [downloading].
  final int rowsExpected;

  /// A push is in flight.
  final bool uploading;

  /// Mutations not yet answered by the server.
  final int pending;

  /// Rejected mutations still shown to the user (until `dismiss`).
  final int rejected;
  final Object? lastError;

  /// When the local copy last reached a consistent checkpoint (`more = false`).
  final DateTime? lastSyncedAt;

  @override
  String toString() => 'SyncDbStatus(${connected ? 'connected' : connecting ? 'connecting' : 'offline'}'
      '${downloading ? ', downloading $rowsDownloaded${rowsExpected > 0 ? ' of $rowsExpected' : ''} rows' : ''}${uploading ? ', uploading' : ''}, '
      '$pending pending, $rejected rejected${lastError == null ? '' : ', error: $lastError'})';
}

class SyncDatabase {
  SyncDatabase._(this.sql, this.store);

  /// Opens the store on [sql] (e.g. `FfiSqlDatabase.open(path)`); works
  /// offline at once: the tables, cursor and outbox of the last session.
  static Future<SyncDatabase> open(SqlDatabase sql) async => SyncDatabase._(sql, await SqliteStore.open(sql));

  final SqlDatabase sql;
  final SqliteStore store;
  SqliteOutbox get outbox => store.outbox;

  SyncClient? _client;
  SyncConnector? _connector;
  SyncCredentials? _credentials;
  final _status = StreamController<SyncDbStatus>.broadcast();
  SyncDbStatus _current = const SyncDbStatus();
  final List<StreamSubscription<Object?>> _subs = [];
  Timer? _settle;

  /// The sync client, once [connect]ed.
  SyncClient? get client => _client;
  SyncDbStatus get currentStatus => _current;
  Stream<SyncDbStatus> get status => _status.stream;

  // --- reading ----------------------------------------------------------------

  Future<List<Map<String, Object?>>> getAll(String query, [List<Object?> params = const []]) =>
      sql.select(query, params);

  /// The first row, or null.
  Future<Map<String, Object?>?> get(String query, [List<Object?> params = const []]) async {
    final rows = await sql.select(query, params);
    return rows.isEmpty ? null : rows.first;
  }

  /// [query]'s rows now, then again after every commit that changed a table
  /// it reads (synced batches, optimistic writes, rollbacks). Values are as
  /// SQLite stores them: bools 0/1, `json` columns as JSON text.
  Stream<List<Map<String, Object?>>> watch(String query,
          {List<Object?> params = const [], Duration throttle = Duration.zero}) =>
      WatchedQuery(sql, query, params, store.tableChanges, throttle: throttle).stream;

  /// The rejected mutations (code, message, args), live, for the app to show.
  Stream<List<OutboxEntry>> get rejections => store.tableChanges
      .where((t) => t.contains(outboxTable))
      .map((_) => null)
      .transform(StreamTransformer<Null, List<OutboxEntry>>.fromBind((s) async* {
        yield await _rejected();
        await for (final _ in s) {
          yield await _rejected();
        }
      }));

  Future<List<OutboxEntry>> _rejected() async =>
      [for (final e in await outbox.entries()) if (e.status == OutboxStatus.rejected) e];

  /// The app showed the rejection: forget it.
  Future<void> dismiss(int mutationId) async {
    await outbox.dismiss(mutationId);
    await _client?.outboxChanged();
  }

  // --- writing ----------------------------------------------------------------

  /// Queues mutation [name] and, in the same transaction, the app's
  /// [optimistic] change of the synced tables (shown at once by every
  /// `watch`). When the server answers, the change gives way to the server's
  /// rows (applied) or is rolled back (rejected; see [rejections]).
  Future<OutboxEntry> mutate(String name, Map<String, Object?> args, {Optimistic? optimistic}) async {
    final entry = await outbox.enqueueWith(name, args, optimistic: optimistic);
    await _client?.outboxChanged();
    return entry;
  }

  // --- syncing ----------------------------------------------------------------

  /// Starts syncing with the connector's server: fetches the schema (when
  /// online), then keeps the store live, reconnecting by itself.
  Future<void> connect(SyncConnector connector, {String Function()? newClientId, bool useWebSocket = true}) async {
    if (_client != null) return;
    _connector = connector;
    final creds = await _token();
    final id = await store.clientId(newClientId ?? () => 'app-${uuidV4()}');
    final client = _client = SyncClient(
        server: creds.endpoint,
        token: () async => (await _token()).token,
        clientId: id,
        store: store,
        outbox: outbox,
        useWebSocket: useWebSocket,
        backoff: Backoff(initial: const Duration(milliseconds: 200), max: const Duration(seconds: 30)));
    _subs
      ..add(client.status.listen(_onStatus))
      ..add(client.outboxState.listen(_onOutbox))
      ..add(client.results.listen(_onResult));
    try {
      await store.useSchema(await client.http.schema());
    } on Exception {
      // offline: the tables of the last schema are there; fetched next time
    }
    client.start();
  }

  Future<SyncCredentials> _token() async {
    final c = _credentials;
    final expiry = c?.expiresAt;
    if (c != null && (expiry == null || DateTime.now().isBefore(expiry.subtract(const Duration(seconds: 30))))) {
      return c;
    }
    final connector = _connector ?? (throw StateError('not connected'));
    return _credentials = await connector.fetchCredentials();
  }

  void _onStatus(SyncStatus s) {
    final e = s.error;
    if (e is SyncServerException && (e.code == ErrorCode.authInvalid || e.code == ErrorCode.authRequired)) {
      _credentials = null; // the next attempt asks the connector again
    }
    _emit(SyncDbStatus(
        connected: s.state == SyncState.live,
        connecting: s.state == SyncState.connecting,
        downloading: s.state == SyncState.catchingUp || (s.state == SyncState.live && !s.upToDate),
        rowsDownloaded: s.rows,
        rowsExpected: s.rowsExpected,
        uploading: _current.uploading,
        pending: _current.pending,
        rejected: _current.rejected,
        lastError: e,
        lastSyncedAt: s.lastCheckpoint ?? _current.lastSyncedAt));
  }

  void _onOutbox(OutboxState o) => _emit(SyncDbStatus(
      connected: _current.connected,
      connecting: _current.connecting,
      downloading: _current.downloading,
      rowsDownloaded: _current.rowsDownloaded,
      rowsExpected: _current.rowsExpected,
      uploading: o.inFlight.isNotEmpty,
      pending: o.pending,
      rejected: o.rejected.length,
      lastError: _current.lastError,
      lastSyncedAt: _current.lastSyncedAt));

  void _emit(SyncDbStatus s) {
    _current = s;
    if (!_status.isClosed) _status.add(s);
  }

  /// An applied mutation's effects usually come in the next batch, which
  /// replaces its optimistic rows; over the WebSocket they may have come
  /// before the result, so settle a moment later if no batch does.
  void _onResult(MutationResult r) {
    if (!r.applied) return;
    _settle?.cancel();
    _settle = Timer(const Duration(seconds: 1), () => unawaited(store.settle().catchError((Object _) {})));
  }

  /// Completes when [test] holds for the status (now or later).
  Future<SyncDbStatus> waitFor(bool Function(SyncDbStatus) test, {Duration timeout = const Duration(seconds: 30)}) {
    if (test(_current)) return Future.value(_current);
    return status.firstWhere(test).timeout(timeout);
  }

  /// Stops syncing (the store stays usable offline).
  Future<void> disconnect() async {
    final client = _client;
    _client = null;
    _settle?.cancel();
    for (final s in _subs) {
      await s.cancel();
    }
    _subs.clear();
    await client?.close();
    _emit(SyncDbStatus(
        pending: _current.pending,
        rejected: _current.rejected,
        lastError: _current.lastError,
        lastSyncedAt: _current.lastSyncedAt));
  }

  Future<void> close() async {
    await disconnect();
    await store.close();
    await _status.close();
    await sql.close();
  }
}
