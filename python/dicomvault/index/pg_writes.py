"""Writes to the index on PostgreSQL: ``PgBatch``, the shared ``tree`` upkeep's batch within
one READ COMMITTED transaction, and ``retrying``, which runs such a transaction again when
PostgreSQL aborts it for a conflict with another writer.

A batch locks the records it reads (``SELECT ... FOR UPDATE``, key-sorted, top level first),
so that concurrent writers under one patient or study update its counts one after the other;
two writers creating the same record meet on its primary key, and the later one is retried
and finds it. Changed records and index entries are written at ``flush``, key-sorted, in one
pipeline of statements."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import psycopg
from psycopg import errors
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool

from dicomvault.index import secondary
from dicomvault.index.levels import Level
from dicomvault.index.pg_schema import SCHEMA
from dicomvault.index.records import Record, decode, encode
from dicomvault.index.tree import Batch

log = logging.getLogger("dicomvault.index")

TABLES = {
    Level.PATIENT: f"{SCHEMA}.patients",
    Level.STUDY: f"{SCHEMA}.studies",
    Level.SERIES: f"{SCHEMA}.series",
    Level.IMAGE: f"{SCHEMA}.instances",
}
# Each level's columns besides key, in the order ``row`` gives them.
COLUMNS = {
    Level.PATIENT: ("body",),
    Level.STUDY: ("parent", "body"),
    Level.SERIES: ("parent", "body"),
    Level.IMAGE: ("parent", "size", "conflict", "history", "body"),
}
# What aborts a transaction because of another writer: run it again.
CONFLICTS = (errors.SerializationFailure, errors.DeadlockDetected, errors.UniqueViolation)
ATTEMPTS = 8

T = TypeVar("T")


def key_of(key: str) -> bytes:
    return key.encode("utf-8")


def row(record: Record) -> tuple[object, ...]:
    """A record's column values (``COLUMNS``), then its key."""
    body = encode(record)
    parent = key_of(record.parent) if record.parent is not None else None
    values: tuple[object, ...]
    if record.level is Level.PATIENT:
        values = (body,)
    elif record.level is Level.IMAGE:
        values = (
            parent,
            record.size,
            record.patient_conflict is not None,
            bool(record.history),
            body,
        )
    else:
        values = (parent, body)
    return (*values, key_of(record.key))


def retrying(pool: ConnectionPool, work: Callable[[psycopg.Cursor[TupleRow]], T]) -> T:
    """Runs ``work`` in one transaction, again (with a growing pause) when PostgreSQL aborts
    it for a conflict with a concurrent writer."""
    delay = 0.01
    for attempt in range(ATTEMPTS):
        try:
            with pool.connection() as conn, conn.transaction():
                return work(conn.cursor(binary=True))
        except CONFLICTS as e:
            if attempt == ATTEMPTS - 1:
                raise
            log.debug("index transaction retried after a conflict: %s", e)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
    raise AssertionError("unreachable")


class PgBatch(Batch):
    """Records read (and locked) and changed within one write transaction."""

    def __init__(self, cur: psycopg.Cursor[TupleRow]) -> None:
        super().__init__()
        self.cur = cur
        # Records as stored in the transaction (None: absent), read once each.
        self.stored: dict[tuple[Level, str], bytes | None] = {}
        # Index entries to add (True) or remove (False): the last change of each counts.
        self.entries: dict[tuple[bytes, bytes, str], bool] = {}

    def preload(self, level: Level, keys: Iterable[str]) -> None:
        """Reads and locks the records of ``keys`` not read yet, in key order."""
        wanted = sorted({k for k in keys if (level, k) not in self.stored})
        if not wanted:
            return
        self.cur.execute(
            f"SELECT key, body FROM {TABLES[level]} WHERE key = ANY(%s) ORDER BY key FOR UPDATE",
            ([key_of(k) for k in wanted],),
        )
        found = {k.decode("utf-8"): b for k, b in self.cur.fetchall()}
        for k in wanted:
            self.stored[(level, k)] = found.get(k)

    def load(self, level: Level, key: str) -> Record | None:
        self.preload(level, [key])
        raw = self.stored[(level, key)]
        return decode(level, key, raw) if raw is not None else None

    def child_keys(self, level: Level, parent: str) -> list[str]:
        self.cur.execute(
            f"SELECT key, body FROM {TABLES[level]} WHERE parent = %s ORDER BY key FOR UPDATE",
            (key_of(parent),),
        )
        keys = set()
        for k, body in self.cur.fetchall():
            key = k.decode("utf-8")
            self.stored.setdefault((level, key), body)
            keys.add(key)
        for (lvl, key), record in self.changed.items():
            if lvl is level:
                if record is None:
                    keys.discard(key)
                elif record.parent == parent:
                    keys.add(key)
        return sorted(keys)

    def link(self, record: Record, add: bool) -> None:
        """Nothing: a record's parent column is its link."""

    def index(self, record: Record, add: bool) -> None:
        for code, value in secondary.entries(record):
            self.entries[(code, value, record.key)] = add

    def flush(self) -> None:
        for level in Level:
            changed = sorted(
                ((k, r) for (lvl, k), r in self.changed.items() if lvl is level),
                key=lambda item: item[0],
            )
            table, columns = TABLES[level], COLUMNS[level]
            gone = [key_of(k) for k, r in changed if r is None]
            if gone:
                self.cur.execute(f"DELETE FROM {table} WHERE key = ANY(%s)", (gone,))
            updated = [row(r) for k, r in changed if r is not None and self.stored.get((level, k))]
            if updated:
                sets = ", ".join(f"{c} = %s" for c in columns)
                self.cur.executemany(f"UPDATE {table} SET {sets} WHERE key = %s", updated)
            created = [
                row(r) for k, r in changed if r is not None and not self.stored.get((level, k))
            ]
            if created:
                names = ", ".join((*columns, "key"))
                marks = ", ".join(["%s"] * (len(columns) + 1))
                self.cur.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", created)
            for k, r in changed:
                self.stored[(level, k)] = encode(r) if r is not None else None
        entries = sorted(self.entries.items())
        removed = [(c, v, key_of(k)) for (c, v, k), add in entries if not add]
        if removed:
            self.cur.executemany(
                f"DELETE FROM {SCHEMA}.ix WHERE code = %s AND value = %s AND key = %s", removed
            )
        added = [(c, v, key_of(k)) for (c, v, k), add in entries if add]
        if added:
            self.cur.executemany(
                f"INSERT INTO {SCHEMA}.ix (code, value, key) VALUES (%s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                added,
            )
        self.changed.clear()
        self.entries.clear()
