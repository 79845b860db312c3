"""How the index lies in LMDB: its sub-databases and key encodings, and the reads and
secondary-index upkeep that the tree, the query planner and the marks share.

Sub-databases: one per level (record key -> msgpack record), ``children`` (parent/child key
pairs, so a level's children are a key range), ``ix`` (``secondary`` index entries: field,
value and record key in one key, so exact and prefix matches and date ranges are key ranges) and
``meta`` (totals, replay marks).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lmdb
import msgpack

from dicomvault.index import secondary
from dicomvault.index.levels import Level
from dicomvault.index.records import Record, decode
from dicomvault.index.secondary import SEP

DB_NAMES = {
    Level.PATIENT: b"patients",
    Level.STUDY: b"studies",
    Level.SERIES: b"series",
    Level.IMAGE: b"instances",
}


class Layout:
    """The open sub-databases, and the reads and index-key upkeep over them."""

    def __init__(self, env: lmdb.Environment) -> None:
        self.env = env
        self.dbs = {lvl: env.open_db(name) for lvl, name in DB_NAMES.items()}
        self.children = env.open_db(b"children")
        self.ix = env.open_db(b"ix")
        self.meta = env.open_db(b"meta")
        # Counts records decoded: lets tests prove that indexed keys use key ranges.
        self.records_read = 0
        self.max_key_size = env.max_key_size()

    def holds(self, key: bytes) -> bool:
        """Whether ``key`` can be an LMDB key: one that cannot (empty, or longer than LMDB
        takes) names no record, and asking LMDB for it fails (MDB_BAD_VALSIZE), so a query
        value such as an empty item of a UID list ("1.2.3\\") is answered "none" here."""
        return 0 < len(key) <= self.max_key_size

    def get(self, txn: lmdb.Transaction[bytes], level: Level, key: str) -> Record | None:
        raw_key = key.encode("utf-8")
        raw = txn.get(raw_key, db=self.dbs[level]) if self.holds(raw_key) else None
        if raw is None:
            return None
        self.records_read += 1
        return decode(level, key, raw)

    def child_prefix(self, level: Level, parent: str) -> bytes:
        return level.value[:2].encode() + SEP + parent.encode("utf-8") + SEP

    def child_keys(self, txn: lmdb.Transaction[bytes], level: Level, parent: str) -> list[str]:
        prefix = self.child_prefix(level, parent)
        cursor = txn.cursor(db=self.children)
        keys = []
        if cursor.set_range(prefix):
            for k in cursor.iternext(values=False):
                if not k.startswith(prefix):
                    break
                keys.append(k[len(prefix) :].decode("utf-8"))
        return keys

    def ix_key(self, code: bytes, value: bytes, key: str) -> bytes:
        return code + SEP + value + SEP + key.encode("utf-8")

    def index_record(self, txn: lmdb.Transaction[bytes], record: Record, add: bool) -> None:
        for code, value in secondary.entries(record):
            k = self.ix_key(code, value, record.key)
            if add:
                txn.put(k, b"", db=self.ix)
            else:
                txn.delete(k, db=self.ix)

    def meta_get(self, txn: lmdb.Transaction[bytes], key: bytes, default: Any) -> Any:
        """A msgpack value of ``meta``, or ``default``."""
        raw = txn.get(key, db=self.meta)
        return msgpack.unpackb(raw, strict_map_key=False) if raw else default

    def meta_put(self, txn: lmdb.Transaction[bytes], key: bytes, value: Mapping[Any, Any]) -> None:
        txn.put(key, msgpack.packb(value), db=self.meta)
