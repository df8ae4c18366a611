// LiveProtocol without sockets: events in, actions out. Plus the web-safety
// of the core library: its import graph reaches no dart:io and no dart:ffi.
//
//   dart test/protocol_test.dart
import 'dart:io';
import 'dart:math';
import 'dart:typed_data';

import 'package:dart_protocol/dart_protocol.dart';

import 'harness.dart';

final t0 = DateTime(2026, 1, 1);

PullResponse batch(int n, {bool more = false}) => PullResponse(cursor: Uint8List.fromList([n]), more: more);

List<Mutation> muts(int n) =>
    [for (var i = 1; i <= n; i++) Mutation(id: i, name: 'order.create', args: const {}, at: 0)];

String show(List<SyncAction> actions) => actions.map((a) => switch (a) {
      SendFrame(:final frame) => switch (frame) {
          AckFrame(:final cursor) => 'ack${cursor.first}',
          PushFrame(:final mutations) => 'push${mutations.map((m) => m.id).join(',')}',
          _ => frame.type,
        },
      ApplyBatch(:final batch) => 'apply${batch.cursor.first}',
      ReadOutbox() => 'readOutbox',
      RecordResults(:final results) => 'record${results.map((r) => r.id).join(',')}',
      GoLive() => 'live',
      InFlightChanged(:final ids) => 'inFlight[${ids.join(',')}]',
      RetryPushIn(:final delay) => 'retryIn${delay.inSeconds}s',
      CloseConnection(:final code) => 'close$code',
    }).join(' ');

LiveProtocol fresh({int chunk = 100}) =>
    LiveProtocol(pushChunk: chunk, backoff: Backoff(random: Random(1)))..connected(t0);

List<SyncAction> frame(LiveProtocol p, Frame f, [DateTime? at]) => p.handle(FrameReceived(f, at ?? t0));

