// End to end against a real server, with SyncDatabase on a SQLite file and
// three processes using that one file:
//
//   1. online:  sales1 syncs into the file (WebSocket, to more = false);
//               the orders to take are planned from the synced data.
//   -- the server is stopped --
//   2. offline: three order.create taken with optimistic rows (orders +
//               customer balance), visible in watch at once; the process exits.
//   -- the server comes back --
//   3. online:  a new process opens the file: the outbox replays exactly once
//               (two applied with server numbers, one CREDIT_LIMIT_EXCEEDED
//               whose optimistic rows are gone), and the file's datasets
//               equal a fresh pull.
//
//   dart test/sqlite_e2e_test.dart        (needs .venv: scripts/bootstrap.sh)
//
// FIELDSYNC_SKIP_DART_E2E=1 skips it, like test/e2e_test.dart.
import 'dart:async';
import 'dart:convert';
import 'dart:io';
import 'dart:typed_data';

import 'package:dart_protocol/io.dart';

import 'e2e_test.dart' as e2e;
import 'harness.dart';
import 'live_server.dart';

class TokenConnector implements SyncConnector {
  TokenConnector(this.endpoint, this.token);
  final Uri endpoint;
  final String token;
  int calls = 0;

  @override
  Future<SyncCredentials> fetchCredentials() async {
    calls++;
    return SyncCredentials(endpoint: endpoint, token: token);
  }
}

Future<void> main(List<String> args) async {
  if (args.isNotEmpty) {
    final phase = args[0], url = Uri.parse(args[1]), token = args[2], file = args[3];
    await {'online': phase1, 'offline': phase2, 'replay': phase3}[phase]!(url, token, file);
    summary();
    return;
  }
  if (Platform.environment['FIELDSYNC_SKIP_DART_E2E'] != null || LiveServer.find() == null) {
    stdout.writeln('sqlite e2e skipped (FIELDSYNC_SKIP_DART_E2E or no .venv)\n0 passed, 0 failed');
    return;
  }
  final server = await LiveServer.create(['--products', '300', '--customers', '30', '--days', '2']);
  try {
    await server.start();
    final token = await server.token('sales1');
    final file = '${server.data.path}/device.db';
    await child('online', server, token, file);
    await server.stop();
    await child('offline', server, token, file);
    await server.start();
    await child('replay', server, token, file);
  } catch (e) {
    check('orchestration', () => throw TestFailure('$e\n${server.logTail()}'));
  } finally {
    await server.dispose();
  }
  summary();
}

/// Runs this file as a new process for one phase; adds its counts.
Future<void> child(String phase, LiveServer server, String token, String file) async {
  stdout.writeln('-- process: $phase');
  final p = await Process.start(
      Platform.resolvedExecutable, [Platform.script.toFilePath(), phase, '${server.url}', token, file]);
  final out = StringBuffer();
  p.stdout.transform(utf8.decoder).listen((s) {
    out.write(s);
    stdout.write(s.split('\n').where((l) => !RegExp(r'^\d+ passed, \d+ failed$').hasMatch(l)).join('\n'));
  });
  p.stderr.transform(utf8.decoder).listen(stderr.write);
  final code = await p.exitCode;
  final m = RegExp(r'^(\d+) passed, (\d+) failed$', multiLine: true).firstMatch(out.toString());
  if (m == null) {
    addCounts(0, 1);
    stdout.writeln('FAIL $phase: no summary (exit $code)');
  } else {
    addCounts(int.parse(m[1]!), int.parse(m[2]!));
  }
}

Future<SyncDatabase> openDb(String file) async => SyncDatabase.open(FfiSqlDatabase.open(file));

/// The file's datasets as a MemoryStore (to reuse the e2e helpers).
Future<MemoryStore> toMemory(SqliteStore s) async {
  final mem = MemoryStore();
  for (final name in await s.datasets()) {
    final rows = await s.readRows(name);
    final cols = s.table(name)!.cols;
    mem.applyBatchSync(PullResponse(cursor: Uint8List(0), more: false, reset: [name], data: {
      name: DatasetBatch(cols: cols, rows: [for (final r in rows) [for (final c in cols) r[c]]], deletes: []),
    }));
  }
  return mem;
}

// --- 1. online ------------------------------------------------------------------

