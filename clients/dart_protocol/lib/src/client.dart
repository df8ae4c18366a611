/// [SyncClient]: keeps a [LocalStore] in sync with the server and drains an
/// [Outbox], over the WebSocket when it can and over HTTP when it cannot.
/// The decisions are [LiveProtocol]'s (sans-I/O); this drives it: frames in,
/// actions out, the store and outbox awaited in between. No `dart:io` here:
/// the default transports come through a conditional import.
library;

import 'dart:async';
import 'dart:math';

import 'default_transports_none.dart' if (dart.library.io) 'default_transports.dart';
import 'errors.dart';
import 'messages.dart';
import 'protocol.dart';
import 'state.dart';
import 'store.dart';
import 'transport_api.dart';

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
    SyncHttp? http,
    LiveConnector? webSocket,
  })  : http = http ?? defaultHttp(server, token),
        webSocket = webSocket ?? defaultLive(server, token),
        protocol = LiveProtocol(pushChunk: pushChunk, pingInterval: pingInterval, backoff: backoff);

  /// This install's id; store it with the outbox (mutation ids count per client).
  final String clientId;
  final LocalStore store;
  final Outbox outbox;
  final SyncHttp http;
  final LiveConnector webSocket;

  /// The protocol decisions (push chunk, back-off, live, acks).
  final LiveProtocol protocol;
  Backoff get backoff => protocol.backoff;

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
  bool _wanted = false;
  Future<void>? _loop;
  Completer<void>? _wake;
  LiveSession? _live;
  Timer? _pushTimer; // a push refused for now goes again when it fires

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
    await _live?.close(1000, 'client stopped');
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
    await outboxChanged();
    return entry;
  }

  /// The outbox was written behind the client's back (e.g. by
  /// `SqliteOutbox.enqueueWith` with an optimistic change): push it.
  Future<void> outboxChanged() async {
    await _emitOutbox();
    final live = _live;
    if (live != null) unawaited(_drive(live, protocol.handle(const OutboxChanged())));
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
      Object? failure;
      int? closeCode;
      String? closeReason;
      _move(SyncState.connecting, rows: 0, batches: 0, upToDate: false, error: null);
      protocol.connected(DateTime.now());
      try {
        LiveSession? session;
        if (useWebSocket) {
          try {
            session = await webSocket.connect(clientId: clientId, cursor: await store.readCursor());
          } on TransportException catch (e) {
            failure = e; // cannot connect: fall back to HTTP below
          }
        }
        if (session != null) {
          await _session(session);
          closeCode = session.closeCode;
          closeReason = session.closeReason;
        } else if (_wanted) {
          await _httpRound();
        }
      } on Object catch (e) {
        failure = e;
      }
      if (state == SyncState.closed) return;
      if (state != SyncState.offline) _move(SyncState.offline);
      if (!_wanted) break;
      switch (protocol.closed(closeCode: closeCode, closeReason: closeReason, failure: failure)) {
        case GiveUp(:final error):
          _wanted = false; // reconnecting cannot help: the app must act
          _move(SyncState.offline, error: error);
        case RetryAfter(:final delay, :final error):
          _move(SyncState.offline, error: error, retryIn: delay);
          final wake = _wake = Completer<void>();
          final timer = Timer(delay, _wakeUp);
          await wake.future;
          timer.cancel();
          _wake = null;
      }
    }
  }

  /// Runs one WebSocket connection to its end.
  Future<void> _session(LiveSession s) async {
    if (!_wanted) {
      await s.close(1000, 'client stopped');
      return;
    }
    _live = s;
    _move(SyncState.catchingUp, transport: TransportKind.webSocket);
    final pinger = Timer.periodic(pingInterval, (_) => unawaited(_drive(s, protocol.handle(Tick(DateTime.now())))));
    try {
      await _frames(s);
    } finally {
      pinger.cancel();
      _pushTimer?.cancel();
      _pushTimer = null;
      if (identical(_live, s)) _live = null;
      await s.close(); // the server closed: finish the handshake so the socket is released
    }
    await _emitOutbox();
  }

  /// Feeds the session's frames to the protocol until the socket ends, and
  /// carries out the actions in arrival order. The socket is read without
  /// pausing unless [_maxQueued] frames wait for the store: dart:io never
  /// releases a WebSocket whose close frame arrives while it is paused (an
  /// `await for` pauses it during every apply: one leaked socket per session
  /// the server closed mid-batch).
  Future<void> _frames(LiveSession s) {
    final done = Completer<void>();
    var chain = Future<void>.value();
    var queued = 0;
    late final StreamSubscription<Frame> sub;
    void finish() {
      if (!done.isCompleted) done.complete(chain);
    }

    sub = s.frames.listen((frame) {
      final actions = protocol.handle(FrameReceived(frame, DateTime.now()));
      if (actions.isEmpty) return;
      if (++queued > _maxQueued) sub.pause(); // the store is behind: let TCP push back
      chain = chain.then((_) => _drive(s, actions)).whenComplete(() {
        if (--queued <= _maxQueued && sub.isPaused) sub.resume();
      });
    }, onError: (Object e) {
      protocol.error ??= e;
      if (e is ProtocolException) unawaited(s.close(1002, 'protocol error'));
    }, onDone: finish);
    return done.future;
  }

  static const _maxQueued = 8;

  /// Carries out [actions] in order, feeding back what they produce. Runs
  /// unawaited from timers and the outbox too, so it never throws: a store
  /// or outbox failure ends the connection with that error.
  Future<void> _drive(LiveSession s, List<SyncAction> actions) async {
    for (final a in actions) {
      if (!identical(_live, s) || state == SyncState.closed) return;
      try {
        switch (a) {
          case SendFrame(:final frame):
            s.send(frame);
          case ApplyBatch(:final batch):
            await _apply(batch);
            await _drive(s, protocol.handle(BatchStored(batch)));
          case GoLive():
            _move(SyncState.live);
          case ReadOutbox():
            await _drive(s, protocol.handle(OutboxRead(await outbox.pending())));
          case RecordResults(:final results):
            await _markResults(results);
            await _drive(s, protocol.handle(const ResultsRecorded()));
          case InFlightChanged():
            await _emitOutbox();
          case RetryPushIn(:final delay):
            _pushTimer?.cancel();
            _pushTimer = Timer(delay, () => unawaited(_drive(s, protocol.handle(const PushDue()))));
          case CloseConnection(:final code, :final reason):
            await s.close(code, reason);
        }
      } on Object catch (e) {
        protocol.error ??= e;
        await s.close(1011, 'client failure');
        return;
      }
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
      final chunk = pending.take(protocol.chunk).toList();
      _outboxState = OutboxState(
          pending: _outboxState.pending, rejected: _outboxState.rejected, inFlight: [for (final m in chunk) m.id]);
      final PushResponse response;
      try {
        response = await http.push(PushRequest(clientId: clientId, mutations: chunk));
      } on SyncServerException catch (e) {
        protocol.pushRefused(e.code);
        rethrow;
      }
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
        rowsExpected: _status.rowsExpected + batch.expected.values.fold<int>(0, (n, e) => n + e),
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
      inFlight: _live == null ? const [] : protocol.inFlight,
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
        rowsExpected: rows == 0 ? 0 : _status.rowsExpected, // a new connection counts afresh
        batches: batches ?? _status.batches,
        upToDate: upToDate ?? _status.upToDate,
        error: identical(error, _keep) ? _status.error : error,
        retryIn: retryIn as Duration?,
        lastCheckpoint: _status.lastCheckpoint);
    if (!_statusCtl.isClosed) _statusCtl.add(_status);
  }
}
