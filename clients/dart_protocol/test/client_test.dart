// The client side without the real server: MemoryStore and MemoryOutbox
// semantics, the state machine (every illegal transition throws), back-off,
// and SyncClient against a small scripted fake server (WebSocket session,
// push/results, ack, revocation, reconnect with the stored cursor, and the
// HTTP fallback when the WebSocket cannot connect).
//
//   dart test/client_test.dart
import 'dart:io';
import 'dart:math';

import 'package:dart_protocol/io.dart';

import 'fake_server.dart';
import 'harness.dart';
import 'support.dart';

Future<void> main() async {
  storeChecks();
  await outboxChecks();
  stateChecks();
  await clientChecks();
  summary();
}

// --- MemoryStore -------------------------------------------------------------------

void storeChecks() {
  check('reset, upsert, delete and cursor in one batch', () {
    final s = MemoryStore();
    s.applyBatchSync(batch(1, reset: ['catalog'], data: {
      'catalog': part([
        [1, 'a'],
        [2, 'b'],
        [3, 'c']
      ])
    }));
    final changes = s.applyBatchSync(batch(2, data: {
      'catalog': part([
        [2, 'B']
      ], [3])
    }));
    expect(deepEquals(s.rowsByKey('catalog'), {
      1: {'id': 1, 'name': 'a'},
      2: {'id': 2, 'name': 'B'}
    }), () => '${s.rowsByKey('catalog')}');
    expect(toHex(s.cursor!) == '02', () => 'cursor');
    expect(changes.single.upserted.single == 2 && changes.single.deleted.single == 3, () => '$changes');
    s.applyBatchSync(batch(3, reset: ['catalog']));
    expect(s.count('catalog') == 0, () => 'reset without rows clears');
  });
  check('a bad batch changes nothing, cursor included', () {
    final s = MemoryStore();
    s.applyBatchSync(batch(1, data: {
      'catalog': part([
        [1, 'a']
      ])
    }));
    for (final badBatch in [
      batch(9, reset: ['catalog'], data: {
        'catalog': part([
          [5, 'x'],
          [5, 'y']
        ])
      }),
      batch(9, data: {
        'other': part([
          [7, 'x']
        ]),
        'catalog': part([
          [2, 'x']
        ], [2])
      }),
      batch(9, data: {
        'catalog': part([
          ['x', 'y']
        ], [], ['sku', 'name'])
      }),
    ]) {
      expectThrows<ProtocolException>(() => s.applyBatchSync(badBatch), 'bad batch');
      expect(toHex(s.cursor!) == '01', () => 'cursor moved');
      expect(s.count('catalog') == 1 && s.count('other') == 0, () => 'data changed');
    }
  });
  check('key column configurable per dataset, composite keys, array deletes', () {
    final s = MemoryStore(keys: {
      'catalog': 'sku',
      'stock': ['branch_id', 'product_id']
    });
    s.applyBatchSync(batch(1, data: {
      'catalog': part([
        ['A-1', 'a'],
        ['A-2', 'b']
      ], [], ['sku', 'name']),
      'stock': part([
        [3, 7, -2],
        [3, 9, 5]
      ], [], ['branch_id', 'product_id', 'on_hand']),
    }));
    // The stock vector of tests/vectors: deletes are [branch_id, product_id] arrays.
    s.applyBatchSync(batch(2, data: {
      'catalog': part([], ['A-1'], ['sku', 'name']),
      'stock': part([], [
        [3, 9]
      ], ['branch_id', 'product_id', 'on_hand']),
    }));
    expect(s.rowsSync('catalog').single['sku'] == 'A-2', () => '${s.rowsSync('catalog')}');
    expect(s.rowsSync('stock').single['product_id'] == 7, () => '${s.rowsSync('stock')}');
    expect(s.rowsByKey('stock').keys.single == RowKey([3, 7]), () => 'RowKey');
  });
  check('rows written with other cols (schema change) keep their own cols', () {
    final s = MemoryStore();
    s.applyBatchSync(batch(1, data: {
      'c': part([
        [1, 'a']
      ])
    }));
    s.applyBatchSync(batch(2, data: {
      'c': part([
        [2, 'b', true]
      ], [], ['id', 'name', 'flag'])
    }));
    expect(deepEquals(s.rowsByKey('c')[1], {'id': 1, 'name': 'a'}), () => 'old row');
    expect(deepEquals(s.rowsByKey('c')[2], {'id': 2, 'name': 'b', 'flag': true}), () => 'new row');
  });
}

