/// The transports a `SyncClient` makes when none are given, on platforms
/// with `dart:io` (chosen by a conditional import in client.dart).
library;

import 'transport.dart';
import 'transport_api.dart';

SyncHttp defaultHttp(Uri server, TokenSource token) => HttpTransport(server, token);
LiveConnector defaultLive(Uri server, TokenSource token) => WebSocketTransport(server, token);
