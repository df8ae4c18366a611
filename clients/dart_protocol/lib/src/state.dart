/// The sync client's state machine, its status events and its back-off.
library;

import 'dart:math';

import 'store.dart';

/// Where a [SyncClient] is.
///
/// ```
/// offline ──► connecting ──► catchingUp ──► live
///    ▲            │              │           │
///    └────────────┴──────────────┴───────────┘      any state ──► closed
/// ```
/// Over HTTP (the WebSocket could not connect) a round goes connecting →
/// catchingUp → offline: pull to `more = false`, push, pull again.
enum SyncState { offline, connecting, catchingUp, live, closed }

/// A move the state machine does not allow; always a bug in the caller.
class IllegalTransition extends StateError {
  IllegalTransition(this.from, this.to) : super('illegal sync state transition ${from.name} -> ${to.name}');
  final SyncState from;
  final SyncState to;
}

/// The allowed transitions, and nothing else.
class SyncStateMachine {
  SyncStateMachine([this._state = SyncState.offline]);

  static const Map<SyncState, Set<SyncState>> allowed = {
    SyncState.offline: {SyncState.connecting, SyncState.closed},
    SyncState.connecting: {SyncState.catchingUp, SyncState.offline, SyncState.closed},
    SyncState.catchingUp: {SyncState.live, SyncState.offline, SyncState.closed},
    SyncState.live: {SyncState.offline, SyncState.closed},
    SyncState.closed: {},
  };

  SyncState _state;
  SyncState get state => _state;

  bool canMove(SyncState to) => allowed[_state]!.contains(to);

  /// Moves to [to]; throws [IllegalTransition] when that is not allowed.
  void moveTo(SyncState to) {
    if (!canMove(to)) throw IllegalTransition(_state, to);
    _state = to;
  }
}

enum TransportKind { none, webSocket, http }

/// One status event: the state plus what an app shows ("syncing 12,000
/// rows…", "offline, retrying in 8 s", "live").
class SyncStatus {
  const SyncStatus(this.state,
      {this.transport = TransportKind.none,
      this.rows = 0,
      this.rowsExpected = 0,
      this.batches = 0,
      this.upToDate = false,
      this.error,
      this.retryIn,
      this.lastCheckpoint});

  final SyncState state;
  final TransportKind transport;

  /// Rows plus deletes applied since this connection started (catch-up progress).
  final int rows;

  /// Rows the snapshots begun on this connection hold, as the server counted
  /// them when each began (`expected`): a progress bar is [rows] / this.
  final int rowsExpected;

  /// Batches applied since this connection started.
  final int batches;

  /// The last batch had `more = false`: the store is at a consistent checkpoint.
  final bool upToDate;

  /// Why the last connection ended or failed, if it did.
  final Object? error;

  /// When offline: the next attempt starts in this long (null: not scheduled).
  final Duration? retryIn;

  /// When the store last reached `more = false`.
  final DateTime? lastCheckpoint;

  SyncStatus copyWith(
          {SyncState? state,
          TransportKind? transport,
          int? rows,
          int? rowsExpected,
          int? batches,
          bool? upToDate,
          Object? error = _keep,
          Object? retryIn = _keep,
          DateTime? lastCheckpoint}) =>
      SyncStatus(state ?? this.state,
          transport: transport ?? this.transport,
          rows: rows ?? this.rows,
          rowsExpected: rowsExpected ?? this.rowsExpected,
          batches: batches ?? this.batches,
          upToDate: upToDate ?? this.upToDate,
          error: identical(error, _keep) ? this.error : error,
          retryIn: identical(retryIn, _keep) ? this.retryIn : retryIn as Duration?,
          lastCheckpoint: lastCheckpoint ?? this.lastCheckpoint);

  static const Object _keep = Object();

  @override
  String toString() => 'SyncStatus(${state.name} ${transport.name}, $rows rows in $batches batches'
      '${upToDate ? ', up to date' : ''}${error == null ? '' : ', error: $error'}'
      '${retryIn == null ? '' : ', retry in ${retryIn!.inMilliseconds} ms'})';
}

/// The outbox as an app shows it.
class OutboxState {
  const OutboxState({required this.pending, required this.rejected, required this.inFlight});

  /// Mutations not yet answered.
  final int pending;

  /// Refused mutations kept for the user to see (until dismissed).
  final List<OutboxEntry> rejected;

  /// Ids sent and not yet answered.
  final List<int> inFlight;

  @override
  String toString() => 'OutboxState($pending pending, ${rejected.length} rejected, ${inFlight.length} in flight)';
}

/// Exponential back-off with jitter: attempt n waits a random time in
/// [d/2, d] where d = min(max, initial · 2^n) ("equal jitter": never zero,
/// never in lock-step with a thousand other devices after an outage).
class Backoff {
  Backoff({this.initial = const Duration(milliseconds: 500), this.max = const Duration(seconds: 60), Random? random})
      : _random = random ?? Random();

  final Duration initial;
  final Duration max;
  final Random _random;
  int attempt = 0;

  /// The delay before the next attempt; each call doubles the ceiling.
  Duration next() {
    final ceiling = min(max.inMicroseconds, initial.inMicroseconds * pow(2, min(attempt, 30)).toInt());
    attempt++;
    final half = ceiling ~/ 2;
    return Duration(microseconds: half + (half == 0 ? 0 : _random.nextInt(half + 1)));
  }

  /// The server said when ([retryAfterSeconds] of `retry_after`): that long
  /// plus up to as long again, so devices refused together come back apart.
  Duration after(int retryAfterSeconds) {
    final us = retryAfterSeconds * 1000000;
    return Duration(microseconds: us + _random.nextInt(us + 1));
  }

  /// A connection worked: start over from [initial].
  void reset() => attempt = 0;
}
