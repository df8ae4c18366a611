/// msgpack codec for the fieldsync wire protocol.
///
/// The encoder writes exactly the bytes of python msgpack 1.x
/// `packb(value, use_bin_type=True)` (smallest headers, floats always
/// float64, map insertion order), so the server and the client agree byte
/// for byte; tests/vectors/ holds the shared proof.
///
/// Dart -> msgpack: null, bool, int, double, String, Uint8List (bin), List
/// (array), Map (map). Anything else is an [ArgumentError].
/// msgpack -> Dart: the same types; float32 becomes a double; a map whose keys
/// are all strings is a `Map<String, Object?>`, otherwise `Map<Object?, Object?>`.
///
/// Web note: integers are split into 32-bit halves instead of using
/// ByteData.get/setInt64 (unsupported in JavaScript); the protocol keeps
/// integers within ±2^53 so they stay exact there. On the web `1.0 is int`
/// holds, so an integral double is encoded as an int.
library;

import 'dart:convert';
import 'dart:typed_data';

/// Most nested arrays/maps accepted, the same limit as python msgpack's
/// packb and unpackb (1024 containers).
const int msgpackMaxDepth = 1024;

/// Input that is not exactly one valid msgpack value this codec supports.
class MsgpackFormatException extends FormatException {
  MsgpackFormatException(String message, int offset) : super(message, null, offset);

  @override
  String toString() => 'MsgpackFormatException: $message (at byte $offset)';
}

/// Encodes [value] to msgpack bytes.
Uint8List msgpackEncode(Object? value, {int maxDepth = msgpackMaxDepth}) {
  final w = _Writer(maxDepth);
  w.value(value, 0);
  return w.takeBytes();
}

/// Decodes exactly one msgpack value filling all of [bytes].
Object? msgpackDecode(List<int> bytes, {int maxDepth = msgpackMaxDepth}) {
  final r = _Reader(bytes is Uint8List ? bytes : Uint8List.fromList(bytes), maxDepth);
  final value = r.value(0);
  if (r.pos != r.bytes.length) {
    throw MsgpackFormatException(
        '${r.bytes.length - r.pos} extra bytes after the value', r.pos);
  }
  return value;
}

const int _two32 = 0x100000000;
final double _pythonNaN = (ByteData(8)..setUint32(0, 0x7ff80000)).getFloat64(0);

class _Writer {
  _Writer(this.maxDepth);

  final int maxDepth;
  Uint8List _buf = Uint8List(256);
  late ByteData _view = ByteData.sublistView(_buf);
  int _len = 0;

  Uint8List takeBytes() => Uint8List.sublistView(_buf, 0, _len);

  void value(Object? v, int depth) {
    if (v == null) {
      _put(0xc0);
    } else if (v is bool) {
      _put(v ? 0xc3 : 0xc2);
    } else if (v is int) {
      _int(v);
    } else if (v is double) {
      _put(0xcb);
      _reserve(8);
      // Every NaN as python's float('nan'): Dart's double.nan is the x86
      // default NaN ff f8 00.., which would make our bytes differ.
      _view.setFloat64(_len, v.isNaN ? _pythonNaN : v);
      _len += 8;
    } else if (v is String) {
      _checkUtf16(v);
      final b = utf8.encode(v);
      _header(b.length, fix: 0xa0, fixMax: 31, h8: 0xd9, h16: 0xda, h32: 0xdb);
      _bytes(b);
    } else if (v is Uint8List) {
      _header(v.length, h8: 0xc4, h16: 0xc5, h32: 0xc6);
      _bytes(v);
    } else if (v is List) {
      _checkDepth(v, depth);
      _header(v.length, fix: 0x90, fixMax: 15, h16: 0xdc, h32: 0xdd);
      for (final e in v) {
        value(e, depth + 1);
      }
    } else if (v is Map) {
      _checkDepth(v, depth);
      _header(v.length, fix: 0x80, fixMax: 15, h16: 0xde, h32: 0xdf);
      v.forEach((k, e) {
        value(k, depth + 1);
        value(e, depth + 1);
      });
    } else {
      throw ArgumentError.value(v, 'value', 'msgpack cannot encode ${v.runtimeType}');
    }
  }