// --- MemoryOutbox -----------------------------------------------------------------

Future<void> outboxChecks() async {
  await checkAsync('enqueue refuses what the wire refuses, without using an id', () async {
    final o = MemoryOutbox();
    expectThrows<ProtocolException>(() => newMutation(1, 'x', {'n': 1 << 60}), 'int beyond 2^53');
    await expectAsyncThrows<ProtocolException>(() => o.enqueue('x', {'bad': double.nan}), 'NaN');
    await expectAsyncThrows<ProtocolException>(() => o.enqueue('x', {'when': DateTime.now()}), 'DateTime');
    expect(o.lastId == 0 && (await o.pending()).isEmpty, () => 'id used: ${o.lastId}');
  });
  await checkAsync('ids from 1, at = now, durable order; applied leaves, rejected stays', () async {
    final o = MemoryOutbox();
    final before = DateTime.now().millisecondsSinceEpoch;
    final a = await o.enqueue('order.create', {'id': uuidV4()});
    final b = await o.enqueue('payment.record', {'id': uuidV4()});
    final c = await o.enqueue('visit.checkin', {'id': uuidV4()});
    final after = DateTime.now().millisecondsSinceEpoch;
    expect([a.id, b.id, c.id].join(',') == '1,2,3', () => 'ids');
    expect(a.mutation.at >= before && c.mutation.at <= after, () => 'at');
    expect((await o.pending()).map((m) => m.id).join(',') == '1,2,3', () => 'order');
    await o.markResult(1, MutationResult(id: 1, status: MutationStatus.applied, result: {'n': 1}));
    await o.markResult(2,
        MutationResult(id: 2, status: MutationStatus.rejected, code: 'CREDIT_LIMIT_EXCEEDED', message: 'over'));
    await o.markResult(99, MutationResult(id: 99, status: MutationStatus.applied)); // unknown: ignored
    expect((await o.pending()).map((m) => m.id).join(',') == '3', () => 'pending');
    final entries = await o.entries();
    expect(entries.length == 2, () => '$entries');
    final rejected = entries.first;
    expect(rejected.status == OutboxStatus.rejected && rejected.errorCode == ErrorCode.creditLimitExceeded,
        () => '$rejected');
    expect(rejected.message == 'over', () => 'message');
    // a late duplicate answer does not flip a final rejection
    await o.markResult(2, MutationResult(id: 2, status: MutationStatus.applied));
    expect((await o.entries()).first.status == OutboxStatus.rejected, () => 'rejection is final');
    await o.dismiss(2);
    await o.dismiss(3); // pending: not dismissible
    expect((await o.entries()).map((e) => e.id).join(',') == '3', () => 'dismiss');
    final d = await o.enqueue('x', {});
    expect(d.id == 4, () => 'ids are never reused: ${d.id}');
  });
  await checkAsync('MemoryStore awaits: cursor null before the first batch', () async {
    final s = MemoryStore();
    expect(await s.readCursor() == null, () => 'cursor');
    await s.applyBatch(batch(5, data: {
      'c': part([
        [1, 'a']
      ])
    }));
    expect(toHex((await s.readCursor())!) == '05', () => 'cursor');
    expect((await s.readRow('c', 1))!['name'] == 'a', () => 'readRow');
    await s.clear();
    expect(await s.readCursor() == null && (await s.datasets()).isEmpty, () => 'clear');
  });
}

// --- state machine and back-off ----------------------------------------------

