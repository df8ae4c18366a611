/// The live sync protocol without I/O: [LiveProtocol] is fed events (a frame
/// arrived, a batch was stored, the outbox was read, a timer fired, the
/// connection ended) and returns the actions to take (send a frame, store a
/// batch, read the outbox, record results, close, reconnect after a delay).
/// No sockets, no store, no clock of its own: `SyncClient` drives it, and
/// test/protocol_test.dart feeds it by hand. Web-safe.
///
/// The rules it holds: ack a batch only after it is stored; live at the
/// first `more = false`; one push in flight; a push refused whole
/// (an error frame while it is out) is not resent on this connection, and
/// `PAYLOAD_TOO_LARGE` halves the chunk, except a push refused for now
/// (`RATE_LIMITED` or `UNAVAILABLE` with `retry_after`): that one is resent
/// on the same connection after `retry_after` plus jitter; a ping every
/// interval and a drop after two intervals of silence; reconnect with
/// back-off (the server's `retry_after` plus jitter when it gave one), except
/// for codes where retrying cannot help.
library;

import 'dart:math';

import 'errors.dart';
import 'messages.dart';
import 'state.dart';

// --- events -------------------------------------------------------------------

sealed class SyncEvent {
  const SyncEvent();
}

/// A frame from the server.
class FrameReceived extends SyncEvent {
  const FrameReceived(this.frame, this.now);
  final Frame frame;
  final DateTime now;
}

/// The driver committed the batch of an [ApplyBatch] (data and cursor).
class BatchStored extends SyncEvent {
  const BatchStored(this.batch);
  final PullResponse batch;
}

/// The answer to [ReadOutbox]: the pending mutations, oldest first.
class OutboxRead extends SyncEvent {
  const OutboxRead(this.pending);
  final List<Mutation> pending;
}

/// The driver recorded the results of a [RecordResults].
class ResultsRecorded extends SyncEvent {
  const ResultsRecorded();
}

/// The app queued a mutation (worth a push if none is out).
class OutboxChanged extends SyncEvent {
  const OutboxChanged();
}

/// The timer of a [RetryPushIn] fired: the refused push may go again.
class PushDue extends SyncEvent {
  const PushDue();
}

/// The ping timer fired.
class Tick extends SyncEvent {
  const Tick(this.now);
  final DateTime now;
}

// --- actions ------------------------------------------------------------------

sealed class SyncAction {
  const SyncAction();
}

class SendFrame extends SyncAction {
  const SendFrame(this.frame);
  final Frame frame;
}

/// Store this batch in one transaction, then feed [BatchStored].
class ApplyBatch extends SyncAction {
  const ApplyBatch(this.batch);
  final PullResponse batch;
}

/// Read the pending mutations, then feed [OutboxRead].
class ReadOutbox extends SyncAction {
  const ReadOutbox();
}

/// Record the server's answers, then feed [ResultsRecorded].
class RecordResults extends SyncAction {
  const RecordResults(this.results);
  final List<MutationResult> results;
}

/// The first `more = false`: the store is at a consistent checkpoint.
class GoLive extends SyncAction {
  const GoLive();
}

/// The in-flight set changed (for the outbox status).
class InFlightChanged extends SyncAction {
  const InFlightChanged(this.ids);
  final List<int> ids;
}

/// The server refused the push for now: feed [PushDue] after [delay]
/// (the mutations stay pending; the same ids go again).
class RetryPushIn extends SyncAction {
  const RetryPushIn(this.delay);
  final Duration delay;
}

class CloseConnection extends SyncAction {
  const CloseConnection(this.code, this.reason, this.error);
  final int code;
  final String reason;
  final Object error;
}

/// What to do once a connection is over.
sealed class AfterClose {
  const AfterClose();
}

class RetryAfter extends AfterClose {
  const RetryAfter(this.delay, this.error);
  final Duration delay;
  final Object? error;
}

/// Reconnecting cannot help (revoked device, unsupported version).
class GiveUp extends AfterClose {
  const GiveUp(this.error);
  final Object error;
}

// --- the machine --------------------------------------------------------------

/// One client's protocol state across connections (the push chunk and the
/// back-off outlive a connection; the rest is reset by [connected]).
class LiveProtocol {
  LiveProtocol({this.pushChunk = 100, this.pingInterval = const Duration(seconds: 25), Backoff? backoff})
      : chunk = pushChunk,
        backoff = backoff ?? Backoff();

  final int pushChunk;
  final Duration pingInterval;
  final Backoff backoff;

  /// Mutations per push now: halved by each `PAYLOAD_TOO_LARGE`.
  int chunk;

  bool live = false;
  bool wentLive = false;
  bool _pushing = false; // a push is out, or the outbox is being read for one
  bool _blocked = false; // a push was refused whole: not again on this connection
  bool _held = false; // a push was refused for now: not before PushDue
  List<int> inFlight = const [];
  Object? error;
  DateTime _lastFrame = DateTime.fromMillisecondsSinceEpoch(0);

