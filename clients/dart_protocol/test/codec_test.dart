// Checks the msgpack codec against the shared vectors of tests/vectors/
// (written by python msgpack) plus Dart-only edge cases and random values.
//
//   dart test/codec_test.dart
import 'dart:convert';
import 'dart:io';
import 'dart:math';
import 'dart:typed_data';

import 'package:dart_protocol/io.dart';

import 'harness.dart';

void main() {
  vectorChecks();
  malformedChecks();
  dartOnlyChecks();
  randomChecks();
  summary();
}

// --- shared vectors -------------------------------------------------------

/// tests/vectors/ at the repo root, found from this script, not the cwd.
List<Object?> loadVectors(String file) {
  final uri = Platform.script.resolve('../../../tests/vectors/$file');
  return jsonDecode(File.fromUri(uri).readAsStringSync()) as List<Object?>;
}

void vectorChecks() {
  for (final v in loadVectors('msgpack.json').cast<Map<String, Object?>>()) {
    final name = v['name'] as String;
    final bytes = fromHex(v['hex'] as String);
    final expected = fromTagged(v['value']);
    check('decode $name', () {
      final got = msgpackDecode(bytes);
      expect(same(got, expected), () => 'got ${show(got)}');
    });
    if (v['decode_only'] == true) continue;
    check('encode $name', () {
      final got = toHex(msgpackEncode(expected));
      expect(got == v['hex'], () => 'got ${cut(got)}, want ${cut(v['hex'] as String)}');
    });
  }
}

void malformedChecks() {
  for (final v in loadVectors('malformed.json').cast<Map<String, Object?>>()) {
    check('reject ${v['name']}', () {
      expectThrows<MsgpackFormatException>(
          () => msgpackDecode(fromHex(v['hex'] as String)), v['name'] as String);
    });
  }
}

/// Tagged JSON (see tests/vectors/README.md) -> the Dart value it stands for.
Object? fromTagged(Object? j) {
  if (j is List) return j.map(fromTagged).toList();
  if (j is! Map<String, Object?>) return j; // null, bool, int, String
  if (j.length == 1 && j.keys.single.startsWith(r'$')) {
    final tag = j.values.single;
    switch (j.keys.single) {
      case r'$bin':
        return fromHex(tag as String);
      case r'$int':
        return int.parse(tag as String);
      case r'$float':
        return tag is String ? double.parse(tag) : (tag as num).toDouble();
      case r'$map':
        return {
          for (final kv in (tag as List).cast<List<Object?>>())
            fromTagged(kv[0]): fromTagged(kv[1])
        };
    }
    throw FormatException('unknown tag ${j.keys.single}');
  }
  return j.map((k, x) => MapEntry(k, fromTagged(x)));
}

// --- Dart-only edge cases (python accepts or can't express these) ----------