Future<void> phase1(Uri url, String token, String file) async {
  final db = await openDb(file);
  await checkAsync('sales1 syncs into the SQLite file over the WebSocket to more = false', () async {
    final progress = <SyncDbStatus>[];
    db.status.listen(progress.add);
    await db.connect(TokenConnector(url, token));
    await db.waitFor((s) => s.connected && !s.downloading, timeout: const Duration(seconds: 60));
    for (final ds in ['catalog', 'customers', 'prices', 'stock', 'orders']) {
      final n = (await db.get('SELECT count(*) AS n FROM $ds'))!['n'] as int;
      expect(n > 0, () => 'no $ds rows');
    }
    expect(progress.any((s) => s.downloading && s.rowsDownloaded > 0), () => 'no download progress');
    expect(progress.any((s) => s.rowsExpected > 0 && s.rowsDownloaded <= s.rowsExpected),
        () => 'no rows expected from the server');
    expect(db.currentStatus.lastSyncedAt != null, () => '${db.currentStatus}');
  });
  final plan = e2e.planOrders(await toMemory(db.store));
  check('the demo data allows the three orders', () => expect(plan != null, () => 'no plan'));
  await db.close();
  if (plan == null) return;
  File('$file.plan.json').writeAsStringSync(jsonEncode([
    for (final o in plan)
      {'id': o.id, 'customer_id': o.customerId, 'lines': o.lines, 'over': o.overLimit, 'mutation_id': o.mutationId}
  ]));
}

class Planned {
  Planned(Map<String, Object?> j)
      : id = j['id'] as String,
        customerId = j['customer_id'] as int,
        lines = [for (final l in j['lines'] as List) (l as Map).cast<String, Object?>()],
        over = j['over'] as bool,
        mutationId = j['mutation_id'] as int;
  final String id;
  final int customerId;
  final List<Map<String, Object?>> lines;
  final bool over;
  final int mutationId;
  int get total => lines.fold(0, (n, l) => n + (l['qty'] as int) * (l['price'] as int));
  Map<String, Object?> get args => {'id': id, 'customer_id': customerId, 'lines': lines, 'note': 'dart sqlite e2e'};
}

List<Planned> loadPlan(String file) =>
    [for (final j in jsonDecode(File('$file.plan.json').readAsStringSync()) as List) Planned(j as Map<String, Object?>)];

/// The app's optimistic order: the order row as the server will show it
/// (no number yet) and the customer's balance grown by its total.
Future<void> optimisticOrder(OptimisticWriter w, Planned o) async {
  final customer = await w.get('customers', o.customerId);
  await w.upsert('orders', {
    'id': o.id,
    'number': null,
    'customer_id': o.customerId,
    'status': 'confirmed',
    'lines': [for (final l in o.lines) {...l, 'amount': (l['qty'] as int) * (l['price'] as int)}],
    'total': o.total,
    'currency': customer?['currency'],
    'note': 'dart sqlite e2e',
    'taken_at': DateTime.now().millisecondsSinceEpoch,
  });
  await w.update('customers', o.customerId, {'balance': (customer!['balance'] as int) + o.total});
}

// --- 2. offline -----------------------------------------------------------------

Future<void> phase2(Uri url, String token, String file) async {
  final plan = loadPlan(file);
  final db = await openDb(file);
  await db.connect(TokenConnector(url, token)); // the server is down: it keeps retrying
  final seen = <List<Map<String, Object?>>>[];
  final sub = db.watch('SELECT id, number, total FROM orders WHERE note = ? ORDER BY taken_at',
      params: ['dart sqlite e2e']).listen(seen.add);
  await waitFor(() => seen.isNotEmpty, 'first emission');
  final before = await db.getAll('SELECT id, balance FROM customers');
  await checkAsync('three orders taken offline: optimistic rows in watch at once', () async {
    for (var i = 0; i < plan.length; i++) {
      final sw = Stopwatch()..start();
      final entry = await db.mutate('order.create', plan[i].args, optimistic: (w) => optimisticOrder(w, plan[i]));
      expect(entry.id == plan[i].mutationId, () => 'mutation id ${entry.id}');
      await waitFor(() => seen.last.length == i + 1, 'order ${i + 1} in watch');
      stdout.writeln('  order ${i + 1} visible in watch after ${sw.elapsedMicroseconds} µs');
    }
    final s = await db.waitFor((s) => s.lastError != null, timeout: const Duration(seconds: 20));
    expect(!s.connected && s.pending == 3, () => '$s');
    for (final o in plan) {
      final was = before.firstWhere((c) => c['id'] == o.customerId)['balance'] as int;
      final now = (await db.get('SELECT balance FROM customers WHERE id = ?', [o.customerId]))!['balance'];
      final more = plan.where((p) => p.customerId == o.customerId).fold(0, (n, p) => n + p.total);
      expect(now == was + more, () => 'customer ${o.customerId}: balance $now, want ${was + more}');
    }
  });
  await sub.cancel();
  await db.close(); // and the process exits
}