void stateChecks() {
  for (final from in SyncState.values) {
    for (final to in SyncState.values) {
      final ok = SyncStateMachine.allowed[from]!.contains(to);
      check('${from.name} -> ${to.name} ${ok ? 'allowed' : 'throws'}', () {
        final m = SyncStateMachine(from);
        if (ok) {
          m.moveTo(to);
          expect(m.state == to, () => 'state');
        } else {
          expectThrows<IllegalTransition>(() => m.moveTo(to), '${from.name} -> ${to.name}');
          expect(m.state == from, () => 'state changed on a refused move');
        }
      });
    }
  }
  check('the happy path and closed is terminal', () {
    final m = SyncStateMachine();
    for (final s in [SyncState.connecting, SyncState.catchingUp, SyncState.live, SyncState.offline]) {
      m.moveTo(s);
    }
    m.moveTo(SyncState.closed);
    expect(SyncStateMachine.allowed[SyncState.closed]!.isEmpty, () => 'closed has exits');
  });
  check('back-off doubles with jitter in [d/2, d], caps, resets', () {
    final b = Backoff(initial: const Duration(seconds: 1), max: const Duration(seconds: 8), random: Random(7));
    final seen = <int>[];
    for (var i = 0; i < 6; i++) {
      final ceiling = min(8000, 1000 << i);
      final d = b.next().inMilliseconds;
      seen.add(d);
      expect(d >= ceiling ~/ 2 && d <= ceiling, () => 'attempt $i: $d not in [${ceiling ~/ 2}, $ceiling]');
    }
    b.reset();
    expect(b.next().inMilliseconds <= 1000, () => 'reset');
    final spread = {for (var i = 0; i < 50; i++) (Backoff(random: Random(i))..attempt = 4).next()};
    expect(spread.length > 40, () => 'no jitter: $seen');
  });
}

// --- SyncClient against the scripted fake server ------------------------------

SyncClient newClient(FakeServer server, {String id = 'dev-1', MemoryStore? store, MemoryOutbox? outbox}) =>
    SyncClient(
        server: server.uri,
        token: () => 'tok-$id',
        clientId: id,
        store: store ?? MemoryStore(),
        outbox: outbox ?? MemoryOutbox(),
        backoff: Backoff(initial: const Duration(milliseconds: 40), max: const Duration(milliseconds: 200)));

Future<void> until(bool Function() test, String what, {int ms = 5000}) async {
  final end = DateTime.now().add(Duration(milliseconds: ms));
  while (!test()) {
    if (DateTime.now().isAfter(end)) throw TestFailure('timed out waiting for $what');
    await Future<void>.delayed(const Duration(milliseconds: 10));
  }
}

