/// A scripted fieldsync server for client_test.dart: HTTP pull/push and a
/// WebSocket session over a fixed history (three catalog rows, then a change),
/// with hooks to drop or revoke sessions and to refuse WebSockets.
library;

import 'dart:io';
import 'dart:typed_data';

import 'package:dart_protocol/io.dart';

import 'support.dart';

Uint8List cur(int n) => Uint8List.fromList([n]);

PullResponse batch(int cursor,
        {bool more = false,
        List<String> reset = const [],
        Map<String, DatasetBatch> data = const {}}) =>
    PullResponse(cursor: cur(cursor), more: more, reset: reset, data: data);

DatasetBatch part(List<List<Object?>> rows, [List<Object?> deletes = const [], List<String>? cols]) =>
    DatasetBatch(cols: cols ?? ['id', 'name'], rows: rows, deletes: deletes);

class FakeServer {
  late HttpServer http;
  bool webSocketUp = true;
  final hellos = <HelloFrame>[];
  final acks = <String>[];
  final pushes = <List<int>>[];
  final authHeaders = <String?>{};
  final sockets = <WebSocket>[];

  /// Pushes still to refuse with RATE_LIMITED (`retry_after: 1`), and when each was.
  int refusePushes = 0;
  final refusedAt = <DateTime>[];
  final pushedAt = <DateTime>[];

  bool _refuse() {
    if (refusePushes == 0) return false;
    refusePushes--;
    refusedAt.add(DateTime.now());
    return true;
  }

  static const _limited = ErrorFrame('RATE_LIMITED', 'too many requests', retryAfter: 1);

  Uri get uri => Uri.parse('http://127.0.0.1:${http.port}');

  /// The server's whole history: three catalog rows, then a change.
  PullResponse after(Uint8List? cursor) => switch (cursor?.single) {
        null => batch(1, more: true, reset: ['catalog'], data: {
            'catalog': part([
              [1, 'a'],
              [2, 'b'],
              [3, 'c']
            ])
          }),
        1 => batch(2, data: {
            'catalog': part([
              [4, 'd']
            ], [2])
          }),
        _ => batch(2),
      };

  List<MutationResult> results(List<Mutation> ms) => [
        for (final m in ms)
          m.name == 'bad'
              ? MutationResult(id: m.id, status: MutationStatus.rejected, code: 'INVALID_ARGS', message: 'bad')
              : MutationResult(id: m.id, status: MutationStatus.applied, result: {'ok': m.id})
      ];

  /// When set, any other bearer token is refused with 401 AUTH_INVALID.
  String? requiredToken;

  Future<void> start() async {
    http = await HttpServer.bind(InternetAddress.loopbackIPv4, 0);
    http.listen((req) async {
      final auth = req.headers.value(HttpHeaders.authorizationHeader);
      authHeaders.add(auth);
      if (requiredToken != null && auth != 'Bearer $requiredToken') {
        await req.drain<void>();
        req.response.statusCode = 401;
        req.response.add(msgpackEncode(ErrorBody('AUTH_INVALID', 'token expired').toMsgpack()));
        await req.response.close();
        return;
      }
      if (req.uri.path == '/sync/ws' && webSocketUp && WebSocketTransformer.isUpgradeRequest(req)) {
        _session(await WebSocketTransformer.upgrade(req));
        return;
      }
      if (req.uri.path == '/sync/ws') {
        req.response.statusCode = 404; // as a proxy that does not pass WebSockets
        await req.response.close();
        return;
      }
      if (req.method == 'GET') {
        // no /sync/schema here: clients must cope (SyncDatabase infers the tables)
        await req.drain<void>();
        req.response.statusCode = 404;
        req.response.add(msgpackEncode(ErrorBody('BAD_REQUEST', 'no such route').toMsgpack()));
        await req.response.close();
        return;
      }
      final body = msgpackDecode(await req.fold<List<int>>([], (a, b) => a..addAll(b)));
      Map<String, Object?> answer;
      if (req.uri.path == '/sync/pull') {
        answer = after(PullRequest.fromMsgpack(body).cursor).toMsgpack();
      } else if (req.uri.path == '/sync/push' && _refuse()) {
        req.response.statusCode = 429;
        req.response.headers.set('retry-after', '1');
        answer = ErrorBody(_limited.code, _limited.message, retryAfter: _limited.retryAfter).toMsgpack();
      } else if (req.uri.path == '/sync/push') {
        final ms = PushRequest.fromMsgpack(body).mutations;
        pushes.add([for (final m in ms) m.id]);
        pushedAt.add(DateTime.now());
        answer = PushResponse(results(ms)).toMsgpack();
      } else {
        req.response.statusCode = 404;
        answer = ErrorBody('BAD_REQUEST', 'no such route').toMsgpack();
      }
      req.response.add(msgpackEncode(answer));
      await req.response.close();
    });
  }

  void _session(WebSocket ws) {
    sockets.add(ws);
    ws.listen((data) {
      final frame = Frame.decode(data as List<int>);
      switch (frame) {
        case HelloFrame():
          hellos.add(frame);
          Uint8List? c = frame.cursor;
          while (true) {
            final b = after(c);
            ws.add(ChangesFrame(b).encode());
            c = b.cursor;
            if (!b.more) break;
          }
        case AckFrame(:final cursor):
          acks.add(toHex(cursor));
        case PushFrame() when _refuse():
          ws.add(_limited.encode()); // the socket stays open, as the server does
        case PushFrame(:final mutations):
          pushes.add([for (final m in mutations) m.id]);
          pushedAt.add(DateTime.now());
          ws.add(ResultsFrame(results(mutations)).encode());
        case PingFrame():
          ws.add(const PongFrame().encode());
        default:
      }
    });
  }

  Future<void> revokeAll() async {
    for (final ws in sockets) {
      ws.add(const ErrorFrame('REVOKED', 'switched off').encode());
      await ws.close(4410, 'revoked');
    }
  }

  Future<void> dropAll() async {
    for (final ws in sockets) {
      await ws.close(1001, 'going away');
    }
    sockets.clear();
  }
}

