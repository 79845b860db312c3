"""The index's applier: what the one commit path made durable in the pack log, indexed in log
order, and each writer in Python told what the index made of its write.

Every writer appends through the Rust journal (``Store.submit_instance``,
``Store.submit_tombstone``; the listener and our C-GETs inside Rust) and gets a ticket. The
applier takes what was committed (``Store.take_logged``), in the log's order, indexes it —
an instance received on an association from its scan, an instance a Python writer prepared
from the entry it holds, a tombstone as a deletion — and settles each ticket's ``Pending``.
A batch the index cannot apply is retried until it can; meanwhile writes are refused and
reads raise ``IndexUnavailable``. It is given up only at close, with the marks frozen before
it: it is replayed at the next open.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from dicomvault import _native
from dicomvault.index import CommitOutcome, InstanceEntry, Level, Record
from dicomvault.index.protocol import IndexUnavailable
from dicomvault.store.maintenance import replay

if TYPE_CHECKING:
    from dicomvault.store.archive import Archive

log = logging.getLogger("dicomvault.archive")

Outcome = TypeVar("Outcome")


class Pending(Generic[Outcome]):
    """A write handed to the commit path: ``result()`` returns what the index made of it once
    it is durable and applied; OSError if it could not be made durable, IndexUnavailable if
    it was but the index gave up on it (it is indexed at the next open)."""

    def __init__(self, store: _native.Store, ticket: int, write: InstanceEntry | str) -> None:
        self._store = store
        self.ticket = ticket
        # What the applier indexes: the instance's entry, or the key of the instance deleted.
        self.write = write
        self._settled = threading.Event()
        self._durable = False
        self._outcome: Outcome | None = None
        self._error: BaseException | None = None

    def settle(self, outcome: Outcome | None = None, error: BaseException | None = None) -> None:
        self._outcome, self._error = outcome, error
        self._settled.set()

    def done(self) -> bool:
        return self._settled.is_set()

    def result(self, timeout: float | None = None) -> Outcome:
        if not self._settled.is_set():
            if not self._durable:
                try:  # commits what waits, this write among it, unless another writer is
                    self._store.wait_committed(self.ticket)
                    self._durable = True
                except OSError as e:
                    self.settle(error=e)
            if not self._settled.wait(timeout):
                raise TimeoutError(f"write {self.ticket} is not indexed yet")
        if self._error is not None:
            raise self._error
        return self._outcome  # type: ignore[return-value]  # settled with an outcome


class Applier:
    """The thread that indexes the pack log's new records for ``archive``, until it closes."""

    def __init__(self, archive: Archive) -> None:
        self._archive = archive
        self._pending: dict[int, Pending[Any]] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="index-applier", daemon=True)
        self._thread.start()

    def submit(self, submit: Callable[[], int], write: InstanceEntry | str) -> Pending[Any]:
        """Registers the write ``submit`` hands to the journal (returning its ticket) before
        the applier can take it."""
        with self._lock:
            pending: Pending[Any] = Pending(self._archive.store, submit(), write)
            self._pending[pending.ticket] = pending
        return pending

    def join(self) -> None:
        self._thread.join()

    def _claim(self, ticket: int) -> Pending[Any] | None:
        with self._lock:
            return self._pending.pop(ticket, None)

    def _run(self) -> None:
        archive = self._archive
        store = archive.store
        while (taken := store.take_logged()) is not None:
            through, logged = taken
            claimed = [p for *_, ticket, _ in logged if (p := self._claim(ticket)) is not None]
            steps = self._steps(logged, {p.ticket: p for p in claimed})
            if steps is None:
                why = "it cannot be indexed (see the log)"
                _give_up(claimed, IndexUnavailable(why))
                store.log_given_up(through, why)
                continue
            if logged and store.take_landed(logged[0][1]):
                # First, and retried as the rest: applied past it, the marks would pass it.
                steps.insert(0, functools.partial(self._replay_landed, logged[0][:2]))
            delay = 0.05
            while steps:
                try:
                    steps[0]()
                except Exception as e:  # the index: a full map or disk, a failing disk
                    why = f"indexing {len(logged)} acknowledged instances failed: {e}"
                    store.log_stalled(why)
                    # LMDB refuses every transaction after a fatal error until it is reopened.
                    hint = "restart the server" if "MDB_PANIC" in str(e) else "retrying"
                    log.error("%s; refusing C-STOREs until it succeeds (%s)", why, hint)
                    if archive.closing.wait(delay):
                        archive.index.freeze_marks()
                        log.error("closing: those instances are replayed at the next open")
                        why = f"{why}; indexed at the next open"
                        _give_up(claimed, IndexUnavailable(why))
                        break
                    delay = min(delay * 2, 5.0)
                    continue
                del steps[0]  # applied: a retry goes on from the next
            if steps:  # given up
                store.log_given_up(through, why)
                continue
            if delay > 0.05:
                log.warning("indexing succeeded again: C-STOREs are accepted")
            store.log_applied(through)
            archive.check_headroom()

    def _replay_landed(self, first: tuple[int, int]) -> None:
        """A segment whose put had failed landed after all (S3 applied it late): its records
        are in the log before ``first``, where a restart's replay and a reindex find them, so
        they are indexed now, before what follows them (their C-STOREs were refused: such an
        instance is then stored, never the other way round)."""
        archive = self._archive
        count = replay(archive, archive.index.applied(), before=first)
        log.warning(
            "a segment of this node's log found written after its put failed: %d records "
            "replayed into the index",
            count,
        )

    def _steps(
        self, logged: list[tuple[int, int, int, Any]], claimed: dict[int, Pending[Any]]
    ) -> list[Callable[[], None]] | None:
        """What applying ``logged`` takes, in log order: runs of instances indexed in one
        transaction each, deletions one at a time. None when it cannot be applied at all
        (left for the replay at the next open)."""
        archive = self._archive
        steps: list[Callable[[], None]] = []
        entries: list[InstanceEntry] = []
        positions: list[tuple[int, int]] = []
        waiting: list[Pending[Any] | None] = []

        def index_run() -> None:
            if entries:
                steps.append(_index_step(archive, list(entries), list(positions), list(waiting)))
                entries.clear()
                positions.clear()
                waiting.clear()

        try:
            for pack, end, ticket, write in logged:
                pending = claimed.get(ticket)
                if isinstance(write, str):  # a tombstone: the key of the instance deleted
                    index_run()
                    steps.append(_delete_step(archive, write, (pack, end), pending))
                    continue
                if pending is not None and isinstance(pending.write, InstanceEntry):
                    entry = pending.write
                else:  # received on an association: its entry from its scan
                    entry = archive.entry(
                        write,
                        write["source"],
                        write["received_at"],
                        replace=archive.replace_duplicates,
                    )
                entries.append(entry)
                positions.append((pack, end))
                waiting.append(pending)
            index_run()
        except Exception as e:  # a retry cannot help: left for the replay at the next open
            archive.index.freeze_marks()
            log.error("%d acknowledged instances cannot be indexed: %s", len(logged), e)
            return None
        return steps


def _give_up(claimed: list[Pending[Any]], error: BaseException) -> None:
    for pending in claimed:
        if not pending.done():
            pending.settle(error=error)


def _index_step(
    archive: Archive,
    entries: list[InstanceEntry],
    positions: list[tuple[int, int]],
    waiting: list[Pending[Any] | None],
) -> Callable[[], None]:
    audited = False

    def step() -> None:
        nonlocal audited
        if not audited:  # once, however often the index is retried
            archive.audit.stored(entries, positions)
            audited = True
        outcomes: list[CommitOutcome] = archive.index_entries(entries, positions)
        for pending, outcome in zip(waiting, outcomes, strict=True):
            if pending is not None:
                pending.settle(outcome)

    return step


def _delete_step(
    archive: Archive, key: str, position: tuple[int, int], pending: Pending[Any] | None
) -> Callable[[], None]:
    def step() -> None:
        removed: list[Record] = archive.index.delete(
            Level.IMAGE, key, before_commit=lambda _removed: [position]
        )
        if pending is not None:
            pending.settle(removed)

    return step
