// Decoding and applying a 100,000-row snapshot into MemoryStore.
//
//   cd clients/dart_protocol && dart bench/snapshot_bench.dart [rows] [page] [runs]
//
// The snapshot is built here as the server sends it: pull responses of
// `page` catalog rows each (the server's pull_max_limit is 10,000), the first
// with reset = [catalog], encoded with the package's msgpack encoder (byte
// for byte python's packb). Each run decodes every page (msgpack → typed
// PullResponse with shape checks) and applies it to a fresh MemoryStore, one
// batch at a time, as SyncClient does. Reports rows/s and memory (RSS).
import 'dart:io';
import 'dart:typed_data';

import 'package:dart_protocol/io.dart';

const cols = ['id', 'sku', 'name', 'category', 'unit', 'barcode'];
const categories = ['Paint', 'Tools', 'Garden', 'Electrical', 'Plumbing', 'Timber', 'Fixings', 'Flooring'];
const nouns = ['Primer', 'Hammer', 'Hose', 'Cable', 'Valve', 'Plank', 'Screw', 'Tile', 'Brush', 'Drill'];
const adjectives = ['Sand', 'Steel', 'Green', 'Heavy', 'Quick', 'Oak', 'Brass', 'Matt', 'Soft', 'Pro'];

String mb(int bytes) => '${(bytes / (1 << 20)).toStringAsFixed(1)} MB';

List<Uint8List> buildPages(int rows, int page) {
  final pages = <Uint8List>[];
  for (var start = 0; start < rows; start += page) {
    final end = start + page < rows ? start + page : rows;
    final batch = PullResponse(
      cursor: Uint8List.fromList(List.generate(40, (i) => (start + i) & 0xff)), // a cursor is ~40 bytes
      more: end < rows,
      reset: start == 0 ? ['catalog'] : [],
      data: {
        'catalog': DatasetBatch(cols: cols, deletes: [], rows: [
          for (var id = start + 1; id <= end; id++)
            [
              id,
              'SKU-${id.toString().padLeft(6, '0')}',
              '${nouns[id % 10]} ${adjectives[id ~/ 10 % 10]} ${(id % 7) / 2 + 0.4}L',
              categories[id % categories.length],
              id % 3 == 0 ? 'box' : 'pcs',
              id % 5 == 0 ? null : '${4000000000000 + id}',
            ]
        ]),
      },
    );
    pages.add(msgpackEncode(batch.toMsgpack()));
  }
  return pages;
}

void main(List<String> args) {
  final rows = args.isNotEmpty ? int.parse(args[0]) : 100000;
  final page = args.length > 1 ? int.parse(args[1]) : 10000;
  final runs = args.length > 2 ? int.parse(args[2]) : 5;
  stdout.writeln('Dart ${Platform.version}');
  final rss0 = ProcessInfo.currentRss;
  var watch = Stopwatch()..start();
  final pages = buildPages(rows, page);
  final bytes = pages.fold(0, (n, p) => n + p.length);
  stdout.writeln('built ${pages.length} pages of $page rows: ${mb(bytes)} of msgpack '
      '(${(bytes / rows).toStringAsFixed(1)} B/row) in ${watch.elapsedMilliseconds} ms; RSS ${mb(rss0)} at start');

  MemoryStore? kept;
  for (var run = 1; run <= runs; run++) {
    kept = null; // let the previous run's store go
    final before = ProcessInfo.currentRss;
    final store = MemoryStore();
    var decodeUs = 0, applyUs = 0;
    watch = Stopwatch()..start();
    for (final bytes in pages) {
      final t0 = watch.elapsedMicroseconds;
      final batch = PullResponse.fromMsgpack(msgpackDecode(bytes));
      final t1 = watch.elapsedMicroseconds;
      store.applyBatchSync(batch);
      decodeUs += t1 - t0;
      applyUs += watch.elapsedMicroseconds - t1;
    }
    final total = watch.elapsedMicroseconds;
    if (store.count('catalog') != rows) throw StateError('store holds ${store.count('catalog')} rows');
    kept = store;
    final after = ProcessInfo.currentRss;
    stdout.writeln('run $run: ${(rows / total * 1e6).round()} rows/s '
        '(${(total / 1000).toStringAsFixed(0)} ms: decode ${(decodeUs / 1000).toStringAsFixed(0)} ms '
        '= ${(rows / decodeUs * 1e6).round()} rows/s, apply ${(applyUs / 1000).toStringAsFixed(0)} ms); '
        'RSS ${mb(before)} -> ${mb(after)} (${after >= before ? '+' : ''}${mb(after - before)}, '
        '${((after - before) / rows).round()} B/row incl. uncollected garbage)');
  }
  final row = kept!.rowsByKey('catalog')[rows ~/ 2];
  stdout.writeln('row ${rows ~/ 2}: $row');
  stdout.writeln('RSS now ${mb(ProcessInfo.currentRss)}, peak (maxRss) ${mb(ProcessInfo.maxRss)}');
}