  void _checkDepth(Object v, int depth) {
    // Also what stops a list that contains itself.
    if (depth >= maxDepth) {
      throw ArgumentError.value(v, 'value', 'nested deeper than $maxDepth');
    }
  }

  void _int(int v) {
    if (v >= 0) {
      if (v <= 0x7f) return _put(v);
      if (v <= 0xff) return _put(0xcc, v, 1);
      if (v <= 0xffff) return _put(0xcd, v, 2);
      if (v <= 0xffffffff) return _put(0xce, v, 4);
      _put(0xcf);
    } else {
      if (v >= -0x20) return _put(v & 0xff); // negative fixint 0xe0..0xff
      if (v >= -0x80) return _put(0xd0, v & 0xff, 1);
      if (v >= -0x8000) return _put(0xd1, v & 0xffff, 2);
      if (v >= -0x80000000) return _put(0xd2, v & 0xffffffff, 4);
      _put(0xd3);
    }
    // 64 bits as two halves; see the library comment. `%` is never negative
    // in Dart, so hi carries the sign.
    final lo = v % _two32;
    final hi = (v - lo) ~/ _two32;
    _reserve(8);
    _view.setInt32(_len, hi);
    _view.setUint32(_len + 4, lo);
    _len += 8;
  }

  /// Type byte [t], then [v] as a big-endian unsigned of [size] bytes.
  void _put(int t, [int v = 0, int size = 0]) {
    _reserve(1 + size);
    _buf[_len++] = t;
    switch (size) {
      case 1:
        _buf[_len] = v;
      case 2:
        _view.setUint16(_len, v);
      case 4:
        _view.setUint32(_len, v);
    }
    _len += size;
  }

  /// The smallest header for a length, as python msgpack picks it.
  void _header(int n,
      {int? fix, int fixMax = -1, int? h8, required int h16, required int h32}) {
    if (fix != null && n <= fixMax) return _put(fix | n);
    if (h8 != null && n <= 0xff) return _put(h8, n, 1);
    if (n <= 0xffff) return _put(h16, n, 2);
    if (n <= 0xffffffff) return _put(h32, n, 4);
    throw ArgumentError('length $n exceeds msgpack limit');
  }

  void _bytes(List<int> b) {
    _reserve(b.length);
    _buf.setRange(_len, _len + b.length, b);
    _len += b.length;
  }

  void _reserve(int n) {
    if (_len + n <= _buf.length) return;
    var cap = _buf.length * 2;
    while (cap < _len + n) {
      cap *= 2;
    }
    _buf = Uint8List(cap)..setRange(0, _len, _buf);
    _view = ByteData.sublistView(_buf);
  }

  /// utf8.encode silently turns a lone surrogate into U+FFFD; python refuses
  /// it. Refuse too rather than send altered text.
  static void _checkUtf16(String s) {
    for (var i = 0; i < s.length; i++) {
      final c = s.codeUnitAt(i);
      if (c & 0xf800 != 0xd800) continue;
      if (c <= 0xdbff && i + 1 < s.length && s.codeUnitAt(i + 1) & 0xfc00 == 0xdc00) {
        i++; // a valid pair
        continue;
      }
      throw ArgumentError.value(s, 'value', 'lone UTF-16 surrogate at index $i');
    }
  }
}

class _Reader {
  _Reader(this.bytes, this.maxDepth) : _view = ByteData.sublistView(bytes);

  final Uint8List bytes;
  final ByteData _view;
  final int maxDepth;
  int pos = 0;

  Object? value(int depth) {
    final start = pos;
    final t = _take(1, start);
    if (t <= 0x7f) return t;
    if (t >= 0xe0) return t - 0x100;
    if (t <= 0x8f) return _map(t & 0x0f, depth, start);
    if (t <= 0x9f) return _array(t & 0x0f, depth, start);
    if (t <= 0xbf) return _str(t & 0x1f, start);
    return switch (t) {
      0xc0 => null,
      0xc2 => false,
      0xc3 => true,
      0xc4 => _bin(_take(1, start), start),
      0xc5 => _bin(_take(2, start), start),
      0xc6 => _bin(_take(4, start), start),
      0xca => _float(4, start),
      0xcb => _float(8, start),
      0xcc => _take(1, start),
      0xcd => _take(2, start),
      0xce => _take(4, start),
      0xcf => _int64(false, start),
      0xd0 => _signed(1, start),
      0xd1 => _signed(2, start),
      0xd2 => _signed(4, start),
      0xd3 => _int64(true, start),
      0xd9 => _str(_take(1, start), start),
      0xda => _str(_take(2, start), start),
      0xdb => _str(_take(4, start), start),
      0xdc => _array(_take(2, start), depth, start),
      0xdd => _array(_take(4, start), depth, start),
      0xde => _map(_take(2, start), depth, start),
      0xdf => _map(_take(4, start), depth, start),
      0xc1 => throw MsgpackFormatException('reserved type byte 0xc1', start),
      // 0xc7-0xc9, 0xd4-0xd8: the protocol uses no extension types.
      _ => throw MsgpackFormatException(
          'unsupported extension type 0x${t.toRadixString(16)}', start),
    };
  }

