// SqliteStore on real SQLite (dart:ffi, libsqlite3.so.0): typed tables from
// the schema, batches with their cursor in one transaction (also across a
// kill -9 of the process mid-batch), migrations on reset, the outbox in the
// same file, optimistic changes with rebase / rollback / settle, and watch.
//
//   dart test/sqlite_store_test.dart
import 'dart:async';
import 'dart:io';
import 'dart:typed_data';

import 'package:dart_protocol/io.dart';

import 'harness.dart';
import 'support.dart';

final schema = SyncSchema({
  'customers': DatasetSchema(
      name: 'customers',
      cols: ['id', 'name', 'pricelist_id', 'balance', 'vip', 'lat', 'tags'],
      types: ['int', 'str', 'int', 'money', 'bool', 'float', 'json'],
      key: 'id'),
  'orders': DatasetSchema(
      name: 'orders', cols: ['id', 'customer_id', 'total'], types: ['str', 'int', 'money'], key: 'id'),
});

Uint8List cur(int n) => Uint8List.fromList([n, n, n]);

PullResponse batch(int n,
        {List<String> reset = const [],
        List<List<Object?>> customers = const [],
        List<Object?> deleteCustomers = const [],
        List<List<Object?>> orders = const [],
        List<String>? customerCols}) =>
    PullResponse(cursor: cur(n), more: false, reset: reset, data: {
      if (customers.isNotEmpty || deleteCustomers.isNotEmpty)
        'customers':
            DatasetBatch(cols: customerCols ?? schema.datasets['customers']!.cols, rows: customers, deletes: deleteCustomers),
      if (orders.isNotEmpty) 'orders': DatasetBatch(cols: ['id', 'customer_id', 'total'], rows: orders, deletes: []),
    });

List<Object?> cust(int id, {int balance = 0, String name = 'C'}) =>
    [id, '$name$id', 1, balance, id.isEven, 52.5, {'k': [id]}];

late Directory tmp;
var files = 0;
String newFile() => '${tmp.path}/s${files++}.db';

Future<SqliteStore> openStore(String path) async => SqliteStore.open(FfiSqlDatabase.open(path));

Future<void> main(List<String> args) async {
  if (args.length == 2 && args[0] == 'child-kill') return childKill(args[1]);
  tmp = Directory.systemTemp.createTempSync('fs-sqlite-test');
  try {
    await run();
  } finally {
    tmp.deleteSync(recursive: true);
  }
  summary();
}

