/// The two ways to reach a server: HTTP pull/push and the live WebSocket.
///
/// Failures come out as three exceptions: [TransportException] (the network;
/// retry with the same request), [SyncServerException] (the server said no,
/// with a code) and [ProtocolException] (a body of the wrong shape).
library;

import 'dart:async';
import 'dart:io';
import 'dart:typed_data';

import 'errors.dart';
import 'messages.dart';
import 'msgpack.dart';
import 'schema.dart';
import 'transport_api.dart';

export 'transport_api.dart';

const String msgpackMime = 'application/msgpack';

/// `POST /sync/pull` and `POST /sync/push` with msgpack bodies.
class HttpTransport implements SyncHttp {
  HttpTransport(this.baseUri, this.token, {HttpClient? client, this.timeout = const Duration(seconds: 30)})
      : _client = client ?? (HttpClient()..connectionTimeout = const Duration(seconds: 10));

  final Uri baseUri;
  final TokenSource token;
  final Duration timeout;
  final HttpClient _client;

  @override
  Future<PullResponse> pull(PullRequest request) async =>
      PullResponse.fromMsgpack(await post('/sync/pull', request.toMsgpack()));

  @override
  Future<PushResponse> push(PushRequest request) async =>
      PushResponse.fromMsgpack(await post('/sync/push', request.toMsgpack()));

  /// `GET /sync/schema`: the datasets' columns, types and keys.
  @override
  Future<SyncSchema> schema() async => SyncSchema.fromMsgpack(await post('/sync/schema', null));

  /// Posts [body] as msgpack (or GETs [path] when [body] is null) and
  /// returns the decoded answer of a 200.
  Future<Object?> post(String path, Map<String, Object?>? body) async {
    final bytes = body == null ? null : msgpackEncode(body);
    final uri = baseUri.resolve(path);
    final int status;
    final Uint8List answer;
    try {
      final request = await (bytes == null ? _client.getUrl(uri) : _client.postUrl(uri)).timeout(timeout);
      request.headers
        ..set(HttpHeaders.authorizationHeader, 'Bearer ${await token()}')
        ..set(HttpHeaders.contentTypeHeader, msgpackMime)
        ..set(HttpHeaders.acceptHeader, msgpackMime);
      if (bytes != null) {
        request.contentLength = bytes.length;
        request.add(bytes);
      }
      final response = await request.close().timeout(timeout);
      status = response.statusCode;
      final builder = BytesBuilder(copy: false);
      await response.forEach(builder.add).timeout(timeout);
      answer = builder.takeBytes();
    } on TimeoutException catch (e) {
      throw TransportException('POST $uri timed out', e);
    } on IOException catch (e) {
      // SocketException, HttpException, TlsException, WebSocketException...
      throw TransportException('POST $uri failed', e);
    }
    if (status != 200) throw _errorOf(status, answer);
    try {
      return msgpackDecode(answer);
    } on FormatException catch (e) {
      throw ProtocolException('answer of POST $path is not msgpack: ${e.message}');
    }
  }

  static SyncServerException _errorOf(int status, Uint8List body) {
    try {
      return ErrorBody.fromMsgpack(msgpackDecode(body)).toException(status: status);
    } on Exception {
      // Not ours (a proxy's HTML page, say): keep the status; callers judge by it.
      return SyncServerException('HTTP_$status', String.fromCharCodes(body.take(200)), status: status);
    }
  }

  @override
  void close({bool force = false}) => _client.close(force: force);
}

/// Opens live sessions on `GET /sync/ws`.
class WebSocketTransport implements LiveConnector {
  WebSocketTransport(this.baseUri, this.token,
      {this.connectTimeout = const Duration(seconds: 10), this.tokenInHello = false});

  final Uri baseUri;
  final TokenSource token;
  final Duration connectTimeout;

  /// Send the token in `hello` too (for platforms that cannot set headers).
  final bool tokenInHello;

  Uri get url => baseUri.replace(scheme: baseUri.scheme == 'https' ? 'wss' : 'ws', path: '/sync/ws');

  /// Connects with the `Authorization` header and sends `hello`.
  @override
  Future<WebSocketSession> connect({required String clientId, Uint8List? cursor}) async {
    final bearer = await token();
    final WebSocket socket;
    try {
      socket = await WebSocket.connect(url.toString(), headers: {HttpHeaders.authorizationHeader: 'Bearer $bearer'})
          .timeout(connectTimeout);
    } on TimeoutException catch (e) {
      throw TransportException('WebSocket $url: no connection within $connectTimeout', e);
    } on IOException catch (e) {
      throw TransportException('WebSocket $url could not connect', e);
    }
    final session = WebSocketSession(socket);
    session.send(HelloFrame(clientId: clientId, cursor: cursor, token: tokenInHello ? bearer : null));
    return session;
  }
}

/// One open WebSocket: typed [frames] in, [send] out.
class WebSocketSession implements LiveSession {
  WebSocketSession(this._socket) {
    frames = _socket.map<Frame>((data) {
      if (data is List<int>) return Frame.decode(data);
      throw ProtocolException('the server sent a text frame; frames are binary msgpack');
    }).handleError((Object e) {
      if (e is ProtocolException) throw e;
      throw TransportException('WebSocket broke', e);
    });
  }

  final WebSocket _socket;

  /// Frames from the server; ends when the socket closes (see [closeCode]).
  @override
  late final Stream<Frame> frames;

  @override
  void send(Frame frame) {
    if (_socket.readyState == WebSocket.open) _socket.add(frame.encode());
  }

  @override
  bool get isOpen => _socket.readyState == WebSocket.open;

  /// The close code the server (or we) closed with; null while open.
  @override
  int? get closeCode => _socket.closeCode;
  @override
  String? get closeReason => _socket.closeReason;

  @override
  Future<void> close([int code = 1000, String reason = '']) async {
    try {
      await _socket.close(code, reason).timeout(const Duration(seconds: 3));
    } on Object {
      // already gone: nothing to do
    }
  }
}