  /// Fails unless [n] more bytes are there; [start] is the value's offset.
  void _need(int n, int start) {
    if (n > bytes.length - pos) {
      throw MsgpackFormatException(
          'truncated: value needs $n more bytes, ${bytes.length - pos} left', start);
    }
  }

  /// Reads a big-endian unsigned integer of [size] (1, 2 or 4) bytes.
  int _take(int size, int start) {
    _need(size, start);
    final p = pos;
    pos += size;
    return switch (size) {
      1 => bytes[p],
      2 => _view.getUint16(p),
      _ => _view.getUint32(p),
    };
  }

  int _signed(int size, int start) {
    final u = _take(size, start);
    final sign = 1 << (size * 8 - 1);
    return u >= sign ? u - 2 * sign : u;
  }

  int _int64(bool signed, int start) {
    _need(8, start);
    final hi = signed ? _view.getInt32(pos) : _view.getUint32(pos);
    final lo = _view.getUint32(pos + 4);
    if (hi >= 0x80000000) {
      // A Dart int is signed 64-bit; refuse rather than wrap to negative.
      throw MsgpackFormatException('uint64 beyond the Dart int range', start);
    }
    pos += 8;
    return hi * _two32 + lo;
  }

  double _float(int size, int start) {
    _need(size, start);
    final v = size == 4 ? _view.getFloat32(pos) : _view.getFloat64(pos);
    pos += size;
    return v;
  }

  String _str(int n, int start) {
    _need(n, start);
    final view = Uint8List.sublistView(bytes, pos, pos + n);
    pos += n;
    try {
      // Throws on malformed UTF-8 (allowMalformed defaults to false).
      // utf8.decode drops one leading byte order mark (U+FEFF); python keeps
      // it, and so must we: it is part of the string. Put it back.
      final text = utf8.decode(view);
      final bom = n >= 3 && view[0] == 0xef && view[1] == 0xbb && view[2] == 0xbf;
      return bom ? '\uFEFF$text' : text;
    } on FormatException catch (e) {
      throw MsgpackFormatException('invalid UTF-8 in str: ${e.message}', start);
    }
  }

  Uint8List _bin(int n, int start) {
    _need(n, start);
    final b = bytes.sublist(pos, pos + n); // a copy: don't pin the whole input
    pos += n;
    return b;
  }

  void _enter(int depth, int start) {
    if (depth >= maxDepth) {
      throw MsgpackFormatException('nested deeper than $maxDepth', start);
    }
  }

  List<Object?> _array(int n, int depth, int start) {
    _enter(depth, start);
    // Each element takes at least one byte: a huge announced length on short
    // input fails here, before anything is allocated.
    _need(n, start);
    return List<Object?>.generate(n, (_) => value(depth + 1));
  }

  Map<Object?, Object?> _map(int n, int depth, int start) {
    _enter(depth, start);
    _need(2 * n, start);
    // String-keyed (every protocol message) gives a Map<String, Object?>, so
    // callers can cast without copying; otherwise any keys.
    Map<Object?, Object?> m = <String, Object?>{};
    for (var i = 0; i < n; i++) {
      final keyAt = pos;
      final k = value(depth + 1);
      if (k is! String && m is Map<String, Object?>) {
        m = Map<Object?, Object?>.of(m);
      }
      if (m.containsKey(k)) {
        // python would keep the last one; an ambiguous message is an error.
        throw MsgpackFormatException('duplicate map key $k', keyAt);
      }
      m[k] = value(depth + 1);
    }
    return m;
  }
}