void dartOnlyChecks() {
  check('uint64 above 2^63-1 is refused, not wrapped', () {
    expectThrows<MsgpackFormatException>(
        () => msgpackDecode(fromHex('cf8000000000000000')), '2^63');
    expectThrows<MsgpackFormatException>(
        () => msgpackDecode(fromHex('cfffffffffffffffff')), '2^64-1');
  });
  check('extension types are refused', () {
    for (final hex in ['d40100', 'd6ff00000000', 'c70105ff']) {
      expectThrows<MsgpackFormatException>(() => msgpackDecode(fromHex(hex)), hex);
    }
  });
  check('duplicate map keys are refused', () {
    expectThrows<MsgpackFormatException>(
        () => msgpackDecode(fromHex('82a16101a16102')), 'dup string key');
    expectThrows<MsgpackFormatException>(
        () => msgpackDecode(fromHex('82010101')), 'dup int key');
  });
  check('error offset points at the bad value', () {
    try {
      msgpackDecode(fromHex('9201c1'));
    } on MsgpackFormatException catch (e) {
      expect(e.offset == 2, () => 'offset ${e.offset}');
      return;
    }
    throw TestFailure('no exception');
  });
  check('string-keyed maps decode as Map<String, Object?>', () {
    final m = msgpackDecode(msgpackEncode({'a': {'b': 1}, 'c': {}}));
    expect(m is Map<String, Object?>, () => '${m.runtimeType}');
    final inner = (m as Map<String, Object?>)['a'];
    expect(inner is Map<String, Object?>, () => '${inner.runtimeType}');
    final mixed = msgpackDecode(msgpackEncode({'a': 1, 2: 'b'}));
    expect(mixed is! Map<String, Object?>, () => '${mixed.runtimeType}');
  });
  check('leading byte order marks survive (utf8.decode drops one)', () {
    for (final s in ['\uFEFF', '\uFEFFx', '\uFEFF\uFEFFx', 'x\uFEFF']) {
      final back = msgpackDecode(msgpackEncode(s));
      expect(back == s, () => '${s.codeUnits} came back as ${(back as String).codeUnits}');
    }
  });
  check('every NaN encodes as python float("nan")', () {
    final negNaN = (ByteData(8)..setUint32(0, 0xfff80001)).getFloat64(0);
    for (final nan in [double.nan, -double.nan, negNaN]) {
      expect(toHex(msgpackEncode(nan)) == 'cb7ff8000000000000', () => '$nan');
    }
  });
  check('Uint8List is bin, other List<int> is array', () {
    expect(toHex(msgpackEncode(Uint8List.fromList([1, 2]))) == 'c4020102', () => 'bin');
    expect(toHex(msgpackEncode(<int>[1, 2])) == '920102', () => 'array');
  });
  check('decode accepts a plain List<int>', () {
    expect(msgpackDecode(<int>[0x92, 0x01, 0xa1, 0x61]).toString() == '[1, a]', () => '');
  });
  check('unsupported Dart types are refused', () {
    for (final v in <Object>[DateTime(2024), {1, 2}, Object(), BigInt.one]) {
      expectThrows<ArgumentError>(() => msgpackEncode(v), '${v.runtimeType}');
    }
  });
  check('lone surrogate is refused, pairs are fine', () {
    expectThrows<ArgumentError>(() => msgpackEncode('a\uD800b'), 'lone high');
    expectThrows<ArgumentError>(() => msgpackEncode('\uDC00'), 'lone low');
    expectThrows<ArgumentError>(() => msgpackEncode('\uDC00\uDC00'), 'low, low');
    expectThrows<ArgumentError>(() => msgpackEncode('x\uDBFF'), 'high at the end');
    expect(toHex(msgpackEncode('😀')) == 'a4f09f9880', () => 'pair');
  });
  check('depth limit on encode (also stops cycles)', () {
    final cyclic = <Object?>[];
    cyclic.add(cyclic);
    expectThrows<ArgumentError>(() => msgpackEncode(cyclic), 'cycle');
    expectThrows<ArgumentError>(() => msgpackEncode([[[]]], maxDepth: 2), 'depth 3 > 2');
    msgpackEncode([[]], maxDepth: 2);
  });
  check('custom decode depth limit', () {
    expectThrows<MsgpackFormatException>(
        () => msgpackDecode(fromHex('919190'), maxDepth: 2), 'depth 3 > 2');
    msgpackDecode(fromHex('9190'), maxDepth: 2);
  });
}

// --- random values ----------------------------------------------------------

void randomChecks() {
  final rnd = Random(20241122); // fixed seed: a failure reproduces
  final samples = [for (var i = 0; i < 3000; i++) randomValue(rnd, 0)];
  check('random round trips', () {
    for (final v in samples) {
      final bytes = msgpackEncode(v);
      final back = msgpackDecode(bytes);
      expect(same(back, v), () => '${show(v)} came back as ${show(back)}');
      expect(toHex(msgpackEncode(back)) == toHex(bytes), () => 're-encode of ${show(v)}');
    }
  });
  check('every proper prefix of a value is rejected', () {
    // msgpack is self-delimiting, so a cut value can never parse.
    // Quadratic in the size, so only the small samples.
    for (final v in samples.take(1000)) {
      final bytes = msgpackEncode(v);
      if (bytes.length > 400) continue;
      for (var n = 0; n < bytes.length; n++) {
        expectThrows<MsgpackFormatException>(
            () => msgpackDecode(Uint8List.sublistView(bytes, 0, n)), 'prefix $n of ${show(v)}');
      }
    }
  });
  check('corrupted bytes decode or throw MsgpackFormatException, nothing else', () {
    for (final v in samples.take(1000)) {
      final bytes = Uint8List.fromList(msgpackEncode(v));
      bytes[rnd.nextInt(bytes.length)] = rnd.nextInt(256);
      try {
        msgpackDecode(bytes);
      } on MsgpackFormatException {
        // fine
      }
    }
  });
}