// --- 3. replay --------------------------------------------------------------------

Future<void> phase3(Uri url, String token, String file) async {
  final plan = loadPlan(file);
  final db = await openDb(file);
  final ids = plan.map((o) => o.id).toList();
  final marks = List.filled(ids.length, '?').join(', ');
  await checkAsync('a new process opens the file: the optimistic orders and the outbox are there', () async {
    final rows = await db.getAll('SELECT id FROM orders WHERE id IN ($marks)', ids);
    expect(rows.length == 3, () => '$rows');
    final pending = await db.outbox.pending();
    expect(pending.map((m) => m.id).join(',') == '1,2,3', () => '$pending');
  });
  final sent = await db.outbox.pending();
  final rejected = plan.firstWhere((o) => o.over), applied = plan.where((o) => !o.over).toList();
  await checkAsync('the outbox replays: two applied with server numbers, one rejected and rolled back', () async {
    await db.connect(TokenConnector(url, token));
    await db.waitFor((s) => s.pending == 0 && s.rejected == 1, timeout: const Duration(seconds: 60));
    final rejections = await db.rejections.first;
    expect(rejections.single.id == rejected.mutationId && rejections.single.errorCode == ErrorCode.creditLimitExceeded,
        () => '$rejections');
    final end = DateTime.now().add(const Duration(seconds: 20));
    while (true) {
      final rows = await db.getAll('SELECT id, number FROM orders WHERE id IN ($marks)', ids);
      final ok = rows.length == 2 &&
          rows.every((r) => applied.any((o) => o.id == r['id']) && RegExp(r'^SO-\d{6}$').hasMatch('${r['number']}'));
      if (ok) break;
      if (DateTime.now().isAfter(end)) throw TestFailure('orders now: $rows');
      await Future<void>.delayed(const Duration(milliseconds: 50));
    }
    final left = await db.sql.select('SELECT count(*) AS n FROM _sync_ops');
    expect(left.single['n'] == 0, () => 'optimistic ops left: $left');
  });
  await checkAsync('the rejection is in the `rejections` dataset', () async {
    final clientId = db.client!.clientId;
    final rows = await db.getAll('SELECT mutation_id, code FROM rejections WHERE client_id = ?', [clientId]);
    expect(rows.length == 1 && rows.single['mutation_id'] == 2 && rows.single['code'] == 'CREDIT_LIMIT_EXCEEDED',
        () => '$rows');
  });
  await checkAsync('exactly once: a replay of the same ids over HTTP returns the stored results', () async {
    final http = HttpTransport(url, () => token);
    final replay = await http.push(PushRequest(clientId: db.client!.clientId, mutations: sent));
    http.close();
    expect(replay.results.map((r) => r.applied).join(',') == 'true,false,true', () => '${replay.results}');
  });
  await checkAsync('the SQLite file\'s datasets equal a fresh pull', () async {
    String? diff;
    for (var attempt = 1; attempt <= 10; attempt++) {
      await db.disconnect();
      await db.connect(TokenConnector(url, token));
      await db.waitFor((s) => s.connected && !s.downloading, timeout: const Duration(seconds: 30));
      final fresh = await e2e.freshPull(url, token);
      diff = e2e.compareStores(await toMemory(db.store), fresh);
      if (diff == null) {
        final orders = fresh.rowsSync('orders').where((r) => ids.contains(r['id'])).length;
        expect(orders == 2, () => '$orders of the three orders on the server');
        stdout.writeln('  converged (attempt $attempt): '
            '${[for (final d in fresh.datasetsSync()) '$d ${fresh.count(d)}'].join(', ')}');
        return;
      }
      await Future<void>.delayed(const Duration(milliseconds: 500)); // a job may still be writing
    }
    throw TestFailure('no convergence: $diff');
  });
  await db.close();
}

Future<void> waitFor(bool Function() test, String what, {int seconds = 10}) async {
  final end = DateTime.now().add(Duration(seconds: seconds));
  while (!test()) {
    if (DateTime.now().isAfter(end)) throw TestFailure('timed out waiting for $what');
    await Future<void>.delayed(const Duration(milliseconds: 1));
  }
}
