/// [SyncClient]: keeps a [LocalStore] in sync with the server and drains an
/// [Outbox], over the WebSocket when it can and over HTTP when it cannot.
library;

import 'dart:async';
import 'dart:math';

import 'errors.dart';
import 'messages.dart';
import 'state.dart';
import 'store.dart';
import 'transport.dart';

/// The per-connection push bookkeeping: one push frame in flight at a time.
class _Live {
  _Live(this.session);
  final WebSocketSession session;
  bool busy = false; // a push frame is out (or being built)
  bool blocked = false; // the server answered a push with an error frame: wait for the next connection
  List<int> inFlight = const [];
  Object? error;
}

class SyncClient {
  SyncClient({
    required Uri server,
    required TokenSource token,
    required this.clientId,
    required this.store,
    required this.outbox,
    this.useWebSocket = true,
    this.pingInterval = const Duration(seconds: 25),
    this.pushChunk = 100,
    this.pullLimit,
    Backoff? backoff,
    HttpTransport? http,
    WebSocketTransport? webSocket,
  })  : http = http ?? HttpTransport(server, token),
        webSocket = webSocket ?? WebSocketTransport(server, token),
        backoff = backoff ?? Backoff(),
        _chunk = pushChunk;

  /// This install's id; store it with the outbox (mutation ids count per client).
  final String clientId;
  final LocalStore store;
  final Outbox outbox;
  final HttpTransport http;
  final WebSocketTransport webSocket;
  final Backoff backoff;

  /// false: HTTP only (pull, push, pull), e.g. for a background fetch.
  final bool useWebSocket;

  /// A ping goes out this often; no frame for twice as long drops the connection.
  final Duration pingInterval;

  /// Most mutations per push (the server takes up to 500).
  final int pushChunk;

  /// Rows per HTTP pull (server default when null).
  final int? pullLimit;

  final _machine = SyncStateMachine();
  final _statusCtl = StreamController<SyncStatus>.broadcast();
  final _changesCtl = StreamController<DatasetChange>.broadcast();
  final _outboxCtl = StreamController<OutboxState>.broadcast();
  final _resultsCtl = StreamController<MutationResult>.broadcast();
  SyncStatus _status = const SyncStatus(SyncState.offline);
  OutboxState _outboxState = const OutboxState(pending: 0, rejected: [], inFlight: []);
  int _chunk;
  bool _wanted = false;
  Future<void>? _loop;
  Completer<void>? _wake;
  _Live? _live;

  SyncState get state => _machine.state;
  SyncStatus get currentStatus => _status;
  OutboxState get currentOutbox => _outboxState;

  /// Every state change and applied batch (catch-up progress in [SyncStatus.rows]).
  Stream<SyncStatus> get status => _statusCtl.stream;

  /// What each applied batch changed, per dataset, after its commit.
  Stream<DatasetChange> get changes => _changesCtl.stream;
  Stream<DatasetChange> changesOf(String dataset) => changes.where((c) => c.dataset == dataset);

  /// Pending count, rejections and in-flight ids, after every change.
  Stream<OutboxState> get outboxState => _outboxCtl.stream;

  /// Every answer the server gave to a mutation (applied with its result,
  /// e.g. the order number, or rejected with a code), after it was recorded.
  Stream<MutationResult> get results => _resultsCtl.stream;

  // --- control --------------------------------------------------------------------

  /// Starts syncing and keeps at it (reconnecting with back-off) until [stop].
  /// While waiting to reconnect, calling it again retries at once.
  void start() {
    if (state == SyncState.closed) throw StateError('the client is closed');
    _wanted = true;
    _loop ??= _run().whenComplete(() {
      _loop = null;
      if (_wanted && state != SyncState.closed) start(); // a start() that raced with a stop()
    });
    _wakeUp();
  }

  void _wakeUp() {
    final wake = _wake;
    if (wake != null && !wake.isCompleted) wake.complete();
  }

  /// Disconnects and stays offline (the outbox keeps filling) until [start].
  Future<void> stop() async {
    _wanted = false;
    _wakeUp();
    await _live?.session.close(1000, 'client stopped');
    await _loop;
  }

  /// Stops for good and closes the streams.
  Future<void> close() async {
    if (state == SyncState.closed) return;
    await stop();
    _move(SyncState.closed);
    http.close(force: true);
    await Future.wait([_statusCtl.close(), _changesCtl.close(), _outboxCtl.close(), _resultsCtl.close()]);
  }

