/// Helpers shared by the message, client and end-to-end tests.
library;

import 'dart:convert';
import 'dart:io';
import 'dart:typed_data';

/// tests/vectors/<file> at the repo root, found from this package, not the cwd.
List<Map<String, Object?>> loadVectors(String file) {
  final uri = Platform.script.resolve('../../../tests/vectors/$file');
  return (jsonDecode(File.fromUri(uri).readAsStringSync()) as List).cast<Map<String, Object?>>();
}

/// The repo root (for sync/errors.py and friends).
Uri repoRoot() => Platform.script.resolve('../../../');

Uint8List fromHex(String h) => Uint8List.fromList(
    [for (var i = 0; i < h.length; i += 2) int.parse(h.substring(i, i + 2), radix: 16)]);

String toHex(List<int> b) => b.map((x) => x.toRadixString(16).padLeft(2, '0')).join();

/// Deep equality of decoded values: lists and bin element-wise, maps by key
/// (order-insensitive), ints never equal to doubles.
bool deepEquals(Object? a, Object? b) {
  if (a is double || b is double) {
    if (a is! double || b is! double) return false;
    return a == b || (a.isNaN && b.isNaN);
  }
  if (a is List || b is List) {
    if (a is! List || b is! List || a.length != b.length) return false;
    if ((a is Uint8List) != (b is Uint8List)) return false;
    for (var i = 0; i < a.length; i++) {
      if (!deepEquals(a[i], b[i])) return false;
    }
    return true;
  }
  if (a is Map || b is Map) {
    if (a is! Map || b is! Map || a.length != b.length) return false;
    for (final k in a.keys) {
      if (!b.containsKey(k) || !deepEquals(a[k], b[k])) return false;
    }
    return true;
  }
  return a == b;
}
