/// A real fieldsync server for the SQLite end-to-end test and the bench:
/// the embedded default (SQLite, in-process fan-out and jobs) in a temp
/// data dir with the demo tenant, started with `.venv/bin/fieldsync serve`
/// and stopped (SIGTERM) and restarted on the same port and data at will.
library;

import 'dart:async';
import 'dart:convert';
import 'dart:io';

import 'support.dart';

class LiveServer {
  LiveServer._(this.fieldsync, this.data, this.port);

  final String fieldsync;
  final Directory data;
  final int port;
  Process? _process;
  final _log = StringBuffer();

  Uri get url => Uri.parse('http://127.0.0.1:$port');

  /// `.venv/bin/fieldsync` at the repo root, or null when not bootstrapped.
  static String? find() {
    final path = repoRoot().resolve('.venv/bin/fieldsync').toFilePath();
    return File(path).existsSync() ? path : null;
  }

  /// Makes the data dir and the demo tenant ([demoArgs] for `fieldsync demo`).
  static Future<LiveServer> create(List<String> demoArgs) async {
    final bin = find() ?? (throw StateError('.venv/bin/fieldsync missing: run scripts/bootstrap.sh'));
    final data = Directory.systemTemp.createTempSync('fieldsync-dart-sqlite.');
    final probe = await ServerSocket.bind(InternetAddress.loopbackIPv4, 0);
    final port = probe.port;
    await probe.close();
    final s = LiveServer._(bin, data, port);
    final demo = await Process.run(bin, ['demo', ...demoArgs], environment: s._env);
    if (demo.exitCode != 0) throw StateError('fieldsync demo failed: ${demo.stdout}${demo.stderr}');
    return s;
  }

  Map<String, String> get _env {
    final env = Map.of(Platform.environment)
      ..remove('FIELDSYNC_DATABASE_URL')
      ..remove('FIELDSYNC_REDIS_URL');
    return env..['FIELDSYNC_DATA_DIR'] = data.path;
  }

  /// A token for a demo user (sales1, pos1, admin).
  Future<String> token(String user) async {
    final r = await Process.run(fieldsync, ['token', user], environment: _env);
    if (r.exitCode != 0) throw StateError('fieldsync token $user: ${r.stderr}');
    return (r.stdout as String).trim().split('\n').last.trim();
  }

  Future<void> start() async {
    final p = _process = await Process.start(fieldsync, ['serve', '--port', '$port'], environment: _env);
    p.stdout.transform(utf8.decoder).listen(_log.write);
    p.stderr.transform(utf8.decoder).listen(_log.write);
    final client = HttpClient();
    try {
      final end = DateTime.now().add(const Duration(seconds: 60));
      while (true) {
        try {
          final rq = await client.getUrl(url.resolve('/healthz'));
          final rs = await rq.close();
          await rs.drain<void>();
          if (rs.statusCode == 200) return;
        } on IOException {
          // not up yet
        }
        if (DateTime.now().isAfter(end)) throw StateError('the server did not start: ${logTail()}');
        await Future<void>.delayed(const Duration(milliseconds: 200));
      }
    } finally {
      client.close(force: true);
    }
  }

  Future<void> stop() async {
    final p = _process;
    if (p == null) return;
    _process = null;
    p.kill(ProcessSignal.sigterm);
    final code = await p.exitCode.timeout(const Duration(seconds: 15), onTimeout: () {
      p.kill(ProcessSignal.sigkill);
      return p.exitCode;
    });
    _log.writeln('[server exited $code]');
  }

  String logTail([int lines = 30]) {
    final all = _log.toString().split('\n');
    return all.skip(all.length > lines ? all.length - lines : 0).join('\n');
  }

  Future<void> dispose() async {
    await stop();
    data.deleteSync(recursive: true);
  }
}
