"""The patient -> study -> series -> instance index on PostgreSQL: ``PgIndex``, the second
implementation of the ``Index`` protocol, over its parts — the schema and its migrations
(``pg_schema``), the write batch and retries (``pg_writes``, for the shared ``tree``
upkeep), the reader (``pg_query``, for the shared query ``planner``: C-FIND answers are those
of LMDB by construction) and the replay marks (``pg_marks``).

psycopg 3 with a connection pool, binary results; transactions are READ COMMITTED, retried
when PostgreSQL aborts one for a conflict (see ``pg_writes``). A batch is committed in one
transaction together with the replay marks ``before_commit`` returns (which, on a retry, runs
again). Marks and unindexed records belong to one pack store (``store``: its identity), so
that several stores can share one database. PostgreSQL is durable at each commit: ``sync``
has nothing to do. It manages its own space: ``headroom`` is unbounded (a full database fails
the commit, which the archive's applier retries while refusing instances).
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from itertools import islice
from types import TracebackType
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from dicomvault.index import pg_marks, pg_nodes, planner, tree
from dicomvault.index.levels import Level
from dicomvault.index.pg_query import PgReader
from dicomvault.index.pg_schema import SCHEMA, prepare, redact
from dicomvault.index.pg_writes import TABLES, PgBatch, retrying
from dicomvault.index.protocol import IndexUnavailable
from dicomvault.index.records import (
    CommitOutcome,
    InstanceEntry,
    NodeSeen,
    Positions,
    Record,
    decode,
    encode,
    record_keys,
)

log = logging.getLogger("dicomvault.index")

Cursor = psycopg.Cursor[Any]
T = TypeVar("T")


class PgIndex:
    """The archive's index on PostgreSQL (an ``Index``). Thread-safe."""

    def __init__(
        self,
        url: str,
        *,
        store: str,
        pool_size: int = 8,
        barrier: Callable[[], None] | None = None,
        same_data_set: Callable[[bytes, bytes], bool] | None = None,
    ) -> None:
        """``url``: a libpq connection URL or string; ``store``: the identity of the pack
        store whose log this index applies. ``barrier`` and ``same_data_set`` as for
        ``LmdbIndex``. A database without the schema gets it; another version of it is a
        ``pg_schema.SchemaError``."""
        self.store = store
        self._barrier = barrier
        self._same_data_set = same_data_set
        self._frozen = False
        with psycopg.connect(url, autocommit=True) as conn:  # fails at once if unreachable
            prepare(conn)
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True},
            name="dicomvault-index",
            open=False,
            # How long a request waits for a connection: with the server down, a query is
            # refused within this rather than held for psycopg's 30 s.
            timeout=5.0,
        )
        self.pool.open(wait=True, timeout=30)
        self.reader = PgReader(self.pool)
        log.info("index on PostgreSQL at %s (store %s)", redact(url), store)

    def barrier(self) -> None:
        if self._barrier is not None:
            self._barrier()

    def close(self) -> None:
        self.pool.close()

    def sync(self) -> None:
        """Nothing: every commit is durable."""

    def headroom(self) -> int:
        """Unbounded: PostgreSQL manages its space (see the module)."""
        return sys.maxsize

    def __enter__(self) -> PgIndex:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # Replay marks ------------------------------------------------------------------------

    def beat(self, node: int, address: str, started: float) -> None:
        self._nodes(lambda cur: pg_nodes.beat(cur, self.store, node, address, started))

    def leave(self, node: int) -> None:
        self._nodes(lambda cur: pg_nodes.leave(cur, self.store, node))

    def nodes(self) -> list[NodeSeen]:
        return self._nodes(lambda cur: pg_nodes.seen(cur, self.store))

    def _nodes(self, work: Callable[[Cursor], T]) -> T:
        try:
            return retrying(self.pool, work)
        except (psycopg.Error, PoolTimeout) as e:
            raise IndexUnavailable(f"the index cannot be reached: {e}") from e

    def exclusive(self, job: str) -> AbstractContextManager[bool]:
        """A session advisory lock, on a connection held for the job: PostgreSQL lets it go
        when that connection ends, so a node killed mid-job does not keep it."""
        return self._advisory_lock(job)

    @contextmanager
    def _advisory_lock(self, job: str) -> Iterator[bool]:
        # Keyed by the store too: archives sharing a database do not hold up each other's.
        name = f"dicomvault {self.store} {job}".encode()
        key = int.from_bytes(hashlib.blake2b(name, digest_size=8).digest(), "big", signed=True)
        try:
            with self.pool.connection() as conn:
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
                mine = bool(row and row[0])
                try:
                    yield mine
                finally:
                    if mine:
                        try:
                            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
                        except psycopg.Error as e:  # the connection went, and the lock with it
                            log.warning("the %s lock was lost with its connection: %s", job, e)
        except (psycopg.OperationalError, PoolTimeout) as e:
            raise IndexUnavailable(f"the index cannot be reached: {e}") from e

    @property
    def marks_frozen(self) -> bool:
        return self._frozen

    def freeze_marks(self) -> None:
        """Stops advancing the marks for this process's lifetime (see ``Marks.freeze``)."""
        self._frozen = True

    def _advance(self, cur: Cursor, positions: Positions | None) -> None:
        if not self._frozen:
            pg_marks.advance(cur, self.store, positions)

    def mark_applied(self, positions: Positions) -> None:
        retrying(self.pool, lambda cur: self._advance(cur, list(positions)))

    def set_applied(self, marks: Mapping[int, int | None]) -> None:
        retrying(self.pool, lambda cur: pg_marks.set_marks(cur, self.store, marks))

    def applied(self) -> dict[int, int]:
        with self.pool.connection() as conn:
            return pg_marks.read(conn.cursor(binary=True), self.store)

    def record_unindexed(self, manifest: bytes, pack: int, end: int, why: str) -> None:
        retrying(
            self.pool,
            lambda cur: pg_marks.record_unindexed(cur, self.store, manifest, pack, end, why),
        )

    def unindexed(self) -> dict[str, dict[str, Any]]:
        with self.pool.connection() as conn:
            return pg_marks.unindexed(conn.cursor(binary=True), self.store)

    # Writing ------------------------------------------------------------------------------

    def commit(
        self,
        entries: Sequence[InstanceEntry],
        before_commit: Callable[[list[InstanceEntry]], Positions | None] | None = None,
    ) -> list[CommitOutcome]:
        """Indexes a batch in one transaction (see ``tree.decide``: a duplicate keeps the
        first copy unless ``replace``); its records locked first, level by level from the
        patients down, each level in key order."""
        keys = [record_keys(entry) for entry in entries]

        def work(cur: Cursor) -> list[CommitOutcome]:
            batch = PgBatch(cur)
            for depth, level in enumerate(Level):
                batch.preload(level, (k[depth] for k in keys))
            outcomes, changes = tree.decide(batch, entries, self._same_data_set)
            if before_commit is not None:
                self._advance(cur, before_commit([e for e, _, _ in changes]))
            if changes:
                pg_marks.forget_unindexed(cur, [e.manifest for e, _, _ in changes])
                tree.apply(batch, changes)
                batch.flush()
            return outcomes

        return retrying(self.pool, work)

    def delete(
        self,
        level: Level,
        key: str,
        before_commit: Callable[[list[Record]], Positions | None] | None = None,
    ) -> list[Record]:
        """Deletes a record and everything below it; emptied ancestors go too."""

        def work(cur: Cursor) -> list[Record]:
            batch = PgBatch(cur)
            top = batch.get(level, key)
            if top is None:
                return []
            subtree = tree.subtree(batch, top)
            removed = [r for r in subtree if r.level is Level.IMAGE]
            if before_commit is not None:
                self._advance(cur, before_commit(removed))
            tree.unlink(batch, top, tree.no_totals(), subtree)
            batch.flush()
            return removed

        return retrying(self.pool, work)

    def clear(self) -> None:
        tables = [*TABLES.values(), *(f"{SCHEMA}.{t}" for t in ("ix", "marks", "unindexed"))]
        retrying(self.pool, lambda cur: cur.execute(f"TRUNCATE {', '.join(tables)}"))

    def forget_history(self) -> int:
        """Drops every instance's replaced versions (gc has reclaimed their blobs); returns
        how many instances had some."""

        def work(cur: Cursor) -> int:
            table = TABLES[Level.IMAGE]
            cur.execute(f"SELECT key, body FROM {table} WHERE history FOR UPDATE")
            changed = []
            for k, body in cur.fetchall():
                record = decode(Level.IMAGE, k.decode("utf-8"), body)
                record.history = None
                changed.append((encode(record), k))
            cur.executemany(
                f"UPDATE {table} SET history = false, body = %s WHERE key = %s", changed
            )
            return len(changed)

        return retrying(self.pool, work)

    # Reading ------------------------------------------------------------------------------

    def get(self, level: Level, key: str) -> Record | None:
        self.barrier()
        return self.reader.records(level, [key]).get(key)

    def get_many(self, level: Level, keys: Sequence[str]) -> dict[str, Record]:
        self.barrier()
        return self.reader.records(level, keys)

    def children(self, level: Level, key: str) -> list[Record]:
        self.barrier()
        return planner.children(self.reader, level, key)

    def instances_under(self, level: Level, key: str) -> Iterator[Record]:
        self.barrier()
        yield from planner.instances_under(self.reader, level, key)

    def iter_level(self, level: Level) -> Iterator[Record]:
        self.barrier()
        keys = iter(self.reader.keys(level))
        while page := list(islice(keys, planner.CHUNK)):
            found = self.reader.records(level, page)
            yield from (found[k] for k in page if k in found)

    def lookup(self, value: str) -> list[Record]:
        self.barrier()
        return planner.lookup(self.reader, value)

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
        self.barrier()
        yield from planner.find(
            self.reader,
            level,
            filters,
            return_keys,
            case_insensitive_pn=case_insensitive_pn,
            limit=limit,
            offset=offset,
        )

    def stats(self) -> dict[str, int]:
        self.barrier()
        return self.reader.stats()