  /// One HTTP round without the WebSocket (pull to `more = false`, push the
  /// outbox, pull again): e.g. a background fetch. Only while stopped.
  Future<void> syncOverHttp() async {
    if (_loop != null) throw StateError('the client is running; stop() it first');
    _move(SyncState.connecting, transport: TransportKind.http);
    try {
      await _httpRound();
    } finally {
      if (state != SyncState.closed) _move(SyncState.offline);
    }
  }

  /// Queues a mutation durably (the id is fixed now), then pushes it if
  /// live; while waiting to reconnect, a new write makes the attempt now.
  Future<OutboxEntry> enqueue(String name, Map<String, Object?> args) async {
    final entry = await outbox.enqueue(name, args);
    await _emitOutbox();
    unawaited(_pushNext());
    if (_wanted && state == SyncState.offline) _wakeUp();
    return entry;
  }

  /// The outbox was written behind the client's back (e.g. by
  /// `SqliteOutbox.enqueueWith` with an optimistic change): push it.
  Future<void> outboxChanged() async {
    await _emitOutbox();
    unawaited(_pushNext());
    if (_wanted && state == SyncState.offline) _wakeUp();
  }

  /// The app showed a rejection to the user: drop it from the outbox.
  Future<void> dismiss(int mutationId) async {
    await outbox.dismiss(mutationId);
    await _emitOutbox();
  }

  /// Completes with the first status (current or future) that passes [test].
  Future<SyncStatus> waitFor(bool Function(SyncStatus) test, {Duration timeout = const Duration(seconds: 30)}) {
    if (test(_status)) return Future.value(_status);
    return status.firstWhere(test).timeout(timeout);
  }

  // --- the loop -----------------------------------------------------------------------

  Future<void> _run() async {
    while (_wanted) {
      Object? error;
      var wentLive = false;
      _move(SyncState.connecting, rows: 0, batches: 0, upToDate: false, error: null);
      try {
        WebSocketSession? session;
        if (useWebSocket) {
          try {
            session = await webSocket.connect(clientId: clientId, cursor: await store.readCursor());
          } on TransportException catch (e) {
            error = e; // cannot connect: fall back to HTTP below
          }
        }
        if (session != null) {
          final live = _live = _Live(session);
          wentLive = await _session(live);
          error = live.error;
        } else if (_wanted) {
          await _httpRound();
        }
      } on Object catch (e) {
        error = e;
      }
      if (state == SyncState.closed) return;
      if (state != SyncState.offline) _move(SyncState.offline);
      if (!_wanted) break;
      if (error is SyncServerException &&
          (error.code == ErrorCode.revoked || error.code == ErrorCode.unsupportedVersion)) {
        _wanted = false; // reconnecting cannot help: the app must act
        _move(SyncState.offline, error: error);
        break;
      }
      if (wentLive) backoff.reset();
      var delay = backoff.next();
      if (error is SyncServerException && error.retryAfter != null) {
        delay = Duration(microseconds: max(delay.inMicroseconds, error.retryAfter! * 1000000));
      }
      _move(SyncState.offline, error: error, retryIn: delay);
      final wake = _wake = Completer<void>();
      final timer = Timer(delay, _wakeUp);
      await wake.future;
      timer.cancel();
      _wake = null;
    }
  }

  /// Runs one WebSocket connection to its end; true if it reached live.
  Future<bool> _session(_Live live) async {
    final s = live.session;
    if (!_wanted) {
      await s.close(1000, 'client stopped');
      return false;
    }
    _move(SyncState.catchingUp, transport: TransportKind.webSocket);
    var wentLive = false;
    var lastFrame = DateTime.now();
    final pinger = Timer.periodic(pingInterval, (_) {
      if (DateTime.now().difference(lastFrame) > pingInterval * 2) {
        live.error = TransportException('no frame from the server for ${pingInterval * 2}');
        s.close(4000, 'stalled');
      } else {
        s.send(const PingFrame());
      }
    });
    try {
      await for (final frame in s.frames) {
        lastFrame = DateTime.now();
        switch (frame) {
          case ChangesFrame(:final batch):
            await _apply(batch);
            s.send(AckFrame(batch.cursor));
            if (!batch.more && state == SyncState.catchingUp) {
              _move(SyncState.live);
              wentLive = true;
              unawaited(_pushNext());
            }
          case ResultsFrame(:final results):
            live
              ..busy = false
              ..blocked = false
              ..inFlight = const [];
            await _markResults(results);
            unawaited(_pushNext());
          case ErrorFrame():
            live.error = frame.toException();
            if (live.busy) {
              // Most likely our push was refused whole (e.g. too large): not again on this connection.
              live
                ..busy = false
                ..blocked = true
                ..inFlight = const [];
              if (frame.errorCode == ErrorCode.payloadTooLarge) _chunk = max(1, _chunk ~/ 2);
              await _emitOutbox();
            }
          case PongFrame():
            break;
          default:
            throw ProtocolException('the server sent a `${frame.type}` frame');
        }
      }
    } on ProtocolException catch (e) {
      live.error = e;
      await s.close(1002, 'protocol error');
    } on TransportException catch (e) {
      live.error ??= e;
    } finally {
      pinger.cancel();
      if (identical(_live, live)) _live = null;
    }
    final code = s.closeCode;
    if (live.error == null && code != null && code != 1000 && code != 1001 && code != 1005) {
      live.error = SyncServerException(ErrorCode.fromClose(code)?.wire ?? 'CLOSED_$code', s.closeReason ?? '',
          closeCode: code);
    }
    await _emitOutbox();
    return wentLive;
  }

