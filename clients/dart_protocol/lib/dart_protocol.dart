/// fieldsync wire protocol v1 for Dart and Flutter clients, web-safe (no
/// `dart:io`, no `dart:ffi`): msgpack codec, messages and error codes, the
/// sans-I/O [LiveProtocol], the [SyncClient] over transport interfaces, the
/// SQLite store over the [SqlDatabase] interface, and the app-facing
/// [SyncDatabase] (watch, mutate with optimistic changes, status).
///
/// `package:dart_protocol/io.dart` adds the `dart:io` transports and the
/// `dart:ffi` SQLite ([FfiSqlDatabase]).
library;

export 'src/client.dart';
export 'src/database.dart';
export 'src/errors.dart';
export 'src/messages.dart';
export 'src/msgpack.dart';
export 'src/optimistic.dart' show OptimisticWriter;
export 'src/protocol.dart';
export 'src/schema.dart';
export 'src/sql.dart';
export 'src/sqlite_outbox.dart';
export 'src/sqlite_store.dart';
export 'src/state.dart';
export 'src/store.dart';
export 'src/transport_api.dart';
export 'src/uuid.dart';
export 'src/watch.dart';
