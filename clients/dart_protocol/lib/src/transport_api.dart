/// What the sync client needs from a network, as interfaces: the HTTP
/// routes ([SyncHttp]) and live sessions ([LiveConnector], [LiveSession]).
/// The `dart:io` implementations are in transport.dart (library
/// `package:dart_protocol/io.dart`); a web app passes its own (fetch,
/// browser WebSocket). No `dart:io` here.
library;

import 'dart:async';
import 'dart:typed_data';

import 'messages.dart';
import 'schema.dart';

/// Where the bearer token comes from; called for every request or connection,
/// so an app can refresh it.
typedef TokenSource = FutureOr<String> Function();

/// `POST /sync/pull`, `POST /sync/push`, `GET /sync/schema`. Failures are
/// `TransportException` (retry), `SyncServerException` (the server's code),
/// `ProtocolException` (a body of the wrong shape).
abstract class SyncHttp {
  Future<PullResponse> pull(PullRequest request);
  Future<PushResponse> push(PushRequest request);
  Future<SyncSchema> schema();
  void close({bool force = false});
}

/// Opens live sessions on `GET /sync/ws` and sends `hello`.
abstract class LiveConnector {
  Future<LiveSession> connect({required String clientId, Uint8List? cursor});
}

/// One open live session: typed [frames] in, [send] out.
abstract class LiveSession {
  /// Frames from the server; ends when the connection closes (see [closeCode]).
  Stream<Frame> get frames;
  void send(Frame frame);
  bool get isOpen;

  /// The close code the server (or we) closed with; null while open.
  int? get closeCode;
  String? get closeReason;
  Future<void> close([int code = 1000, String reason = '']);
}
