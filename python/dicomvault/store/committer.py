"""Group commit: instances from concurrent writers become durable together.

Writers hand finished instances to the committer and get a future. One thread takes whatever
is waiting (up to a batch), makes it durable in a single step (one fsync per touched pack and
one LMDB transaction, see ``Archive.commit``) and resolves the futures. A lone writer pays one
commit; many concurrent writers share each one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")


class GroupCommitter(Generic[Item, Outcome]):
    """Runs ``commit(batch) -> outcomes`` on a background thread over queued items."""

    def __init__(
        self, commit: Callable[[Sequence[Item]], Sequence[Outcome]], max_batch: int = 256
    ) -> None:
        self._commit = commit
        self._max_batch = max_batch
        self._queue: list[tuple[Item, Future[Outcome]]] = []
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()

    def submit(self, item: Item) -> Future[Outcome]:
        future: Future[Outcome] = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the committer is closed")
            self._queue.append((item, future))
            self._cv.notify()
        return future

    def close(self) -> None:
        """Commits what is queued, then stops the thread."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    return
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
            try:
                outcomes = self._commit([item for item, _ in batch])
            except BaseException as e:  # every waiter must learn that its commit failed
                for _, future in batch:
                    future.set_exception(e)
                continue
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                future.set_result(outcome)
