"""LMDB's ``Batch``: the tree's records read and written within one write transaction, parent
links and secondary index keys written into it at once (``tree`` does the upkeep), and the
totals kept in ``meta``."""

from __future__ import annotations

import lmdb

from dicomvault.index.levels import Level
from dicomvault.index.lmdb_layout import Layout
from dicomvault.index.records import Record, encode
from dicomvault.index.tree import Batch, no_totals


class LmdbBatch(Batch):
    """Records changed within one LMDB write transaction, written once at the end."""

    def __init__(self, layout: Layout, txn: lmdb.Transaction[bytes]) -> None:
        super().__init__()
        self.layout = layout
        self.txn = txn

    def load(self, level: Level, key: str) -> Record | None:
        return self.layout.get(self.txn, level, key)

    def child_keys(self, level: Level, parent: str) -> list[str]:
        return self.layout.child_keys(self.txn, level, parent)

    def link(self, record: Record, add: bool) -> None:
        link = self.layout.child_prefix(record.level, record.parent or "") + record.key.encode()
        if add:
            self.txn.put(link, b"", db=self.layout.children)
        else:
            self.txn.delete(link, db=self.layout.children)

    def index(self, record: Record, add: bool) -> None:
        self.layout.index_record(self.txn, record, add)

    def flush(self) -> None:
        for (level, key), record in self.changed.items():
            db = self.layout.dbs[level]
            if record is None:
                self.txn.delete(key.encode("utf-8"), db=db)
            else:
                self.txn.put(key.encode("utf-8"), encode(record), db=db)


def totals(layout: Layout, txn: lmdb.Transaction[bytes]) -> dict[str, int]:
    """Instances, their size and patient conflicts: kept in ``meta`` (LMDB has one writer)."""
    return dict(layout.meta_get(txn, b"totals", no_totals()))


def add_totals(layout: Layout, txn: lmdb.Transaction[bytes], delta: dict[str, int]) -> None:
    current = totals(layout, txn)
    layout.meta_put(txn, b"totals", {k: current[k] + delta[k] for k in current})