  /// A new connection is open and `hello` went out.
  void connected(DateTime now) {
    live = wentLive = _pushing = _blocked = _held = false;
    inFlight = const [];
    error = null;
    _lastFrame = now;
  }

  List<SyncAction> handle(SyncEvent event) => switch (event) {
        FrameReceived(:final frame, :final now) => _frame(frame, now),
        BatchStored(:final batch) => [
            SendFrame(AckFrame(batch.cursor)), // only now: the server may count it as stored
            if (!batch.more && !live) ...[const GoLive(), ..._goLive()],
          ],
        OutboxRead(:final pending) => _push(pending),
        ResultsRecorded() || OutboxChanged() => _wantPush(),
        PushDue() => _pushDue(),
        Tick(:final now) => _tick(now),
      };

  List<SyncAction> _frame(Frame frame, DateTime now) {
    _lastFrame = now;
    switch (frame) {
      case ChangesFrame(:final batch):
        return [ApplyBatch(batch)];
      case ResultsFrame(:final results):
        _pushing = _blocked = false;
        inFlight = const [];
        return [RecordResults(results), const InFlightChanged([])];
      case ErrorFrame():
        error = frame.toException();
        if (!_pushing) return const [];
        // Most likely our push was refused whole (e.g. too large).
        _pushing = false;
        inFlight = const [];
        final retryAfter = frame.retryAfter;
        if (retryAfter != null && retryAfter > 0 && _retryable(frame.errorCode)) {
          _held = true; // refused for now: the same mutations again later, on this socket
          return [const InFlightChanged([]), RetryPushIn(backoff.after(retryAfter))];
        }
        _blocked = true;
        if (frame.errorCode == ErrorCode.payloadTooLarge) chunk = max(1, chunk ~/ 2);
        return const [InFlightChanged([])];
      case PongFrame():
        return const [];
      default:
        final e = ProtocolException('the server sent a `${frame.type}` frame');
        error = e;
        return [CloseConnection(1002, 'protocol error', e)];
    }
  }

  List<SyncAction> _goLive() {
    live = wentLive = true;
    return _wantPush();
  }

  static bool _retryable(ErrorCode? code) => code == ErrorCode.rateLimited || code == ErrorCode.unavailable;

  List<SyncAction> _pushDue() {
    _held = false;
    return _wantPush();
  }

  List<SyncAction> _wantPush() {
    if (!live || _pushing || _blocked || _held) return const [];
    _pushing = true;
    return const [ReadOutbox()];
  }

  List<SyncAction> _push(List<Mutation> pending) {
    if (!live || _blocked) {
      _pushing = false;
      return const [];
    }
    if (pending.isEmpty) {
      _pushing = false;
      return const [];
    }
    final batch = pending.take(chunk).toList();
    inFlight = [for (final m in batch) m.id];
    return [SendFrame(PushFrame(batch)), InFlightChanged(inFlight)];
  }

  List<SyncAction> _tick(DateTime now) {
    if (now.difference(_lastFrame) > pingInterval * 2) {
      final e = TransportException('no frame from the server for ${pingInterval * 2}');
      error = e;
      return [CloseConnection(4000, 'stalled', e)];
    }
    return const [SendFrame(PingFrame())];
  }

  /// An HTTP push was refused with [code]: a smaller chunk next time if too large.
  void pushRefused(ErrorCode? code) {
    if (code == ErrorCode.payloadTooLarge) chunk = max(1, chunk ~/ 2);
  }

  /// The connection ended (with the socket's close code, if any): reconnect
  /// when and whether. [failure] is what went wrong outside the frames
  /// (could not connect, the HTTP round failed).
  AfterClose closed({int? closeCode, String? closeReason, Object? failure}) {
    var e = error ?? failure;
    if (e == null && closeCode != null && closeCode != 1000 && closeCode != 1001 && closeCode != 1005) {
      e = SyncServerException(ErrorCode.fromClose(closeCode)?.wire ?? 'CLOSED_$closeCode', closeReason ?? '',
          closeCode: closeCode);
    }
    live = false;
    _pushing = false;
    inFlight = const [];
    if (e is SyncServerException && (e.code == ErrorCode.revoked || e.code == ErrorCode.unsupportedVersion)) {
      return GiveUp(e);
    }
    if (wentLive) backoff.reset();
    wentLive = false;
    final retryAfter = e is SyncServerException ? e.retryAfter : null;
    // The server said when (RATE_LIMITED, UNAVAILABLE): then, plus jitter.
    final delay = retryAfter != null && retryAfter > 0 ? backoff.after(retryAfter) : backoff.next();
    return RetryAfter(delay, e);
  }
}
