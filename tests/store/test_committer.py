"""Group commit: concurrent submitters share commits; failures reach every waiter."""

import threading
import time

import pytest

from dicomvault.store.committer import GroupCommitter


def test_concurrent_items_are_committed_in_shared_groups():
    groups = []

    def commit(batch):
        time.sleep(0.01)  # a slow fsync: others queue up meanwhile
        groups.append(list(batch))
        return [f"ok:{x}" for x in batch]

    committer = GroupCommitter(commit, max_batch=64)
    futures = []
    lock = threading.Lock()

    def submit(n):
        for i in range(20):
            f = committer.submit((n, i))
            with lock:
                futures.append(((n, i), f))

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results = {item: f.result(timeout=10) for item, f in futures}
    committer.close()
    assert results == {item: f"ok:{item}" for item, _ in futures}
    assert sum(len(g) for g in groups) == 100
    assert len(groups) < 100, "waiting items must share commits"
    assert max(len(g) for g in groups) <= 64


def test_a_failed_commit_fails_every_item_of_its_group_and_the_next_group_goes_on():
    calls = []

    def commit(batch):
        calls.append(list(batch))
        if "bad" in batch:
            raise OSError("No space left on device")
        return list(batch)

    committer = GroupCommitter(commit)
    bad = committer.submit("bad")
    with pytest.raises(OSError, match="No space"):
        bad.result(timeout=10)
    assert committer.submit("good").result(timeout=10) == "good"
    committer.close()
    with pytest.raises(RuntimeError):
        committer.submit("late")
