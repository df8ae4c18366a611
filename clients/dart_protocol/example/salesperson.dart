// The salesperson flow with the Flutter-style API, in plain Dart (no Flutter
// SDK here): a customers list fed by `watch`, an order taken offline that
// shows at once, and the rejection banner when the server refuses one.
//
//   dart example/salesperson.dart http://127.0.0.1:8000 "$(fieldsync token sales1)" [file.db]
//
// In a Flutter app the three "widgets" below are StatefulWidgets whose
// setState() is the print() here; the SyncDatabase is made once in main().
import 'dart:async';
import 'dart:io';

import 'package:dart_protocol/io.dart';

/// The app's sign-in, e.g. a refresh-token exchange with your identity provider.
class AppConnector implements SyncConnector {
  AppConnector(this.server, this.token);
  final Uri server;
  final String token;

  @override
  Future<SyncCredentials> fetchCredentials() async => SyncCredentials(endpoint: server, token: token);
}

/// A customers list: `StreamBuilder(stream: db.watch(...))` in Flutter.
class CustomersScreen {
  CustomersScreen(SyncDatabase db)
      : _sub = db
            .watch('SELECT c.id, c.name, c.balance, c.credit_limit, count(o.id) AS orders '
                'FROM customers c LEFT JOIN orders o ON o.customer_id = c.id GROUP BY c.id ORDER BY c.name LIMIT 5')
            .listen((rows) {
          stdout.writeln('[customers] ${rows.map((r) => '${r['name']} (${r['orders']} orders, '
              'balance ${r['balance']}/${r['credit_limit']})').join('; ')}');
        });
  final StreamSubscription<Object?> _sub;
  Future<void> dispose() => _sub.cancel();
}

/// The order form's submit: the order and the customer's new balance show at
/// once (optimistic), and go to the server when there is a connection.
Future<OutboxEntry> takeOrder(SyncDatabase db, Map<String, Object?> customer, Map<String, Object?> price, int qty) {
  final id = uuidV4(), total = (price['amount'] as int) * qty;
  final lines = [
    {'product_id': price['product_id'], 'qty': qty, 'price': price['amount']}
  ];
  return db.mutate('order.create', {'id': id, 'customer_id': customer['id'], 'lines': lines},
      optimistic: (w) async {
    await w.upsert('orders', {
      'id': id,
      'customer_id': customer['id'],
      'status': 'confirmed',
      'lines': [for (final l in lines) {...l, 'amount': total}],
      'total': total,
      'currency': customer['currency'],
      'taken_at': DateTime.now().millisecondsSinceEpoch,
    });
    final now = await w.get('customers', customer['id']!);
    await w.update('customers', customer['id']!, {'balance': (now!['balance'] as int) + total});
  });
}

Future<void> main(List<String> args) async {
  if (args.length < 2) {
    stderr.writeln('usage: dart example/salesperson.dart SERVER_URL TOKEN [file.db]');
    exitCode = 2;
    return;
  }
  final file = args.length > 2 ? args[2] : '${Directory.systemTemp.createTempSync('sales').path}/sync.db';
  final db = await SyncDatabase.open(FfiSqlDatabase.open(file));
  final connector = AppConnector(Uri.parse(args[0]), args[1]);
  db.status.listen((s) => stdout.writeln('[status] $s'));
  db.rejections.listen((rs) {
    for (final r in rs) {
      stdout.writeln('[banner] order refused: ${r.code}: ${r.message}');
    }
  });

  await db.connect(connector);
  await db.waitFor((s) => s.connected && !s.downloading, timeout: const Duration(minutes: 2));
  final screen = CustomersScreen(db);

  // Out of coverage: the order is taken offline.
  await db.disconnect();
  final customer = (await db.get('SELECT * FROM customers ORDER BY credit_limit - balance LIMIT 1'))!;
  final price = (await db.get(
      'SELECT p.* FROM prices p JOIN catalog c ON c.id = p.product_id '
      'WHERE p.pricelist_id = ? AND p.valid_from <= ? AND (p.valid_to IS NULL OR p.valid_to > ?) '
      'ORDER BY p.amount DESC LIMIT 1',
      [customer['pricelist_id'], DateTime.now().millisecondsSinceEpoch, DateTime.now().millisecondsSinceEpoch]))!;
  final headroom = (customer['credit_limit'] as int) - (customer['balance'] as int);
  final qty = headroom ~/ (price['amount'] as int) + 1; // one unit too many: the server will refuse it
  stdout.writeln('-- offline: ${customer['name']} orders $qty × product ${price['product_id']}');
  await takeOrder(db, customer, price, qty);
  await Future<void>.delayed(const Duration(milliseconds: 100)); // the list re-renders at once

  stdout.writeln('-- back in coverage');
  await db.connect(connector);
  await db.waitFor((s) => s.pending == 0 && s.connected, timeout: const Duration(seconds: 30));
  await Future<void>.delayed(const Duration(milliseconds: 300)); // the list shows the rollback
  await screen.dispose();
  await db.close();
}
