"""The patient -> study -> series -> instance index on LMDB: ``LmdbIndex``, the first
implementation of the ``Index`` protocol the archive talks to, over its parts — how it lies in
LMDB (``lmdb_layout``), its write batch (``lmdb_tree``, for the shared ``tree`` upkeep), its
reader (``lmdb_query``, for the shared query ``planner``) and the replay marks
(``lmdb_marks``).

A batch of instances is committed in one write transaction, together with whatever the caller
makes durable in ``before_commit`` (the pack store's manifests), so the index never refers to
storage that is not there. The packs are the log: the index records how far into them it is
(``applied``), so that after a crash what it lost is replayed from them.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import lmdb

from dicomvault.index import planner, tree
from dicomvault.index.levels import Level
from dicomvault.index.lmdb_layout import DB_NAMES, Layout
from dicomvault.index.lmdb_marks import Marks
from dicomvault.index.lmdb_query import LmdbReader
from dicomvault.index.lmdb_tree import LmdbBatch, add_totals, totals
from dicomvault.index.records import (
    CommitOutcome,
    InstanceEntry,
    NodeSeen,
    Positions,
    Record,
    decode,
    encode,
)

log = logging.getLogger("dicomvault.index")


class LmdbIndex:
    """The archive's index on LMDB (an ``Index``). Thread-safe; several processes may share
    the directory."""

    def __init__(
        self,
        path: Path,
        *,
        map_size: int = 1 << 40,
        sync: bool = True,
        readonly: bool = False,
        barrier: Callable[[], None] | None = None,
        same_data_set: Callable[[bytes, bytes], bool] | None = None,
    ) -> None:
        """``barrier``, when given, is called before every read: it returns once what was
        acknowledged before it was called is in the index (see ``Archive``).
        ``same_data_set(a, b)`` says whether two manifests hold the same data set whatever
        their File Meta (the store reads them); without it, only equal manifests are."""
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.env = lmdb.open(
            str(path),
            map_size=map_size,
            max_dbs=16,
            sync=sync,
            readonly=readonly,
            readahead=False,
            max_readers=1024,
        )
        self.layout = Layout(self.env)
        self.marks = Marks(self.layout)
        self._barrier = barrier
        self._same_data_set = same_data_set

    @property
    def records_read(self) -> int:
        """Records decoded so far: lets tests prove that indexed keys use key ranges."""
        return self.layout.records_read

    @records_read.setter
    def records_read(self, value: int) -> None:
        self.layout.records_read = value

    def barrier(self) -> None:
        """Returns once every instance acknowledged before the call is indexed (the barrier
        may raise instead: see ``Archive``)."""
        if self._barrier is not None:
            self._barrier()

    def _snapshot(self) -> lmdb.Transaction[bytes]:
        """A read transaction that sees every instance acknowledged before it began."""
        self.barrier()
        return self.env.begin()

    def close(self) -> None:
        self.env.close()

    def sync(self) -> None:
        self.env.sync(True)

    def headroom(self) -> int:
        """Bytes of the map beyond the highest page ever used: what the index can still grow
        by (pages freed inside it are reused first, so this is the least it has)."""
        info = self.env.info()
        return int(info["map_size"]) - (int(info["last_pgno"]) + 1) * int(self.env.stat()["psize"])

    def __enter__(self) -> LmdbIndex:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # Replay marks (see ``lmdb_marks``) -------------------------------------------------------

    def beat(self, node: int, address: str, started: float) -> None:
        """Nothing: no other node reads an LMDB index (it is one machine's)."""

    def leave(self, node: int) -> None:
        """Nothing (see ``beat``)."""

    def nodes(self) -> list[NodeSeen]:
        """None (see ``beat``)."""
        return []

    def exclusive(self, job: str) -> AbstractContextManager[bool]:
        """A lock file beside the index (LMDB is one machine's)."""
        return _file_lock(self.path / f"{job}.lock")

    @property
    def marks_frozen(self) -> bool:
        return self.marks.frozen

    def freeze_marks(self) -> None:
        """See ``Marks.freeze``."""
        self.marks.freeze()

    def mark_applied(self, positions: Positions) -> None:
        with self.env.begin(write=True) as txn:
            self.marks.advance(txn, positions)

    def set_applied(self, marks: Mapping[int, int | None]) -> None:
        """See ``Marks.set``."""
        self.marks.set(marks)

    def applied(self) -> dict[int, int]:
        """How far into each pack (pack id -> offset) the index reflects the log of manifest
        and tombstone records: what lies beyond is replayed when the archive opens."""
        with self.env.begin() as txn:
            return self.marks.read(txn)

    def record_unindexed(self, manifest: bytes, pack: int, end: int, why: str) -> None:
        """See ``Marks.record_unindexed``."""
        self.marks.record_unindexed(manifest, pack, end, why)

    def unindexed(self) -> dict[str, dict[str, Any]]:
        """Manifest records that could not be indexed: manifest hash -> {pack, end, why}."""
        with self.env.begin() as txn:
            return self.marks.unindexed(txn)

    # Writing ------------------------------------------------------------------------------

    def commit(
        self,
        entries: Sequence[InstanceEntry],
        before_commit: Callable[[list[InstanceEntry]], Positions | None] | None = None,
    ) -> list[CommitOutcome]:
        """Indexes a batch in one transaction (see ``tree.decide``: a duplicate keeps the
        first copy unless ``replace``). ``before_commit`` runs inside the transaction with the
        entries that change the index (none, when nothing does); the log positions it returns
        (pack, offset) are recorded as applied, in the same transaction."""
        with self.env.begin(write=True) as txn:
            batch = LmdbBatch(self.layout, txn)
            outcomes, changes = tree.decide(batch, entries, self._same_data_set)
            if before_commit is not None:
                self.marks.advance(txn, before_commit([e for e, _, _ in changes]))
            if not changes:
                return outcomes
            self.marks.forget_unindexed(txn, [e.manifest for e, _, _ in changes])
            add_totals(self.layout, txn, tree.apply(batch, changes))
        return outcomes

    def delete(
        self,
        level: Level,
        key: str,
        before_commit: Callable[[list[Record]], Positions | None] | None = None,
    ) -> list[Record]:
        """Deletes a record and everything below it; emptied ancestors go too."""
        with self.env.begin(write=True) as txn:
            batch = LmdbBatch(self.layout, txn)
            top = batch.get(level, key)
            if top is None:
                return []
            subtree = tree.subtree(batch, top)
            removed = [r for r in subtree if r.level is Level.IMAGE]
            if before_commit is not None:
                self.marks.advance(txn, before_commit(removed))
            delta = tree.no_totals()
            tree.unlink(batch, top, delta, subtree)
            batch.flush()
            add_totals(self.layout, txn, delta)
            return removed

    def clear(self) -> None:
        with self.env.begin(write=True) as txn:
            for db in (
                *self.layout.dbs.values(),
                self.layout.children,
                self.layout.ix,
                self.layout.meta,
            ):
                txn.drop(db, delete=False)

    def forget_history(self) -> int:
        """Drops every instance's replaced versions (gc has reclaimed their blobs); returns
        how many instances had some."""
        with self.env.begin(write=True) as txn:
            changed = []
            for k, v in txn.cursor(db=self.layout.dbs[Level.IMAGE]):
                record = decode(Level.IMAGE, k.decode("utf-8"), v)
                if record.history:
                    record.history = None
                    changed.append((k, encode(record)))
            for k, v in changed:
                txn.put(k, v, db=self.layout.dbs[Level.IMAGE])
        return len(changed)

    # Reading ------------------------------------------------------------------------------

    def get(self, level: Level, key: str) -> Record | None:
        with self._snapshot() as txn:
            return self.layout.get(txn, level, key)

    def get_many(self, level: Level, keys: Sequence[str]) -> dict[str, Record]:
        with self._snapshot() as txn:
            return LmdbReader(self.layout, txn).records(level, keys)

    def children(self, level: Level, key: str) -> list[Record]:
        with self._snapshot() as txn:
            return planner.children(LmdbReader(self.layout, txn), level, key)

    def instances_under(self, level: Level, key: str) -> Iterator[Record]:
        with self._snapshot() as txn:
            yield from planner.instances_under(LmdbReader(self.layout, txn), level, key)

    def iter_level(self, level: Level) -> Iterator[Record]:
        with self._snapshot() as txn:
            for k, v in txn.cursor(db=self.layout.dbs[level]):
                yield decode(level, k.decode("utf-8"), v)

    def lookup(self, value: str) -> list[Record]:
        """Records named by ``value`` as a PatientID, AccessionNumber, UID or record key."""
        with self._snapshot() as txn:
            return planner.lookup(LmdbReader(self.layout, txn), value)

    def stats(self) -> dict[str, int]:
        with self._snapshot() as txn:
            kept = totals(self.layout, txn)
            counts = {
                name.decode(): txn.stat(db)["entries"]
                for name, db in ((DB_NAMES[lvl], self.layout.dbs[lvl]) for lvl in Level)
            }
        return {
            "patients": counts["patients"],
            "studies": counts["studies"],
            "series": counts["series"],
            "instances": counts["instances"],
            "size": kept["size"],
            "patient_conflicts": kept["patient_conflicts"],
        }

    def find(
        self,
        level: Level,
        filters: Mapping[str, str],
        return_keys: Iterable[str] = (),
        *,
        case_insensitive_pn: bool = True,
        limit: int | None = None,
        offset: int = 0,
    ) -> Iterator[dict[str, str]]:
        """C-FIND matching at ``level`` (see ``planner.find``)."""
        with self._snapshot() as txn:
            yield from planner.find(
                LmdbReader(self.layout, txn),
                level,
                filters,
                return_keys,
                case_insensitive_pn=case_insensitive_pn,
                limit=limit,
                offset=offset,
            )


@contextmanager
def _file_lock(path: Path) -> Iterator[bool]:
    """Whether this process got the lock on ``path``, held until the block ends."""
    with open(path, "ab") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
