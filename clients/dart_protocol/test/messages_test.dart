// Message types of protocol v1: round trips against the shared vectors of
// tests/vectors/msgpack.json (byte for byte), shape errors, the wire value
// rules, and the error-code enum against sync/errors.py.
//
//   dart test/messages_test.dart
import 'dart:io';
import 'dart:typed_data';

import 'package:dart_protocol/io.dart';

import 'harness.dart';
import 'support.dart';

void main() {
  errorCodeChecks();
  vectorChecks();
  shapeChecks();
  wireValueChecks();
  check('uuidV4 has the v4 layout and is random', () {
    final re = RegExp(r'^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$');
    final ids = {for (var i = 0; i < 1000; i++) uuidV4()};
    expect(ids.length == 1000, () => 'duplicates');
    expect(ids.every(re.hasMatch), () => ids.firstWhere((s) => !re.hasMatch(s)));
  });
  summary();
}

// --- error codes mirror sync/errors.py ------------------------------------------

void errorCodeChecks() {
  final source = File.fromUri(repoRoot().resolve('sync/errors.py')).readAsStringSync();
  final row = RegExp(r'^\s+([A-Z_]+) = \("([A-Z_]+)", (\d+), (\d+), "((?:[^"\\]|\\.)*)"\)', multiLine: true);
  final python = row.allMatches(source).toList();
  check('sync/errors.py table parsed', () {
    expect(python.length >= 19, () => 'found only ${python.length} codes');
  });
  check('ErrorCode mirrors sync/errors.py: same codes, same order', () {
    final dart = ErrorCode.values.map((c) => c.wire).toList();
    final py = python.map((m) => m[2]!).toList();
    expect(dart.join(',') == py.join(','), () => 'dart $dart\npython $py');
  });
  for (final m in python) {
    check('ErrorCode ${m[2]} http/close/meaning', () {
      final code = ErrorCode.fromWire(m[2]);
      expect(code != null, () => 'missing in Dart');
      expect(code!.http == int.parse(m[3]!), () => 'http ${code.http} != ${m[3]}');
      expect(code.close == int.parse(m[4]!), () => 'close ${code.close} != ${m[4]}');
      expect(code.meaning == m[5], () => 'meaning "${code.meaning}" != "${m[5]}"');
    });
  }
  check('levels, close-code lookup, unknown codes', () {
    expect(ErrorCode.creditLimitExceeded.level == ErrorLevel.mutation, () => 'mutation level');
    expect(ErrorCode.unavailable.level == ErrorLevel.request, () => 'request level');
    expect(ErrorCode.fromClose(4410) == ErrorCode.revoked, () => '4410');
    expect(ErrorCode.fromClose(4401) == ErrorCode.authRequired, () => '4401: first in table order');
    expect(ErrorCode.fromWire('NEW_CODE') == null, () => 'unknown');
    final e = SyncServerException('NEW_CODE', 'from a newer server');
    expect(e.code == null && e.codeName == 'NEW_CODE', () => '$e');
  });
}

// --- shared vectors -----------------------------------------------------------

/// Decoded vector → typed message → encoded bytes, per message kind.
final Map<String, Map<String, Object?> Function(Object?)> parsers = {
  'pull request': (v) => PullRequest.fromMsgpack(v).toMsgpack(),
  'pull response': (v) => PullResponse.fromMsgpack(v).toMsgpack(),
  'push request': (v) => PushRequest.fromMsgpack(v).toMsgpack(),
  'push response': (v) => PushResponse.fromMsgpack(v).toMsgpack(),
  'error body': (v) => ErrorBody.fromMsgpack(v).toMsgpack(),
  'ws ': (v) => Frame.fromMsgpack(v).toMsgpack(),
};

