/// The WebSocket frames of protocol v1 (`GET /sync/ws`): every frame is one
/// binary msgpack map whose `t` names its type. Part of messages.dart (it
/// shares the shape checks).
part of 'messages.dart';

// --- WebSocket frames -------------------------------------------------------------

/// One WebSocket frame: a binary msgpack map with a type `t`.
sealed class Frame {
  const Frame();

  String get type;
  Map<String, Object?> toMsgpack();
  Uint8List encode() => msgpackEncode(toMsgpack());

  /// Decodes one binary frame; malformed bytes or shapes are a [ProtocolException].
  static Frame decode(List<int> bytes) {
    final Object? value;
    try {
      value = msgpackDecode(bytes);
    } on FormatException catch (e) {
      throw ProtocolException('frame is not msgpack: ${e.message}');
    }
    return fromMsgpack(value);
  }

  static Frame fromMsgpack(Object? value) {
    final m = _map(value, 'frame');
    final t = _req<String>(m, 't', 'frame', 'a str');
    switch (t) {
      case 'hello':
        _version(m, 'hello');
        return HelloFrame(
            clientId: _clientId(m, 'hello'),
            cursor: _opt<Uint8List>(m, 'cursor', 'hello', 'bin or nil'),
            token: _opt<String>(m, 'token', 'hello', 'a str'));
      case 'push':
        return PushFrame(_mutations(m, 'push frame'));
      case 'ack':
        return AckFrame(_req<Uint8List>(m, 'cursor', 'ack', 'bin'));
      case 'ping':
        return const PingFrame();
      case 'pong':
        return const PongFrame();
      case 'changes':
        return ChangesFrame(PullResponse._batch(m, 'changes frame'));
      case 'results':
        return ResultsFrame(_results(m, 'results frame'));
      case 'error':
        return ErrorFrame(_req<String>(m, 'code', 'error frame', 'a str'),
            _opt<String>(m, 'message', 'error frame', 'a str') ?? '',
            retryAfter: _opt<int>(m, 'retry_after', 'error frame', 'an int'));
    }
    throw ProtocolException('unknown frame type `$t`');
  }
}

class HelloFrame extends Frame {
  const HelloFrame({required this.clientId, this.cursor, this.token});
  final String clientId;
  final Uint8List? cursor;

  /// Only where headers cannot be set (browsers); dart:io sends the header.
  final String? token;

  @override
  String get type => 'hello';
  @override
  Map<String, Object?> toMsgpack() => {
        't': type,
        'v': protocolVersion,
        'client_id': clientId,
        'cursor': cursor,
        if (token != null) 'token': token,
      };
}

class PushFrame extends Frame {
  const PushFrame(this.mutations);
  final List<Mutation> mutations;
  @override
  String get type => 'push';
  @override
  Map<String, Object?> toMsgpack() => {'t': type, 'mutations': [for (final x in mutations) x.toMsgpack()]};
}

class AckFrame extends Frame {
  const AckFrame(this.cursor);
  final Uint8List cursor;
  @override
  String get type => 'ack';
  @override
  Map<String, Object?> toMsgpack() => {'t': type, 'cursor': cursor};
}

class PingFrame extends Frame {
  const PingFrame();
  @override
  String get type => 'ping';
  @override
  Map<String, Object?> toMsgpack() => {'t': type};
}

class PongFrame extends Frame {
  const PongFrame();
  @override
  String get type => 'pong';
  @override
  Map<String, Object?> toMsgpack() => {'t': type};
}

class ChangesFrame extends Frame {
  const ChangesFrame(this.batch);
  final PullResponse batch;
  @override
  String get type => 'changes';
  @override
  Map<String, Object?> toMsgpack() => {'t': type, ...batch._fields()};
}

class ResultsFrame extends Frame {
  const ResultsFrame(this.results);
  final List<MutationResult> results;
  @override
  String get type => 'results';
  @override
  Map<String, Object?> toMsgpack() => {'t': type, 'results': [for (final r in results) r.toMsgpack()]};
}

class ErrorFrame extends Frame {
  const ErrorFrame(this.code, this.message, {this.retryAfter});
  final String code;
  final String message;
  final int? retryAfter;

  ErrorCode? get errorCode => ErrorCode.fromWire(code);
  SyncServerException toException({int? closeCode}) =>
      SyncServerException(code, message, retryAfter: retryAfter, closeCode: closeCode);

  @override
  String get type => 'error';
  @override
  Map<String, Object?> toMsgpack() =>
      {'t': type, 'code': code, 'message': message, if (retryAfter != null) 'retry_after': retryAfter};
}
