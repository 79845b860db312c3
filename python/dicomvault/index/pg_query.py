"""Reads of the index on PostgreSQL: ``PgReader``, the shared query ``planner``'s reader (records
fetched by key lists, children by parent, secondary index ranges on ``ix``'s primary key, scans
by key pages), each read on a connection taken from the pool for it alone — a slow consumer of
a long C-FIND holds no connection — and the totals, counted."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from dicomvault.index.levels import Level
from dicomvault.index.pg_schema import SCHEMA
from dicomvault.index.pg_writes import TABLES, key_of
from dicomvault.index.protocol import IndexUnavailable
from dicomvault.index.records import Record, decode

# Rows a scan reads at a time.
PAGE = 1000


class PgReader:
    """The planner's reads (a ``planner.Reader``) on the index's pool."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def _rows(self, query: str, params: Sequence[object]) -> list[tuple[bytes, ...]]:
        try:
            with self.pool.connection() as conn:
                return conn.cursor(binary=True).execute(query, params).fetchall()
        except (psycopg.OperationalError, PoolTimeout) as e:
            # The server is down or unreachable: the request is refused as when the applier
            # cannot index (0xA700, HTTP 503), not failed as if the query were wrong.
            raise IndexUnavailable(f"the index on PostgreSQL cannot be read: {e}") from e

    def records(self, level: Level, keys: Sequence[str]) -> dict[str, Record]:
        if not keys:
            return {}
        rows = self._rows(
            f"SELECT key, body FROM {TABLES[level]} WHERE key = ANY(%s)",
            ([key_of(k) for k in keys],),
        )
        return {(k := key.decode("utf-8")): decode(level, k, body) for key, body in rows}

    def existing(self, level: Level, keys: Sequence[str]) -> list[str]:
        rows = self._rows(
            f"SELECT key FROM {TABLES[level]} WHERE key = ANY(%s)", ([key_of(k) for k in keys],)
        )
        found = {key.decode("utf-8") for (key,) in rows}
        return [k for k in keys if k in found]

    def child_keys(self, level: Level, parents: Iterable[str]) -> list[str]:
        wanted = [key_of(p) for p in parents]
        if not wanted:
            return []
        rows = self._rows(
            f"SELECT key FROM {TABLES[level]} WHERE parent = ANY(%s) ORDER BY key", (wanted,)
        )
        return [key.decode("utf-8") for (key,) in rows]

    def ix_range(
        self, code: bytes, value: bytes, *, exact: bool, upper: bytes | None = None
    ) -> list[str]:
        # UTF-8 never holds 0xff: "upper + 0xff" bounds every value that starts with upper.
        params: tuple[bytes, ...]
        if exact:
            where, params = "value = %s", (value,)
        elif upper is not None:
            where, params = "value >= %s AND value <= %s", (value, upper + b"\xff")
        else:
            where, params = "value >= %s AND value < %s", (value, value + b"\xff")
        rows = self._rows(
            f"SELECT key FROM {SCHEMA}.ix WHERE code = %s AND {where} ORDER BY value, key",
            (code, *params),
        )
        return [key.decode("utf-8") for (key,) in rows]

    def keys(self, level: Level) -> Iterator[str]:
        after = b""
        while True:
            rows = self._rows(
                f"SELECT key FROM {TABLES[level]} WHERE key > %s ORDER BY key LIMIT {PAGE}",
                (after,),
            )
            yield from (key.decode("utf-8") for (key,) in rows)
            if len(rows) < PAGE:
                return
            after = rows[-1][0]

    def stats(self) -> dict[str, int]:
        """Counts of every level, the instances' size and patient conflicts."""
        [row] = self._rows(
            f"SELECT (SELECT count(*) FROM {TABLES[Level.PATIENT]}), "
            f"(SELECT count(*) FROM {TABLES[Level.STUDY]}), "
            f"(SELECT count(*) FROM {TABLES[Level.SERIES]}), "
            "count(*), coalesce(sum(size), 0), count(*) FILTER (WHERE conflict) "
            f"FROM {TABLES[Level.IMAGE]}",
            (),
        )
        names = ("patients", "studies", "series", "instances", "size", "patient_conflicts")
        return {name: int(v) for name, v in zip(names, row, strict=True)}
