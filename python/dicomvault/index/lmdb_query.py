"""LMDB's ``Reader`` for the query planner (``planner``): records, parent links and secondary
index ranges read within one read transaction, as cursor ranges."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import lmdb

from dicomvault.index import planner
from dicomvault.index.levels import Level
from dicomvault.index.lmdb_layout import Layout
from dicomvault.index.records import Record
from dicomvault.index.secondary import SEP


class LmdbReader:
    """The planner's reads (a ``planner.Reader``) within a read transaction the caller holds."""

    def __init__(self, layout: Layout, txn: lmdb.Transaction[bytes]) -> None:
        self.layout = layout
        self.txn = txn

    def records(self, level: Level, keys: Sequence[str]) -> dict[str, Record]:
        found = {}
        for key in keys:
            record = self.layout.get(self.txn, level, key)
            if record is not None:
                found[key] = record
        return found

    def existing(self, level: Level, keys: Sequence[str]) -> list[str]:
        db = self.layout.dbs[level]
        return [
            k
            for k in keys
            if self.layout.holds(raw := k.encode("utf-8")) and self.txn.get(raw, db=db)
        ]

    def child_keys(self, level: Level, parents: Iterable[str]) -> list[str]:
        return [c for p in parents for c in self.layout.child_keys(self.txn, level, p)]

    def ix_range(
        self, code: bytes, value: bytes, *, exact: bool, upper: bytes | None = None
    ) -> Iterator[str]:
        base = code + SEP
        start = base + value + (SEP if exact else b"")
        cursor = self.txn.cursor(db=self.layout.ix)
        if not cursor.set_range(start):
            return
        stop = base + upper + b"\xff" if upper is not None else None
        for k in cursor.iternext(values=False):
            if stop is not None:
                if k > stop or not k.startswith(base):
                    return
            elif not k.startswith(start):
                return
            # Index values never hold the separator, record keys may (patient keys do).
            yield k[len(base) :].partition(SEP)[2].decode("utf-8")

    def keys(self, level: Level) -> Iterator[str]:
        for k in self.txn.cursor(db=self.layout.dbs[level]).iternext(values=False):
            yield k.decode("utf-8")

    def pages(self, level: Level, source: planner.Source | None) -> Iterator[planner.Page]:
        # Reads within a transaction cost no round trip: the planner's own paging.
        return planner.pages(self, level, source)