const _edgeInts = [
  0, 127, 128, 255, 256, 65535, 65536, 0xffffffff, 0x100000000, //
  -1, -32, -33, -128, -129, -32768, -32769, -0x80000000, -0x80000001,
  0x7fffffffffffffff, -0x8000000000000000,
];

Object? randomValue(Random r, int depth) {
  final kind = r.nextInt(depth < 4 ? 10 : 7);
  switch (kind) {
    case 0:
      return [null, true, false][r.nextInt(3)];
    case 1:
      return _edgeInts[r.nextInt(_edgeInts.length)] + r.nextInt(3) - 1;
    case 2: // any 64-bit pattern
      return (r.nextInt(1 << 32) << 32) | r.nextInt(1 << 32);
    case 3:
      final bits = ByteData(8)
        ..setUint32(0, r.nextInt(1 << 32))
        ..setUint32(4, r.nextInt(1 << 32));
      return bits.getFloat64(0);
    case 4:
      return randomString(r);
    case 5:
      return Uint8List.fromList([for (var i = r.nextInt(300); i > 0; i--) r.nextInt(256)]);
    case 6:
      return r.nextInt(1 << 20) - (1 << 19);
    case 7:
    case 8:
      return [for (var i = r.nextInt(20); i > 0; i--) randomValue(r, depth + 1)];
    default:
      final m = <Object?, Object?>{};
      for (var i = r.nextInt(20); i > 0; i--) {
        m[r.nextInt(4) == 0 ? r.nextInt(1000) : randomString(r)] = randomValue(r, depth + 1);
      }
      return m;
  }
}

String randomString(Random r) {
  final len = [0, 1, 5, 31, 32, 255, 256, 300][r.nextInt(8)];
  final sb = StringBuffer();
  for (var i = 0; i < len; i++) {
    switch (r.nextInt(4)) {
      case 0:
        sb.writeCharCode(0x20 + r.nextInt(0x5f));
      case 1:
        sb.writeCharCode(0x80 + r.nextInt(0xd800 - 0x80)); // BMP below surrogates
      case 2:
        sb.writeCharCode(0xe000 + r.nextInt(0x2000)); // BMP above surrogates
      default:
        sb.writeCharCode(0x10000 + r.nextInt(0x100000)); // astral: a surrogate pair
    }
  }
  return sb.toString();
}

// --- helpers ---------------------------------------------------------------

/// Deep equality that tells int from double (1 == 1.0 in Dart), -0.0 from
/// 0.0, takes NaN == NaN, and compares map entries in order.
bool same(Object? a, Object? b) {
  if (a is double || b is double) {
    if (a is! double || b is! double) return false;
    if (a.isNaN || b.isNaN) return a.isNaN && b.isNaN;
    return a == b && a.isNegative == b.isNegative;
  }
  if (a is Uint8List || b is Uint8List) {
    return a is Uint8List && b is Uint8List && toHex(a) == toHex(b);
  }
  if (a is List || b is List) {
    if (a is! List || b is! List || a.length != b.length) return false;
    for (var i = 0; i < a.length; i++) {
      if (!same(a[i], b[i])) return false;
    }
    return true;
  }
  if (a is Map || b is Map) {
    if (a is! Map || b is! Map || a.length != b.length) return false;
    final ea = a.entries.toList(), eb = b.entries.toList();
    for (var i = 0; i < ea.length; i++) {
      if (!same(ea[i].key, eb[i].key) || !same(ea[i].value, eb[i].value)) return false;
    }
    return true;
  }
  return a.runtimeType == b.runtimeType && a == b;
}

Uint8List fromHex(String h) => Uint8List.fromList(
    [for (var i = 0; i < h.length; i += 2) int.parse(h.substring(i, i + 2), radix: 16)]);

String toHex(List<int> b) => b.map((x) => x.toRadixString(16).padLeft(2, '0')).join();

String cut(String s) => s.length > 120 ? '${s.substring(0, 120)}...(${s.length})' : s;

String show(Object? v) => cut(v is Uint8List ? 'bin:${toHex(v)}' : '$v');
