/// Without `dart:io` (the web) there are no built-in transports: pass
/// `http:` and `webSocket:` to `SyncClient` (see README.md).
library;

import 'transport_api.dart';

SyncHttp defaultHttp(Uri server, TokenSource token) =>
    throw UnsupportedError('no dart:io here: pass SyncClient(http: ..., webSocket: ...)');
LiveConnector defaultLive(Uri server, TokenSource token) =>
    throw UnsupportedError('no dart:io here: pass SyncClient(http: ..., webSocket: ...)');