  /// Sends the next push frame if live and none is in flight. Never throws
  /// (it runs unawaited): a failing outbox shows in the status instead.
  Future<void> _pushNext() async {
    final live = _live;
    if (live == null || state != SyncState.live || live.busy || live.blocked) return;
    live.busy = true;
    try {
      final pending = await outbox.pending();
      if (pending.isEmpty || !identical(live, _live) || !live.session.isOpen) {
        live.busy = false;
        return;
      }
      final chunk = pending.take(_chunk).toList();
      live.inFlight = [for (final m in chunk) m.id];
      live.session.send(PushFrame(chunk));
      await _emitOutbox();
    } on Object catch (e) {
      live.busy = false;
      if (state != SyncState.closed) _move(state, error: e);
    }
  }

  // --- HTTP -------------------------------------------------------------------------

  Future<void> _httpRound() async {
    _move(SyncState.catchingUp, transport: TransportKind.http);
    await _pullToEnd();
    var pushed = false;
    while (true) {
      final pending = await outbox.pending();
      if (pending.isEmpty) break;
      final chunk = pending.take(_chunk).toList();
      _outboxState = OutboxState(
          pending: _outboxState.pending, rejected: _outboxState.rejected, inFlight: [for (final m in chunk) m.id]);
      final response = await http.push(PushRequest(clientId: clientId, mutations: chunk));
      final sent = chunk.map((m) => m.id).toSet();
      await _markResults(response.results);
      pushed = true;
      if (!response.results.any((r) => sent.contains(r.id))) {
        throw ProtocolException('push answered none of mutations ${sent.first}..${sent.last}');
      }
    }
    if (pushed) await _pullToEnd(); // read your writes
  }

  Future<void> _pullToEnd() async {
    while (true) {
      final response =
          await http.pull(PullRequest(clientId: clientId, cursor: await store.readCursor(), limit: pullLimit));
      await _apply(response);
      if (!response.more) return;
    }
  }

  // --- shared -----------------------------------------------------------------------

  Future<void> _apply(PullResponse batch) async {
    final changed = await store.applyBatch(batch); // one transaction: data and cursor
    _status = _status.copyWith(
        rows: _status.rows + batch.size,
        batches: _status.batches + 1,
        upToDate: !batch.more,
        lastCheckpoint: batch.more ? null : DateTime.now());
    _statusCtl.add(_status);
    for (final c in changed) {
      _changesCtl.add(c);
    }
  }

  Future<void> _markResults(List<MutationResult> results) async {
    for (final r in results) {
      await outbox.markResult(r.id, r);
      _resultsCtl.add(r);
    }
    await _emitOutbox();
  }

  Future<void> _emitOutbox() async {
    final entries = await outbox.entries();
    _outboxState = OutboxState(
      pending: entries.where((e) => e.status == OutboxStatus.pending).length,
      rejected: [for (final e in entries) if (e.status == OutboxStatus.rejected) e],
      inFlight: _live?.inFlight ?? const [],
    );
    if (!_outboxCtl.isClosed) _outboxCtl.add(_outboxState);
  }

  static const Object _keep = Object();

  void _move(SyncState to,
      {TransportKind? transport, int? rows, int? batches, bool? upToDate, Object? error = _keep, Object? retryIn}) {
    if (to != state) _machine.moveTo(to);
    _status = SyncStatus(to,
        transport: to == SyncState.offline ? TransportKind.none : (transport ?? _status.transport),
        rows: rows ?? _status.rows,
        batches: batches ?? _status.batches,
        upToDate: upToDate ?? _status.upToDate,
        error: identical(error, _keep) ? _status.error : error,
        retryIn: retryIn as Duration?,
        lastCheckpoint: _status.lastCheckpoint);
    if (!_statusCtl.isClosed) _statusCtl.add(_status);
  }
}
