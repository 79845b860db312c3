"""What an index backend implements: the ``Index`` protocol the archive talks to (LMDB's
``LmdbIndex`` is the first implementation; another database can be a second).

An index holds the patient -> study -> series -> instance records made from the instances'
entries and answers C-FIND matching on the keys it keeps. The pack log is the archive's source
of truth: an index records how far into it it has applied (its replay marks) in the same
transaction as what it applied, so that what a crash took from it is replayed from the packs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from dicomvault.index.levels import Level
from dicomvault.index.records import CommitOutcome, InstanceEntry, NodeSeen, Positions, Record


class IndexUnavailable(RuntimeError):
    """The index cannot apply what was acknowledged, or take more, or be read right now (a
    full map or disk, a failing disk, its database unreachable): a read would miss
    acknowledged instances, a write is refused."""


class Index(Protocol):
    """The archive's index. Implementations are thread-safe; every read first waits for the
    barrier the archive gave them (what was acknowledged before the read is in it)."""

    # Writing ------------------------------------------------------------------------------

    def commit(
        self,
        entries: Sequence[InstanceEntry],
        before_commit: Callable[[list[InstanceEntry]], Positions | None] | None = None,
    ) -> list[CommitOutcome]:
        """Indexes a batch atomically, one outcome per entry (a duplicate, different bytes
        kept or replaced: see ``CommitStatus``). ``before_commit`` runs inside the transaction
        with the entries that change the index; the log positions it returns become applied
        in that transaction, and if it raises nothing changes."""
        ...

    def delete(
        self,
        level: Level,
        key: str,
        before_commit: Callable[[list[Record]], Positions | None] | None = None,
    ) -> list[Record]:
        """Deletes a record, everything below it and its emptied ancestors atomically;
        returns the deleted instances. ``before_commit`` as for ``commit``."""
        ...

    def clear(self) -> None:
        """Empties the index (records, replay marks, unindexed records): ``reindex``."""
        ...

    def forget_history(self) -> int:
        """Drops every instance's replaced versions (gc has reclaimed their blobs); returns
        how many instances had some."""
        ...

    # Reading ------------------------------------------------------------------------------

    def barrier(self) -> None:
        """Returns once every instance acknowledged before the call is indexed (or raises
        what the archive's barrier raises: ``IndexUnavailable``)."""
        ...

    def get(self, level: Level, key: str) -> Record | None:
        """The record with this key at ``level``, or None."""
        ...

    def get_many(self, level: Level, keys: Sequence[str]) -> dict[str, Record]:
        """The records at ``level`` with these keys, by key (those there), in one read."""
        ...

    def children(self, level: Level, key: str) -> list[Record]:
        """The records one level below the record, in key order."""
        ...

    def instances_under(self, level: Level, key: str) -> Iterator[Record]:
        """Every instance under the record (the record itself for an instance)."""
        ...

    def iter_level(self, level: Level) -> Iterator[Record]:
        """Every record at ``level``, in key order."""
        ...

    def lookup(self, value: str) -> list[Record]:
        """Records named by ``value`` as a PatientID, AccessionNumber, UID or record key,
        patients first."""
        ...

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
        """C-FIND matching of ``filters`` at ``level`` on the keys the index keeps, in a
        stable order: each match has its ``return_keys``, its unique keys and ``_key`` (its
        record key); ``limit`` and ``offset`` page through them."""
        ...

    def stats(self) -> dict[str, int]:
        """Counts: patients, studies, series, instances; their size; patient_conflicts."""
        ...

    def headroom(self) -> int:
        """Bytes the index can still grow by: the archive refuses instances before they are
        acknowledged when it runs low."""
        ...

    # Replay marks -------------------------------------------------------------------------

    def applied(self) -> dict[int, int]:
        """How far into each pack (pack id -> offset) the index reflects the log of manifest
        and tombstone records: what lies beyond is replayed when the archive opens."""
        ...

    def mark_applied(self, positions: Positions) -> None:
        """Moves the marks past ``positions`` (pack, end) the replay applied."""
        ...

    def set_applied(self, marks: Mapping[int, int | None]) -> None:
        """Sets packs' marks outright (None forgets a pack), durably: for packs whose records
        gc moved, where the log did not simply advance."""
        ...

    def freeze_marks(self) -> None:
        """Stops advancing the marks for this process's lifetime: part of the log could not
        be applied, and a mark past it would keep it from being replayed."""
        ...

    @property
    def marks_frozen(self) -> bool:
        """Whether ``freeze_marks`` was called."""
        ...

    def record_unindexed(self, manifest: bytes, pack: int, end: int, why: str) -> None:
        """Remembers a manifest record of the log that could not be indexed, until an
        instance with that manifest is committed."""
        ...

    def unindexed(self) -> dict[str, dict[str, Any]]:
        """Manifest records that could not be indexed: manifest hash -> {pack, end, why}."""
        ...

    # Coordination -------------------------------------------------------------------------

    def exclusive(self, job: str) -> AbstractContextManager[bool]:
        """Held while maintenance ``job`` ("gc", "reindex") runs: gives True to the one
        process that gets it, False to any other meanwhile — on every node sharing the index.
        A process that dies lets it go."""
        ...

    def beat(self, node: int, address: str, started: float) -> None:
        """Records that ``node`` serves at ``address`` (since ``started``, a Unix time) as
        of now: a serving node's heartbeat, for the other nodes sharing the index."""
        ...

    def leave(self, node: int) -> None:
        """Records that ``node`` has stopped serving."""
        ...

    def nodes(self) -> list[NodeSeen]:
        """The nodes whose heartbeats the index holds, by number."""
        ...

    # Lifetime -----------------------------------------------------------------------------

    def sync(self) -> None:
        """Makes everything committed so far durable (the archive checkpoints with it)."""
        ...

    def close(self) -> None:
        """Releases the index; nothing is called on it afterwards."""
        ...