void vectorChecks() {
  final vectors = loadVectors('msgpack.json');
  var used = 0;
  for (final v in vectors) {
    final name = v['name'] as String;
    final prefix = parsers.keys.where(name.startsWith).firstOrNull;
    if (prefix == null) continue;
    used++;
    check('vector "$name" round trips byte for byte', () {
      final hex = v['hex'] as String;
      final back = toHex(msgpackEncode(parsers[prefix]!(msgpackDecode(fromHex(hex)))));
      expect(back == hex, () => 'got\n$back\nwant\n$hex');
    });
  }
  check('every protocol vector was used (${vectors.length} vectors)', () {
    expect(used >= 17, () => 'only $used protocol vectors found');
  });
  Object? vector(String name) =>
      msgpackDecode(fromHex(vectors.firstWhere((v) => v['name'] == name)['hex'] as String));
  check('typed fields of a pull response', () {
    final r = PullResponse.fromMsgpack(vector('pull response reset + rows + deletes'));
    expect(r.more && r.reset.single == 'customers', () => 'more/reset');
    expect(toHex(r.cursor) == '0100000000000004d2000000000000002a', () => 'cursor');
    expect(r.data['customers']!.rows[1][1] == '北京贸易', () => 'unicode');
    expect(r.data['stock']!.deletes.single == 3009, () => 'stock delete by id');
    expect(r.size == 4, () => 'size ${r.size}');
  });
  check('typed fields of push results and frames', () {
    final r = PushResponse.fromMsgpack(vector('push response applied + rejected')).results;
    expect(r[0].applied && r[0].result!['number'] == 'SO-000123', () => '${r[0]}');
    expect(!r[1].applied && r[1].errorCode == ErrorCode.creditLimitExceeded, () => '${r[1]}');
    final hello = Frame.fromMsgpack(vector('ws hello')) as HelloFrame;
    expect(hello.token!.startsWith('eyJ') && hello.cursor!.length == 17, () => 'hello');
    final err = Frame.fromMsgpack(vector('ws error')) as ErrorFrame;
    expect(err.errorCode == ErrorCode.forbidden, () => 'error frame');
    final busy = ErrorBody.fromMsgpack(vector('error body unavailable')).toException(status: 503);
    expect(busy.retryAfter == 5 && busy.code == ErrorCode.unavailable, () => '$busy');
    expect(Frame.fromMsgpack(vector('ws ping')) is PingFrame, () => 'ping');
    expect(Frame.decode(const PongFrame().encode()) is PongFrame, () => 'pong');
  });
}

// --- bad shapes -------------------------------------------------------------------

