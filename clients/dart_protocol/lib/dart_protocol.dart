/// fieldsync wire protocol v1 for Dart and Flutter clients: msgpack codec,
/// messages and error codes, local store and outbox interfaces, HTTP and
/// WebSocket transports, the [SyncClient], and the SQLite-backed
/// [SyncDatabase] (watch, mutate with optimistic changes, status).
library;

export 'src/client.dart';
export 'src/database.dart';
export 'src/errors.dart';
export 'src/messages.dart';
export 'src/msgpack.dart';
export 'src/optimistic.dart' show OptimisticWriter;
export 'src/schema.dart';
export 'src/sql.dart';
export 'src/sqlite_outbox.dart';
export 'src/sqlite_store.dart';
export 'src/state.dart';
export 'src/store.dart';
export 'src/transport.dart';
export 'src/uuid.dart';
export 'src/watch.dart';
