// Initial sync of pos1 into a SQLite file from the Dart VM, and the latency
// of a `watch` re-emission after a live change. A real server (embedded
// default, demo tenant of [products] products, in a temp dir) is started here.
//
//   cd clients/dart_protocol && dart bench/sqlite_sync_bench.dart [products] [changes]
//
// pos1 sees catalog + its branch's prices + its branch's stock, so about
// 3 × products rows (100,000 products: ~300,000 rows). Reports rows/s of the
// WebSocket catch-up (decode + SQLite transaction per batch, cursor
// included), the process's peak RSS, and the p50/p90 of "back-office write
// (POST /admin/products) → watch emits the new row" and of its local part
// "batch committed → watch emits".
import 'dart:async';
import 'dart:convert';
import 'dart:io';
import 'dart:typed_data';

import 'package:dart_protocol/io.dart';

import '../test/live_server.dart';

class Fixed implements SyncConnector {
  Fixed(this.url, this.token);
  final Uri url;
  final String token;
  @override
  Future<SyncCredentials> fetchCredentials() async => SyncCredentials(endpoint: url, token: token);
}

String mb(int b) => '${(b / (1 << 20)).toStringAsFixed(1)} MB';

Duration pct(List<Duration> xs, double p) => (xs.toList()..sort())[((xs.length - 1) * p).round()];

Future<void> main(List<String> args) async {
  final products = args.isNotEmpty ? int.parse(args[0]) : 100000;
  final changes = args.length > 1 ? int.parse(args[1]) : 30;
  stdout.writeln('Dart ${Platform.version}');
  var sw = Stopwatch()..start();
  final server = await LiveServer.create(['--products', '$products', '--customers', '200', '--days', '2']);
  stdout.writeln('demo tenant with $products products made in ${sw.elapsed.inSeconds} s');
  try {
    await server.start();
    final pos = await server.token('pos1'), admin = await server.token('admin');
    final file = '${server.data.path}/pos1.db';
    final rss0 = ProcessInfo.currentRss;
    final db = await SyncDatabase.open(FfiSqlDatabase.open(file));
    sw = Stopwatch()..start();
    await db.connect(Fixed(server.url, pos));
    final s = await db.waitFor((s) => s.connected && !s.downloading, timeout: const Duration(minutes: 10));
    final took = sw.elapsed;
    final counts = [
      for (final t in ['catalog', 'prices', 'stock', 'customers'])
        '$t ${(await db.get('SELECT count(*) AS n FROM $t'))!['n']}'
    ];
    stdout.writeln('initial sync (WebSocket): ${s.rowsDownloaded} rows in ${took.inMilliseconds} ms = '
        '${(s.rowsDownloaded / took.inMicroseconds * 1e6).round()} rows/s; ${counts.join(', ')}');
    final size = File(file).lengthSync() + (File('$file-wal').existsSync() ? File('$file-wal').lengthSync() : 0);
    stdout.writeln('RSS: ${mb(rss0)} before, peak ${mb(ProcessInfo.maxRss)}; file ${mb(size)} (with its WAL)');

    final id = (await db.get('SELECT id FROM catalog ORDER BY id LIMIT 1'))!['id'] as int;
    final http = HttpClient();
    final endToEnd = <Duration>[], local = <Duration>[];
    DateTime? committed;
    final commits = db.store.tableChanges.listen((t) {
      if (t.contains('catalog')) committed = DateTime.now();
    });
    for (var i = 0; i < changes; i++) {
      final name = 'Bench product $i';
      final emitted = Completer<DateTime>();
      final sub = db.watch('SELECT name FROM catalog WHERE id = ?', params: [id]).listen((rows) {
        if (rows.isNotEmpty && rows.single['name'] == name && !emitted.isCompleted) emitted.complete(DateTime.now());
      });
      await Future<void>.delayed(const Duration(milliseconds: 50)); // the first emission is out of the way
      final start = DateTime.now();
      final rq = await http.postUrl(server.url.resolve('/admin/products'));
      rq.headers
        ..set('Authorization', 'Bearer $admin')
        ..contentType = ContentType.json;
      rq.write(jsonEncode({
        'upsert': [
          {'id': id, 'name': name}
        ]
      }));
      final rs = await rq.close();
      await rs.drain<void>();
      if (rs.statusCode != 200) throw StateError('admin write: ${rs.statusCode}');
      final at = await emitted.future.timeout(const Duration(seconds: 10));
      endToEnd.add(at.difference(start));
      if (committed != null) local.add(at.difference(committed!));
      await sub.cancel();
    }
    await commits.cancel();
    http.close();
    stdout.writeln('watch after a live change ($changes changes): write → emission p50 '
        '${pct(endToEnd, .5).inMicroseconds / 1000} ms, p90 ${pct(endToEnd, .9).inMicroseconds / 1000} ms; '
        'batch commit → emission p50 ${pct(local, .5).inMicroseconds / 1000} ms');
    await db.close();
    await clientSide(server.url, pos, '${server.data.path}/again.db');
  } finally {
    await server.dispose();
  }
}

/// The client's share alone: the same snapshot pulled as raw bodies first
/// (limit 10,000), then timed: msgpack decode + shape checks + SQLite apply.
Future<void> clientSide(Uri url, String token, String file) async {
  final http = HttpClient();
  final bodies = <List<int>>[];
  Object? cursor;
  while (true) {
    final rq = await http.postUrl(url.resolve('/sync/pull'));
    rq.headers
      ..set('Authorization', 'Bearer $token')
      ..set('Content-Type', 'application/msgpack');
    rq.add(msgpackEncode({'v': 1, 'client_id': 'bench-raw', 'cursor': cursor, 'limit': 10000}));
    final rs = await rq.close();
    final body = await rs.fold<BytesBuilder>(BytesBuilder(copy: false), (b, c) => b..add(c));
    final bytes = body.takeBytes();
    bodies.add(bytes);
    final m = msgpackDecode(bytes) as Map;
    cursor = m['cursor'];
    if (m['more'] != true) break;
  }
  http.close();
  final store = await SqliteStore.open(FfiSqlDatabase.open(file));
  final sw = Stopwatch()..start();
  var rows = 0;
  for (final b in bodies) {
    final batch = PullResponse.fromMsgpack(msgpackDecode(b as Uint8List));
    await store.applyBatch(batch);
    rows += batch.size;
  }
  stdout.writeln('client side only (decode + apply, ${bodies.length} bodies of <= 10,000 rows): $rows rows in '
      '${sw.elapsedMilliseconds} ms = ${(rows / sw.elapsedMicroseconds * 1e6).round()} rows/s');
  await store.db.close();
}
