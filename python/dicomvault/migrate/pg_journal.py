"""The migration journal on PostgreSQL: a row per (source, item) in the index's database,
so that every node sharing the archive sees a migration's progress, and can resume it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator

import psycopg

from dicomvault.index.pg_schema import SCHEMA, prepare
from dicomvault.migrate.journal import Journal, JournalRow, decode, encode


class PgJournal(Journal):
    """The journal of an archive whose index is on PostgreSQL at ``url``. One connection,
    shared by the migration's threads in turn."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        prepare(self.conn)
        self._lock = threading.Lock()

    def close(self) -> None:
        self.conn.close()

    def get(self, source: str, item: str) -> JournalRow:
        with self._lock:
            row = self.conn.execute(
                f"SELECT body FROM {SCHEMA}.journal WHERE source = %s AND item = %s",
                (source, item),
            ).fetchone()
        return decode(row[0]) if row is not None else JournalRow(source, item)

    def put_many(self, rows: Iterable[JournalRow]) -> None:
        now = time.time()
        batch = []
        for row in rows:
            row.updated = now
            batch.append((row.source, row.item, encode(row)))
        with self._lock, self.conn.transaction(), self.conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {SCHEMA}.journal (source, item, body) VALUES (%s, %s, %s) "
                "ON CONFLICT (source, item) DO UPDATE SET body = EXCLUDED.body",
                batch,
            )

    def rows(self, source: str) -> Iterator[JournalRow]:
        with self._lock:
            found = self.conn.execute(
                f'SELECT body FROM {SCHEMA}.journal WHERE source = %s ORDER BY item COLLATE "C"',
                (source,),
            ).fetchall()
        return iter([decode(body) for (body,) in found])
