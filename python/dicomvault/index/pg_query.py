"""Reads of the index on PostgreSQL: ``PgReader``, the shared query ``planner``'s reader (records
fetched by key lists, children by parent, secondary index ranges on ``ix``'s primary key, scans
by key pages), each read on a connection taken from the pool for it alone — a slow consumer of
a long C-FIND holds no connection — and the totals, counted.

A C-FIND's candidates come a page at a time, each page one statement: the candidates (the
planner's ``Source`` lifted to the query's level by parent joins) with their ancestors. A round
trip costs more than the query behind it, so a C-FIND of up to ``planner.CHUNK`` candidates
is one statement; beyond, their keys are read once, then their records a chunk at a time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from functools import cache
from itertools import islice

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from dicomvault.index.levels import Level
from dicomvault.index.pg_schema import SCHEMA
from dicomvault.index.pg_writes import TABLES, key_of
from dicomvault.index.planner import CHUNK, Page, Source
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

    def pages(self, level: Level, source: Source | None) -> Iterator[Page]:
        if source is None:
            after = b""
            while True:
                page = self._page(level, "key > %s", [after], limited=True)
                yield page
                if len(page[0]) < CHUNK:
                    return
                after = key_of(page[0][-1].key)
        candidates, params = candidates_sql(level, source)
        page = self._page(level, f"key IN ({candidates})", params, limited=True)
        yield page
        if len(page[0]) < CHUNK:
            return
        # Paging on by "key > last" would find every candidate again for each page.
        rest = self._rows(
            f"SELECT key FROM {TABLES[level]} WHERE key IN ({candidates}) AND key > %s "
            "ORDER BY key",
            [*params, key_of(page[0][-1].key)],
        )
        keys = (key for (key,) in rest)
        while chunk := list(islice(keys, CHUNK)):
            yield self._page(level, "key = ANY(%s::bytea[])", [chunk], limited=False)

    def _page(self, level: Level, where: str, params: list[object], *, limited: bool) -> Page:
        records = []
        ancestors = {}
        for depth, key, body in self._rows(page_sql(level, where, limited), params):
            record = decode(LEVELS[int(depth)], key.decode("utf-8"), body)
            if record.level is level:
                records.append(record)
            else:
                ancestors[(record.level, record.key)] = record
        # Code point order is the UTF-8 keys' byte order.
        records.sort(key=lambda r: r.key)
        return records, ancestors

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


LEVELS = list(Level)


def candidates_sql(level: Level, source: Source) -> tuple[str, list[object]]:
    """A subquery of the keys at ``level`` from ``source`` (as ``planner.candidates`` finds
    them), and its parameters."""
    params: list[object]
    if source.keys:
        sql = f"SELECT key FROM {TABLES[source.level]} WHERE key = ANY(%s::bytea[])"
        params = [[key_of(k) for k in source.keys]]
    else:
        # One condition per range, its bounds as parameters of their own: the server plans
        # with their values (an array's elements it would not see), so it reads the few
        # index entries and their records by key rather than every record.
        conditions, params = [], []
        for r in source.ranges:
            low, high = r.span()
            if r.exact:
                conditions.append("value = %s")
                params.append(low)
            else:
                conditions.append("value BETWEEN %s AND %s")
                params += [low, high]
        sql = f"SELECT key FROM {SCHEMA}.ix WHERE code = %s AND ({' OR '.join(conditions)})"
        params.insert(0, source.code)
    for child in LEVELS[source.level.depth + 1 : level.depth + 1]:
        sql = f"SELECT key FROM {TABLES[child]} WHERE parent IN ({sql})"
    return sql, params


@cache
def page_sql(level: Level, where: str, limited: bool) -> str:
    """A statement reading the records at ``level`` that satisfy ``where`` (the first
    ``CHUNK`` in key order when ``limited``) and their ancestors: rows (depth, key, body)."""
    parent = ", parent" if level.parent is not None else ""
    limit = f" LIMIT {CHUNK}" if limited else ""
    ctes = [
        f"r{level.depth} AS (SELECT key{parent}, body FROM {TABLES[level]} "
        f"WHERE {where} ORDER BY key{limit})"
    ]
    child = level
    while (up := child.parent) is not None:
        columns = "key, parent, body" if up.parent is not None else "key, body"
        ctes.append(
            f"r{up.depth} AS (SELECT {columns} FROM {TABLES[up]} "
            f"WHERE key IN (SELECT parent FROM r{child.depth}))"
        )
        child = up
    rows = " UNION ALL ".join(f"SELECT {d}, key, body FROM r{d}" for d in range(level.depth + 1))
    return f"WITH {', '.join(ctes)} {rows}"
