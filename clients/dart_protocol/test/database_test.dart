// SyncDatabase against the scripted fake server: the connector is asked
// again after AUTH_INVALID and when the token expires; the status stream
// shows download, pending and rejections; mutate + results end to end.
//
//   dart test/database_test.dart
import 'dart:io';

import 'package:dart_protocol/io.dart';

import 'fake_server.dart';
import 'harness.dart';

class Connector implements SyncConnector {
  Connector(this.server, this.tokens, {this.ttl});
  final Uri server;
  final List<String> tokens;
  final Duration? ttl;
  int calls = 0;

  @override
  Future<SyncCredentials> fetchCredentials() async {
    final t = tokens[calls < tokens.length ? calls : tokens.length - 1];
    calls++;
    return SyncCredentials(endpoint: server, token: t, expiresAt: ttl == null ? null : DateTime.now().add(ttl!));
  }
}

Future<void> main() async {
  final tmp = Directory.systemTemp.createTempSync('fs-db-test');
  final server = FakeServer();
  await server.start();
  try {
    await checkAsync('AUTH_INVALID: the connector is asked again, then the sync goes live', () async {
      server.requiredToken = 'good';
      final db = await SyncDatabase.open(FfiSqlDatabase.open('${tmp.path}/a.db'));
      final c = Connector(server.uri, ['stale', 'good']);
      await db.connect(c, newClientId: () => 'db-1');
      await db.waitFor((s) => s.connected && !s.downloading, timeout: const Duration(seconds: 20));
      expect(c.calls >= 2, () => 'connector called ${c.calls} times');
      expect(server.authHeaders.contains('Bearer good'), () => '${server.authHeaders}');
      final rows = await db.getAll('SELECT id, name FROM catalog ORDER BY id');
      expect(rows.map((r) => r['id']).join(',') == '1,3,4', () => '$rows');
      await db.close();
      server.requiredToken = null;
    });
    await checkAsync('a token about to expire is fetched again for the next connection', () async {
      final db = await SyncDatabase.open(FfiSqlDatabase.open('${tmp.path}/b.db'));
      final c = Connector(server.uri, ['t'], ttl: const Duration(seconds: 10)); // inside the 30 s margin
      await db.connect(c, newClientId: () => 'db-2');
      await db.waitFor((s) => s.connected, timeout: const Duration(seconds: 20));
      final before = c.calls;
      await server.dropAll();
      await db.waitFor((s) => !s.connected);
      await db.waitFor((s) => s.connected, timeout: const Duration(seconds: 20));
      expect(c.calls > before, () => 'calls $before -> ${c.calls}');
      await db.close();
    });
    await checkAsync('status: downloading rows, then pending, then the rejection; mutate end to end', () async {
      final db = await SyncDatabase.open(FfiSqlDatabase.open('${tmp.path}/c.db'));
      final seen = <SyncDbStatus>[];
      db.status.listen(seen.add);
      await db.connect(Connector(server.uri, ['t']), newClientId: () => 'db-3');
      await db.waitFor((s) => s.connected && !s.downloading, timeout: const Duration(seconds: 20));
      expect(seen.any((s) => s.downloading && s.rowsDownloaded > 0) && db.currentStatus.lastSyncedAt != null,
          () => '$seen');
      await db.mutate('order.create', {'id': 'x'}, optimistic: (w) => w.upsert('catalog', {'id': 9, 'name': 'new'}));
      await db.mutate('bad', {}, optimistic: (w) => w.update('catalog', 1, {'name': 'renamed'}));
      final s = await db.waitFor((s) => s.pending == 0 && s.rejected == 1);
      expect(!s.uploading, () => '$s');
      final rejected = await db.rejections.first;
      expect(rejected.single.code == 'INVALID_ARGS', () => '$rejected');
      final one = await db.get('SELECT name FROM catalog WHERE id = 1');
      expect(one!['name'] == 'a', () => 'not rolled back: $one');
      await db.dismiss(rejected.single.id);
      expect((await db.rejections.first).isEmpty, () => 'dismissed');
      await db.close();
    });
  } finally {
    await server.http.close(force: true);
    tmp.deleteSync(recursive: true);
  }
  summary();
}