void main() {
  check('a batch is applied first and acked only once stored', () {
    final p = fresh();
    expect(show(frame(p, ChangesFrame(batch(1, more: true)))) == 'apply1', () => 'frame');
    expect(show(p.handle(BatchStored(batch(1, more: true)))) == 'ack1', () => 'stored');
    expect(!p.live, () => 'live before more = false');
  });
  check('live at the first more = false, which asks for the outbox', () {
    final p = fresh();
    expect(show(p.handle(BatchStored(batch(2)))) == 'ack2 live readOutbox', () => 'first');
    p.handle(const OutboxRead([]));
    expect(show(p.handle(BatchStored(batch(3)))) == 'ack3', () => 'a later batch: no second live');
  });
  check('one push in flight: more writes wait for the results', () {
    final p = fresh();
    p.handle(BatchStored(batch(1)));
    expect(show(p.handle(OutboxRead(muts(2)))) == 'push1,2 inFlight[1,2]', () => 'push');
    expect(p.handle(const OutboxChanged()).isEmpty, () => 'second push while one is out');
    final results = [for (final m in muts(2)) MutationResult(id: m.id, status: MutationStatus.applied)];
    expect(show(frame(p, ResultsFrame(results))) == 'record1,2 inFlight[]', () => 'results');
    expect(show(p.handle(const ResultsRecorded())) == 'readOutbox', () => 'next push');
    expect(p.handle(const OutboxRead([])).isEmpty, () => 'nothing left');
  });
  check('no push before live', () {
    final p = fresh();
    expect(p.handle(const OutboxChanged()).isEmpty, () => 'pushed while catching up');
  });
  check('PAYLOAD_TOO_LARGE on a push halves the chunk; no resend on this connection', () {
    final p = fresh(chunk: 8);
    p.handle(BatchStored(batch(1)));
    expect(show(p.handle(OutboxRead(muts(10)))) == 'push1,2,3,4,5,6,7,8 inFlight[1,2,3,4,5,6,7,8]', () => '8');
    expect(show(frame(p, const ErrorFrame('PAYLOAD_TOO_LARGE', 'too big'))) == 'inFlight[]', () => 'error');
    expect(p.chunk == 4, () => 'chunk ${p.chunk}');
    expect(p.handle(const OutboxChanged()).isEmpty, () => 'resent on the same connection');
    expect(p.closed() is RetryAfter, () => 'retry');
    p.connected(t0);
    p.handle(BatchStored(batch(2)));
    expect(show(p.handle(OutboxRead(muts(10)))) == 'push1,2,3,4 inFlight[1,2,3,4]', () => 'next connection');
    p.pushRefused(ErrorCode.payloadTooLarge);
    p.pushRefused(ErrorCode.payloadTooLarge);
    p.pushRefused(ErrorCode.payloadTooLarge);
    expect(p.chunk == 1, () => 'never below 1: ${p.chunk}');
  });
  check('an error frame with no push out is kept as the error, nothing else', () {
    final p = fresh();
    expect(frame(p, const ErrorFrame('BAD_REQUEST', 'x')).isEmpty && p.error is SyncServerException, () => '');
  });
  check('ping on each tick; close 4000 after two intervals of silence', () {
    final p = fresh();
    expect(show(p.handle(Tick(t0.add(const Duration(seconds: 25))))) == 'ping', () => 'ping');
    frame(p, const PongFrame(), t0.add(const Duration(seconds: 30)));
    expect(show(p.handle(Tick(t0.add(const Duration(seconds: 79))))) == 'ping', () => 'pong counts as a frame');
    expect(show(p.handle(Tick(t0.add(const Duration(seconds: 81))))) == 'close4000', () => 'stall');
    expect(p.error is TransportException, () => '${p.error}');
  });
  check('an unexpected frame type closes with 1002', () {
    final p = fresh();
    expect(show(frame(p, const PingFrame())) == 'close1002' && p.error is ProtocolException, () => '');
  });
  check('back-off grows, resets after live, honours retry_after; REVOKED and 4426 give up', () {
    final p = fresh();
    final delays = <Duration>[];
    for (var i = 0; i < 4; i++) {
      final r = p.closed(failure: TransportException('refused')) as RetryAfter;
      delays.add(r.delay);
      p.connected(t0);
    }
    expect(delays.last > delays.first, () => '$delays');
    p.handle(BatchStored(batch(1)));
    final after = p.closed(closeCode: 1006) as RetryAfter;
    expect(after.delay <= const Duration(milliseconds: 500), () => 'not reset: ${after.delay}');
    p.connected(t0);
    frame(p, const ErrorFrame('UNAVAILABLE', 'db down', retryAfter: 7));
    expect((p.closed(closeCode: 1013) as RetryAfter).delay >= const Duration(seconds: 7), () => 'retry_after');
    p.connected(t0);
    final revoked = p.closed(closeCode: 4410, closeReason: 'revoked');
    expect(revoked is GiveUp && (revoked.error as SyncServerException).code == ErrorCode.revoked, () => '$revoked');
    p.connected(t0);
    expect(p.closed(closeCode: 4426) is GiveUp, () => '4426');
    p.connected(t0);
    final normal = p.closed(closeCode: 1000) as RetryAfter;
    expect(normal.error == null, () => 'a normal close is no error');
  });
  check('a push refused for now goes again on this connection after retry_after plus jitter', () {
    for (final code in ['RATE_LIMITED', 'UNAVAILABLE']) {
      final p = fresh();
      p.handle(BatchStored(batch(1)));
      expect(show(p.handle(OutboxRead(muts(2)))) == 'push1,2 inFlight[1,2]', () => 'push');
      final refused = frame(p, ErrorFrame(code, 'later', retryAfter: 2));
      final retry = refused.whereType<RetryPushIn>().single;
      expect(show(refused).startsWith('inFlight[] retryIn'), () => show(refused));
      expect(retry.delay >= const Duration(seconds: 2) && retry.delay <= const Duration(seconds: 4), () => '${retry.delay}');
      expect(p.handle(const OutboxChanged()).isEmpty, () => '$code: pushed again before retry_after');
      expect(show(p.handle(const PushDue())) == 'readOutbox', () => '$code: not resent when due');
      expect(show(p.handle(OutboxRead(muts(2)))) == 'push1,2 inFlight[1,2]', () => '$code: the same ids again');
    }
  });
  check('a close after retry_after waits that plus jitter, not in lock-step', () {
    final delays = <Duration>{};
    for (var seed = 0; seed < 8; seed++) {
      final p = LiveProtocol(backoff: Backoff(random: Random(seed)))..connected(t0);
      frame(p, const ErrorFrame('RATE_LIMITED', 'slow down', retryAfter: 3));
      final delay = (p.closed(closeCode: 4429) as RetryAfter).delay;
      expect(delay >= const Duration(seconds: 3) && delay <= const Duration(seconds: 6), () => '$delay');
      delays.add(delay);
    }
    expect(delays.length > 4, () => 'devices refused together come back together: $delays');
    final p = fresh();
    final http = p.closed(failure: SyncServerException('UNAVAILABLE', 'snapshots', status: 503, retryAfter: 2));
    expect((http as RetryAfter).delay >= const Duration(seconds: 2), () => '503: ${http.delay}');
  });
  check('the core library imports no dart:io and no dart:ffi (web-safe)', () {
    final lib = Directory.fromUri(Platform.script.resolve('../lib/'));
    final seen = <String>{}, bad = <String>[];
    void visit(File f) {
      if (!seen.add(f.path)) return;
      final src = f.readAsStringSync();
      for (final m in RegExp(r"^(?:import|export|part)\s+'([^']+)'", multiLine: true).allMatches(src)) {
        final target = m[1]!;
        if (target == 'dart:io' || target == 'dart:ffi') bad.add('${f.path} -> $target');
        if (!target.startsWith('dart:') && !target.startsWith('package:')) visit(File.fromUri(f.uri.resolve(target)));
      }
    }

    visit(File('${lib.path}dart_protocol.dart'));
    expect(bad.isEmpty, () => 'not web-safe: $bad');
    expect(seen.any((p) => p.endsWith('client.dart')) && seen.any((p) => p.endsWith('database.dart')), () => '$seen');
  });
  summary();
}
