/// A tiny stand-in for package:test, which needs pub (not available on our
/// machines). Run a test file with `dart test/x_test.dart`; it ends with the
/// line `N passed, N failed` and exit code 1 if anything failed.
library;

import 'dart:io';

int _passed = 0;
int _failed = 0;

/// Runs [fn] as one named check; any exception is a failure.
void check(String name, void Function() fn) {
  try {
    fn();
    _passed++;
  } catch (e, st) {
    _failed++;
    stdout.writeln('FAIL $name: $e');
    if (e is! TestFailure) stdout.writeln(st);
  }
}

/// [check] for asynchronous work: await it so checks run one after another.
Future<void> checkAsync(String name, Future<void> Function() fn) async {
  try {
    await fn();
    _passed++;
  } catch (e, st) {
    _failed++;
    stdout.writeln('FAIL $name: $e');
    if (e is! TestFailure) stdout.writeln(st);
  }
}

class TestFailure implements Exception {
  TestFailure(this.message);
  final String message;
  @override
  String toString() => message;
}

void expect(bool ok, String Function() why) {
  if (!ok) throw TestFailure(why());
}

/// Fails unless [fn] throws a [T].
void expectThrows<T>(void Function() fn, String what) {
  try {
    fn();
  } on T {
    return;
  } catch (e) {
    throw TestFailure('$what: expected $T, got ${e.runtimeType}: $e');
  }
  throw TestFailure('$what: expected $T, nothing thrown');
}

/// Prints the summary line and sets the exit code. Call last in main.
void summary() {
  stdout.writeln('$_passed passed, $_failed failed');
  // exitCode rather than exit(): exit() can drop output still buffered for a pipe.
  exitCode = (_failed == 0 && _passed > 0) ? 0 : 1;
}

/// Adds the results of checks run elsewhere (a child process's summary line).
void addCounts(int passed, int failed) {
  _passed += passed;
  _failed += failed;
}