void shapeChecks() {
  final cursor = Uint8List.fromList([1, 2, 3]);
  Map<String, Object?> pull() => {
        'v': 1,
        'cursor': cursor,
        'more': false,
        'reset': <Object?>[],
        'data': {
          'catalog': {
            'cols': ['id', 'name'],
            'rows': [
              [1, 'a']
            ],
            'deletes': [2],
          }
        },
      };
  void bad(String what, Object? value, Object? Function(Object?) parse, String mention) {
    check('refuses $what', () {
      try {
        parse(value);
      } on ProtocolException catch (e) {
        expect(e.message.contains(mention), () => 'message "${e.message}" does not mention "$mention"');
        return;
      }
      throw TestFailure('accepted');
    });
  }

  final good = PullResponse.fromMsgpack(pull());
  check('a well-formed pull response parses', () => expect(good.size == 2, () => '${good.size}'));
  bad('a non-map', [1, 2], PullResponse.fromMsgpack, 'must be a map');
  bad('a missing cursor', pull()..remove('cursor'), PullResponse.fromMsgpack, '`cursor`');
  bad('a str cursor', pull()..['cursor'] = 'abc', PullResponse.fromMsgpack, 'must be bin');
  bad('more as int', pull()..['more'] = 1, PullResponse.fromMsgpack, '`more`');
  bad('protocol v2', pull()..['v'] = 2, PullResponse.fromMsgpack, 'v2');
  bad('reset of ints', pull()..['reset'] = [1], PullResponse.fromMsgpack, '`reset`');
  check('expected (rows of a snapshot begun) parses, and round-trips', () {
    final r = PullResponse.fromMsgpack(pull()..['expected'] = {'catalog': 300000});
    expect(r.expected['catalog'] == 300000, () => '${r.expected}');
    expect((r.toMsgpack()['expected'] as Map)['catalog'] == 300000, () => '${r.toMsgpack()}');
    expect(good.expected.isEmpty && !good.toMsgpack().containsKey('expected'), () => 'absent when not sent');
  });
  check('the local tables index the scope columns the schema names, else the *_id columns', () {
    final named = DatasetSchema.fromMsgpack({
      'name': 'prices', 'cols': ['id', 'pricelist_id', 'product_id'], 'types': ['int', 'int', 'int'], 'key': 'id',
      'scope_cols': ['pricelist_id'],
    });
    expect(named.ddl().where((s) => s.startsWith('CREATE INDEX')).single.contains('"pricelist_id"'), () => '${named.ddl()}');
    final older = DatasetSchema.fromMsgpack({
      'name': 'prices', 'cols': ['id', 'pricelist_id', 'product_id'], 'types': ['int', 'int', 'int'], 'key': 'id'});
    expect(older.ddl().where((s) => s.startsWith('CREATE INDEX')).length == 2, () => '${older.ddl()}');
  });
  bad('expected of strings', pull()..['expected'] = {'catalog': 'lots'}, PullResponse.fromMsgpack, '`expected`');
  bad('a row of the wrong width', pull()..['data'] = {
    'catalog': {
      'cols': ['id', 'name'],
      'rows': [
        [1]
      ],
      'deletes': []
    }
  }, PullResponse.fromMsgpack, 'row 0 of dataset catalog');
  bad('rows sent as bin', pull()..['data'] = {
    'catalog': {'cols': <Object?>[], 'rows': Uint8List(2), 'deletes': []}
  }, PullResponse.fromMsgpack, '`rows`');
  bad('missing deletes', pull()..['data'] = {
    'catalog': {'cols': <Object?>[], 'rows': <Object?>[]}
  }, PullResponse.fromMsgpack, '`deletes`');
  bad('a rejected result without code', {
    'v': 1,
    'results': [
      {'id': 1, 'status': 'rejected'}
    ]
  }, PushResponse.fromMsgpack, '`code`');
  bad('an unknown status', {
    'v': 1,
    'results': [
      {'id': 1, 'status': 'maybe'}
    ]
  }, PushResponse.fromMsgpack, 'maybe');
  Map<String, Object?> mutation(int id) => {'id': id, 'name': 'x', 'args': <String, Object?>{}, 'at': 1};
  bad('mutation ids that do not increase', {
    'v': 1,
    'client_id': 'c',
    'mutations': [mutation(2), mutation(2)]
  }, PushRequest.fromMsgpack, 'strictly increase');
  bad('a mutation id of 0', {
    'v': 1,
    'client_id': 'c',
    'mutations': [mutation(0)]
  }, PushRequest.fromMsgpack, 'positive');
  bad('an empty client_id', {'v': 1, 'client_id': '', 'cursor': null}, PullRequest.fromMsgpack, 'client_id');
  bad('an unknown frame type', {'t': 'shout'}, Frame.fromMsgpack, 'shout');
  bad('a frame without t', {'cursor': cursor}, Frame.fromMsgpack, '`t`');
  bad('an ack without cursor', {'t': 'ack'}, Frame.fromMsgpack, '`cursor`');
  bad('bytes that are not msgpack', Uint8List.fromList([0xc1]), (b) => Frame.decode(b as Uint8List), 'not msgpack');
  bad('an error body without code', {'error': {'message': 'x'}}, ErrorBody.fromMsgpack, '`code`');
}

// --- wire value rules (sync/wire.py check_values) ------------------------------

void wireValueChecks() {
  void refused(String what, Object? value) => check('checkWireValue refuses $what',
      () => expectThrows<ProtocolException>(() => checkWireValue(value), what));
  refused('2^53', {'n': 9007199254740992});
  refused('-2^53', [-9007199254740992]);
  refused('NaN', double.nan);
  refused('infinity', {'x': double.infinity});
  refused('U+0000', 'a\u0000b');
  refused('int map keys', {1: 'a'});
  refused('a DateTime', DateTime(2024));
  Object? nest(int n) => n == 0 ? 1 : [nest(n - 1)];
  refused('nesting 33 deep (python refuses it too)', nest(33));
  check('checkWireValue accepts the protocol values', () {
    checkWireValue({
      'id': uuidV4(),
      'n': 9007199254740991,
      'm': -9007199254740991,
      'f': 1.5,
      'b': Uint8List(3),
      'l': [null, true, 'é😀'],
      'deep': nest(31),
    });
    checkWireValue(nest(32)); // the deepest python's check_values takes
  });
}
