/// fieldsync wire protocol v1 for Dart and Flutter clients: msgpack codec,
/// messages and error codes, local store and outbox interfaces, HTTP and
/// WebSocket transports, and the [SyncClient].
library;

export 'src/client.dart';
export 'src/errors.dart';
export 'src/messages.dart';
export 'src/msgpack.dart';
export 'src/state.dart';
export 'src/store.dart';
export 'src/transport.dart';
export 'src/uuid.dart';