Future<void> clientChecks() async {
  final server = FakeServer();
  await server.start();
  await checkAsync('WebSocket: hello, catch-up to live, acks, push, results, rejection kept', () async {
    final store = MemoryStore();
    final client = newClient(server, store: store);
    final states = <SyncState>[];
    final progress = <int>[];
    final changes = <DatasetChange>[];
    client.status.listen((s) {
      if (states.isEmpty || states.last != s.state) states.add(s.state);
      if (s.state == SyncState.catchingUp) progress.add(s.rows);
    });
    client.changesOf('catalog').listen(changes.add);
    client.start();
    await client.waitFor((s) => s.state == SyncState.live);
    expect(states.join(',') == 'SyncState.connecting,SyncState.catchingUp,SyncState.live', () => '$states');
    expect(progress.contains(3), () => 'catch-up progress $progress');
    expect(deepEquals(store.rowsByKey('catalog').keys.toList()..sort(), [1, 3, 4]), () => 'rows');
    expect(server.hellos.single.cursor == null && server.hellos.single.clientId == 'dev-1', () => 'hello');
    await until(() => server.acks.length == 2, 'acks');
    expect(server.acks.join(',') == '01,02', () => 'acks ${server.acks}');
    expect(changes.length == 2 && changes.first.reset, () => '$changes');
    final outboxStates = <OutboxState>[];
    client.outboxState.listen(outboxStates.add);
    await client.enqueue('order.create', {'id': uuidV4()});
    await client.enqueue('bad', {});
    await until(() => client.currentOutbox.pending == 0 && client.currentOutbox.rejected.length == 1, 'results');
    expect(server.pushes.expand((p) => p).join(',') == '1,2', () => 'pushes ${server.pushes}');
    expect(client.currentOutbox.rejected.single.code == 'INVALID_ARGS', () => '${client.currentOutbox}');
    expect(outboxStates.any((s) => s.inFlight.isNotEmpty), () => 'in-flight never shown');
    expect(server.authHeaders.contains('Bearer tok-dev-1'), () => '${server.authHeaders}');
    await client.stop();
    expect(client.state == SyncState.offline, () => '${client.state}');
    await client.close();
    expectThrows<StateError>(client.start, 'start after close');
  });
  server.pushes.clear();
  await checkAsync('reconnects with back-off and resumes from the stored cursor', () async {
    server.hellos.clear();
    final client = newClient(server, id: 'dev-2');
    client.start();
    await client.waitFor((s) => s.state == SyncState.live);
    await server.dropAll();
    await client.waitFor((s) => s.state == SyncState.offline && s.retryIn != null);
    await until(() => server.hellos.length == 2, 'second hello');
    expect(toHex(server.hellos.last.cursor!) == '02', () => 'resumed from ${server.hellos.last.cursor}');
    await client.waitFor((s) => s.state == SyncState.live);
    await client.close();
  });
  await checkAsync('a push refused with RATE_LIMITED goes again after retry_after, on the same socket', () async {
    server
      ..hellos.clear()
      ..pushes.clear()
      ..refusedAt.clear()
      ..pushedAt.clear()
      ..refusePushes = 1;
    final outbox = MemoryOutbox();
    await outbox.enqueue('order.create', {'id': uuidV4()});
    await outbox.enqueue('order.create', {'id': uuidV4()});
    final client = newClient(server, id: 'dev-limited-ws', outbox: outbox);
    client.start();
    await until(() => server.pushes.isNotEmpty && client.currentOutbox.pending == 0, 'pushed', ms: 5000);
    expect(server.refusedAt.length == 1 && server.pushes.single.join(',') == '1,2', () => '${server.pushes}');
    final waited = server.pushedAt.single.difference(server.refusedAt.single);
    expect(waited >= const Duration(seconds: 1) && waited < const Duration(seconds: 3), () => 'waited $waited');
    expect(server.hellos.length == 1, () => 'reconnected: ${server.hellos.length} hellos');
    await client.close();
    server.pushes.clear();
  });
  await checkAsync('an HTTP push refused with 429 waits retry_after plus jitter, then is sent once', () async {
    server
      ..webSocketUp = false
      ..pushes.clear()
      ..refusedAt.clear()
      ..pushedAt.clear()
      ..refusePushes = 1;
    final outbox = MemoryOutbox();
    await outbox.enqueue('order.create', {'id': uuidV4()});
    final client = newClient(server, id: 'dev-limited-http', outbox: outbox);
    final retries = <Duration>[];
    client.status.listen((s) {
      if (s.retryIn != null && s.error is SyncServerException) retries.add(s.retryIn!);
    });
    client.start();
    await until(() => server.pushes.isNotEmpty && client.currentOutbox.pending == 0, 'pushed', ms: 5000);
    expect(server.pushes.single.join(',') == '1', () => '${server.pushes}');
    expect(retries.isNotEmpty && retries.first >= const Duration(seconds: 1) && retries.first <= const Duration(seconds: 2),
        () => 'retry delays $retries');
    expect(server.pushedAt.single.difference(server.refusedAt.single) >= const Duration(seconds: 1), () => 'too soon');
    await client.close();
    server
      ..webSocketUp = true
      ..pushes.clear();
  });
  await checkAsync('REVOKED: the client stops retrying and says why', () async {
    server.hellos.clear();
    final client = newClient(server, id: 'dev-3');
    client.start();
    await client.waitFor((s) => s.state == SyncState.live);
    await server.revokeAll();
    final s = await client.waitFor((s) => s.state == SyncState.offline && s.error != null);
    expect(s.error is SyncServerException && (s.error as SyncServerException).code == ErrorCode.revoked,
        () => '${s.error}');
    await Future<void>.delayed(const Duration(milliseconds: 400));
    expect(server.hellos.length == 1, () => 'reconnected ${server.hellos.length} times');
    await client.close();
  });
  await checkAsync('HTTP fallback when the WebSocket cannot connect: pull, push, pull', () async {
    server.webSocketUp = false;
    final store = MemoryStore();
    final outbox = MemoryOutbox();
    await outbox.enqueue('order.create', {'id': uuidV4()});
    await outbox.enqueue('bad', {});
    final client = newClient(server, id: 'dev-4', store: store, outbox: outbox);
    final transports = <TransportKind>{};
    client.status.listen((s) => transports.add(s.transport));
    client.start();
    final s = await client.waitFor((s) => s.state == SyncState.offline && s.retryIn != null);
    expect(s.error is TransportException, () => 'error ${s.error}');
    expect(transports.contains(TransportKind.http), () => '$transports');
    expect(store.count('catalog') == 3, () => 'rows');
    expect(server.pushes.single.join(',') == '1,2', () => '${server.pushes}');
    expect(client.currentOutbox.pending == 0 && client.currentOutbox.rejected.length == 1, () => 'outbox');
    await client.stop();
    expect(client.state == SyncState.offline, () => '${client.state}');
    await client.syncOverHttp(); // one more round on demand, e.g. a background fetch
    client.start();
    await expectAsyncThrows<StateError>(client.syncOverHttp, 'syncOverHttp while running');
    await client.close();
    server.webSocketUp = true;
  });
  await checkAsync('sessions the server closes mid-batch release their sockets', () async {
    int sockets() => Directory('/proc/self/fd')
        .listSync()
        .where((f) {
          try {
            return Link(f.path).targetSync().startsWith('socket:');
          } on FileSystemException {
            return false;
          }
        })
        .length;
    if (!Directory('/proc/self/fd').existsSync()) return; // Linux only
    final before = sockets();
    final http = await HttpServer.bind(InternetAddress.loopbackIPv4, 0);
    var sessions = 0;
    http.listen((req) async {
      final ws = await WebSocketTransformer.upgrade(req);
      ws.listen((data) {
        if (Frame.decode(data as List<int>) is! HelloFrame) return;
        sessions++;
        ws.add(ChangesFrame(batch(sessions, more: true)).encode()); // the close comes while it is applied
        ws.close(1001, 'going away');
      });
    });
    final client = SyncClient(
        server: Uri.parse('http://127.0.0.1:${http.port}'),
        token: () => 't',
        clientId: 'dev-5',
        store: MemoryStore(),
        outbox: MemoryOutbox(),
        backoff: Backoff(initial: const Duration(milliseconds: 10), max: const Duration(milliseconds: 20)));
    client.start();
    await until(() => sessions >= 20, '20 sessions');
    await client.close();
    await http.close(force: true);
    await until(() => sockets() <= before, 'sockets released (${sockets()} open, $before before)');
  });
  await checkAsync('HttpTransport: error bodies and network failures', () async {
    final http = HttpTransport(server.uri, () => 't');
    try {
      await http.post('/nowhere', {'v': 1});
      throw TestFailure('no exception');
    } on SyncServerException catch (e) {
      expect(e.status == 404 && e.code == ErrorCode.badRequest && e.message == 'no such route', () => '$e');
    }
    http.close();
    final port = server.http.port;
    await server.http.close(force: true);
    final gone = HttpTransport(Uri.parse('http://127.0.0.1:$port'), () => 't');
    await expectAsyncThrows<TransportException>(
        () => gone.pull(const PullRequest(clientId: 'c')), 'connection refused');
    await expectAsyncThrows<TransportException>(
        () => WebSocketTransport(Uri.parse('http://127.0.0.1:$port'), () => 't').connect(clientId: 'c'), 'ws refused');
    gone.close();
  });
}

Future<void> expectAsyncThrows<T>(Future<void> Function() fn, String what) async {
  try {
    await fn();
  } on T {
    return;
  }
  throw TestFailure('$what: expected $T');
}