Future<void> run() async {
  await checkAsync('ffi: values round-trip; a throwing transaction rolls back', () async {
    final db = FfiSqlDatabase.open(newFile());
    await db.execute('CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB, n, e TEXT)');
    await db.execute(
        'INSERT INTO t VALUES (?, ?, ?, ?, ?, ?)', [9007199254740991, 0.5, 'é\u{1F600}', Uint8List(3), null, '']);
    try {
      await db.transaction((tx) async {
        await tx.execute('INSERT INTO t (i) VALUES (1)');
        throw StateError('boom');
      });
    } on StateError {
      // expected
    }
    final rows = await db.select('SELECT * FROM t');
    expect(rows.length == 1, () => '$rows');
    expect(deepEquals(rows.single, {'i': 9007199254740991, 'r': 0.5, 's': 'é\u{1F600}', 'b': Uint8List(3), 'n': null, 'e': ''}),
        () => '$rows');
    try {
      await db.execute('SELECT * FROM nope');
      throw TestFailure('no error');
    } on SqlException catch (e) {
      expect(e.message.contains('no such table'), () => '$e');
    }
    await db.close();
  });

  await checkAsync('schema: typed tables, key, indexes on _id columns, before any row', () async {
    final s = await openStore(newFile());
    await s.useSchema(schema);
    final cols = await s.db.select("SELECT name, type, pk FROM pragma_table_info('customers')");
    expect(cols.map((c) => '${c['name']}:${c['type']}:${c['pk']}').join(' ') ==
        'id:INTEGER:1 name:TEXT:0 pricelist_id:INTEGER:0 balance:INTEGER:0 vip:INTEGER:0 lat:REAL:0 tags:TEXT:0',
        () => '$cols');
    final idx = await s.db.select("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'orders'");
    expect(idx.any((r) => r['name'] == 'orders__customer_id'), () => '$idx');
    expect((await s.datasets()).isEmpty && await s.readCursor() == null, () => 'synced before any batch');
  });

  await checkAsync('batches: upserts, deletes, reset, cursor; rows read back typed', () async {
    final path = newFile();
    var s = await openStore(path);
    await s.useSchema(schema);
    await s.applyBatch(batch(1, reset: ['customers'], customers: [cust(1), cust(2), cust(3)]));
    await s.applyBatch(batch(2, customers: [cust(2, balance: 50)], deleteCustomers: [3, 99]));
    expect(deepEquals(await s.readCursor(), cur(2)), () => 'cursor');
    final rows = await s.readRows('customers');
    expect(rows.length == 2, () => '$rows');
    expect(deepEquals(await s.readRow('customers', 2), {
      'id': 2, 'name': 'C2', 'pricelist_id': 1, 'balance': 50, 'vip': true, 'lat': 52.5, 'tags': {'k': [2]}
    }), () => '${rows.last}');
    await s.db.close();
    s = await openStore(path); // a new process: same file
    expect(deepEquals(await s.readCursor(), cur(2)) && (await s.readRows('customers')).length == 2, () => 'reopen');
    expect(s.schema?.datasets.length == 2 && (await s.datasets()).contains('customers'), () => 'schema kept');
    await s.applyBatch(batch(3, reset: ['customers'], customers: [cust(7)]));
    expect((await s.readRows('customers')).map((r) => r['id']).join() == '7', () => 'reset');
  });

  await checkAsync('no schema: tables inferred from the batch; a reset-only unknown dataset is skipped', () async {
    final s = await openStore(newFile());
    await s.applyBatch(PullResponse(cursor: cur(1), more: false, reset: ['dashboard', 'orders'], data: {
      'orders': DatasetBatch(cols: ['id', 'total', 'ok', 'lines'], rows: [
        ['o1', 5, true, [1]]
      ], deletes: []),
    }));
    expect(deepEquals(await s.readRows('orders'), [
      {'id': 'o1', 'total': 5, 'ok': true, 'lines': [1]}
    ]), () => 'orders');
    final names = await s.datasets();
    expect(names.join() == 'orders', () => '$names');
  });

  await checkAsync('a batch that fails (bad batch, or a throw before commit) changes nothing', () async {
    final s = await openStore(newFile());
    await s.useSchema(schema);
    await s.applyBatch(batch(1, reset: ['customers'], customers: [cust(1)]));
    try {
      await s.applyBatch(batch(2, customers: [cust(5), cust(5)]));
      throw TestFailure('a key twice was accepted');
    } on ProtocolException {
      // expected
    }
    s.beforeCommit = () async => throw StateError('disk full');
    try {
      await s.applyBatch(batch(3, reset: ['customers'], customers: [cust(8), cust(9)]));
    } on StateError {
      // expected
    }
    s.beforeCommit = null;
    expect(deepEquals(await s.readCursor(), cur(1)), () => 'cursor moved');
    expect((await s.readRows('customers')).map((r) => r['id']).join() == '1', () => 'rows moved');
  });

  await checkAsync('migration: a reset with another shape rebuilds the table', () async {
    final s = await openStore(newFile());
    await s.useSchema(schema);
    await s.applyBatch(batch(1, reset: ['customers'], customers: [cust(1)]));
    final wider = SyncSchema({
      ...schema.datasets,
      'customers': DatasetSchema(
          name: 'customers', cols: ['id', 'name', 'city'], types: ['int', 'str', 'str'], key: 'id'),
    });
    await s.useSchema(wider); // the table stays until the server's reset
    expect((await s.readRows('customers')).length == 1, () => 'dropped early');
    await s.applyBatch(batch(2, reset: ['customers'], customerCols: ['id', 'name', 'city'], customers: [
      [1, 'C1', 'Utrecht']
    ]));
    final cols = await s.db.select("SELECT name FROM pragma_table_info('customers')");
    expect(cols.map((c) => c['name']).join(',') == 'id,name,city', () => '$cols');
    final rows = await s.readRows('customers');
    expect(deepEquals(rows, [
      {'id': 1, 'name': 'C1', 'city': 'Utrecht'}
    ]), () => 'rows $rows');
  });

  await checkAsync('outbox in the same file: ids never reused, results, rejections kept', () async {
    final path = newFile();
    var s = await openStore(path);
    await s.outbox.enqueue('a', {'x': 1});
    await s.outbox.enqueue('b', {'y': [1, 'two']});
    await s.outbox.markResult(1, MutationResult(id: 1, status: MutationStatus.applied));
    await s.db.close();
    s = await openStore(path);
    final e = await s.outbox.enqueue('c', {});
    expect(e.id == 3, () => 'id ${e.id}');
    final pending = (await s.outbox.pending()).map((m) => '${m.id}${m.name}${m.args}').join(' ');
    expect(pending == '2b{y: [1, two]} 3c{}', () => pending);
    await s.outbox.markResult(2, MutationResult(id: 2, status: MutationStatus.rejected, code: 'CONFLICT', message: 'm'));
    final entries = await s.outbox.entries();
    expect(entries.first.status == OutboxStatus.rejected && entries.first.code == 'CONFLICT', () => '$entries');
    await s.outbox.dismiss(2);
    expect((await s.outbox.entries()).map((e) => e.id).join() == '3', () => 'dismiss');
  });

  await checkAsync('optimistic: shown at once, rebased on server rows, rolled back on rejection', () async {
    final db = await SyncDatabase.open(FfiSqlDatabase.open(newFile()));
    final s = db.store;
    await s.useSchema(schema);
    await s.applyBatch(batch(1, reset: ['customers', 'orders'], customers: [cust(1, balance: 100)]));
    Future<void> order(OptimisticWriter w, String id, int total) async {
      await w.upsert('orders', {'id': id, 'customer_id': 1, 'total': total});
      final c = await w.get('customers', 1);
      await w.update('customers', 1, {'balance': (c!['balance'] as int) + total});
    }

    await db.mutate('order.create', {'id': 'o1'}, optimistic: (w) => order(w, 'o1', 10));
    await db.mutate('order.create', {'id': 'o2'}, optimistic: (w) => order(w, 'o2', 5));
    expect((await db.get('SELECT balance FROM customers WHERE id = 1'))!['balance'] == 115, () => 'optimistic');
    // The server renames the customer meanwhile: its row is the new base, the ops go back on top.
    await s.applyBatch(batch(2, customers: [cust(1, balance: 100, name: 'N')]));
    var c = await db.get('SELECT name, balance FROM customers WHERE id = 1');
    expect(c!['name'] == 'N1' && c['balance'] == 115, () => 'rebase $c');
    await s.outbox.markResult(2, MutationResult(id: 2, status: MutationStatus.rejected, code: 'CREDIT_LIMIT_EXCEEDED'));
    c = await db.get('SELECT balance FROM customers WHERE id = 1');
    final orders = await db.getAll('SELECT id FROM orders ORDER BY id');
    expect(c!['balance'] == 110 && orders.map((o) => o['id']).join() == 'o1', () => 'rollback $c $orders');
    await s.outbox.markResult(1, MutationResult(id: 1, status: MutationStatus.applied));
    expect((await db.getAll('SELECT id FROM orders')).length == 1, () => 'applied: kept until the server rows');
    await s.applyBatch(batch(3, customers: [cust(1, balance: 110, name: 'N')], orders: [
      ['o1', 1, 10]
    ]));
    c = await db.get('SELECT balance FROM customers WHERE id = 1');
    expect(c!['balance'] == 110, () => 'settled $c');
    final left = await s.db.select('SELECT (SELECT count(*) FROM _sync_ops) + (SELECT count(*) FROM _sync_base) AS n');
    expect(left.single['n'] == 0, () => 'overlay left behind: $left');
    await db.close();
  });

  await checkAsync('watch: emits at once, again only when a table it reads changes', () async {
    final db = await SyncDatabase.open(FfiSqlDatabase.open(newFile()));
    await db.store.useSchema(schema);
    final seen = <List<Map<String, Object?>>>[];
    final sub = db.watch('SELECT c.id, count(o.id) AS n FROM customers c LEFT JOIN orders o ON o.customer_id = c.id '
            'GROUP BY c.id')
        .listen(seen.add);
    await settle(() => seen.length == 1);
    await db.store.applyBatch(batch(1, reset: ['customers'], customers: [cust(1)]));
    await settle(() => seen.length == 2);
    await db.outbox.enqueue('x', {}); // the outbox only: no re-run
    await db.mutate('order.create', {}, optimistic: (w) => w.upsert('orders', {'id': 'o', 'customer_id': 1}));
    await settle(() => seen.length == 3);
    expect(seen.last.single['n'] == 1, () => '$seen');
    await Future<void>.delayed(const Duration(milliseconds: 50));
    expect(seen.length == 3, () => 'extra emissions: $seen');
    await sub.cancel();
    await db.close();
  });

  await checkAsync('kill -9 mid-batch: the file stays at the previous cursor with the previous rows', () async {
    final path = newFile();
    final p = await Process.start(Platform.resolvedExecutable, [Platform.script.toFilePath(), 'child-kill', path]);
    final out = StringBuffer();
    final mid = Completer<void>();
    p.stdout.transform(const SystemEncoding().decoder).listen((s) {
      out.write(s);
      if (out.toString().contains('mid-batch') && !mid.isCompleted) mid.complete();
    });
    await mid.future.timeout(const Duration(seconds: 30), onTimeout: () => throw TestFailure('child: $out'));
    p.kill(ProcessSignal.sigkill);
    await p.exitCode;
    final s = await openStore(path);
    final cursor = await s.readCursor();
    expect(deepEquals(cursor, cur(1)), () => 'cursor $cursor');
    final rows = await s.readRows('customers');
    expect(rows.length == 1000 && rows.every((r) => r['balance'] == 0), () => '${rows.length} rows');
  });
}

/// The child of the kill test: batch 1 commits, batch 2 (20,000 rows)
/// stops inside its transaction and waits to be killed.
Future<void> childKill(String path) async {
  final s = await openStore(path);
  await s.useSchema(schema);
  await s.applyBatch(batch(1, reset: ['customers'], customers: [for (var i = 1; i <= 1000; i++) cust(i)]));
  s.beforeCommit = () async {
    stdout.writeln('mid-batch');
    await stdout.flush();
    sleep(const Duration(minutes: 5)); // blocks the isolate: killed here
  };
  await s.applyBatch(batch(2, customers: [for (var i = 1; i <= 20000; i++) cust(i, balance: 7)]));
}

Future<void> settle(bool Function() test) async {
  final end = DateTime.now().add(const Duration(seconds: 5));
  while (!test()) {
    if (DateTime.now().isAfter(end)) throw TestFailure('timed out');
    await Future<void>.delayed(const Duration(milliseconds: 5));
  }
}
