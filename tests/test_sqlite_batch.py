"""The embedded queue's batches (jobs/sqlite_batch.py): a push group's enqueues in one
SQLite transaction, whole or not at all, while other threads' writes wait their turn."""

from __future__ import annotations

import threading

from jobs.sqlite_batch import SqliteHuey


def test_a_batch_commits_its_writes_at_once(tmp_path):
    queue = SqliteHuey(filename=str(tmp_path / "jobs.db"))
    storage = queue.storage
    with storage.batch():
        for n in range(5):
            storage.enqueue(b"job %d" % n)
        assert storage.put_if_empty("debounce", b"1") and not storage.put_if_empty("debounce", b"2")
        with storage.batch():  # nested: part of the outer one
            storage.enqueue(b"job 5")
    assert storage.queue_size() == 6 and storage.peek_data("debounce") == b"1"


def test_a_failed_batch_writes_nothing(tmp_path):
    storage = SqliteHuey(filename=str(tmp_path / "jobs.db")).storage
    try:
        with storage.batch():
            storage.enqueue(b"lost")
            raise RuntimeError("the thread died mid-batch")
    except RuntimeError:
        pass
    assert storage.queue_size() == 0
    storage.enqueue(b"next")  # the storage is usable after it
    assert storage.queue_size() == 1


def test_another_thread_writes_after_the_batch(tmp_path):
    storage = SqliteHuey(filename=str(tmp_path / "jobs.db")).storage
    inside, other_done = threading.Event(), threading.Event()

    def other() -> None:
        inside.wait()
        storage.enqueue(b"other")
        other_done.set()

    thread = threading.Thread(target=other)
    thread.start()
    with storage.batch():
        storage.enqueue(b"mine")
        inside.set()
        assert not other_done.wait(0.2), "a write from another thread must wait for the batch"
    thread.join(5)
    assert other_done.is_set() and storage.queue_size() == 2
