/// The native half of the package: the `dart:io` transports (HTTP pull/push,
/// the WebSocket) and SQLite through `dart:ffi`. Exports the web-safe core
/// too, so a Flutter mobile or desktop app imports just this.
library;

export 'dart_protocol.dart';
export 'src/sqlite_ffi.dart';
export 'src/transport.dart';
