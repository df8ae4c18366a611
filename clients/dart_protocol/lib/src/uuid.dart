/// Ids of rows made on the device (orders, payments, visits, sales).
library;

import 'dart:math';

final Random _secure = Random.secure();

/// A random (version 4) UUID from a cryptographically secure source, as the
/// server expects for ids made on the device: `xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`.
String uuidV4([Random? random]) {
  final r = random ?? _secure;
  final b = List<int>.generate(16, (_) => r.nextInt(256));
  b[6] = (b[6] & 0x0f) | 0x40; // version 4
  b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
  final h = b.map((x) => x.toRadixString(16).padLeft(2, '0')).join();
  return '${h.substring(0, 8)}-${h.substring(8, 12)}-${h.substring(12, 16)}-'
      '${h.substring(16, 20)}-${h.substring(20)}';
}
