"""Replay marks on PostgreSQL: how far into each pack of one pack store the index reflects its
manifest and tombstone records, and the records of that store it could not index — rows
keyed by the store's identity, so that several stores (nodes) can share one index."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from dicomvault import _native
from dicomvault.index.pg_schema import SCHEMA
from dicomvault.index.records import Positions

Cursor = psycopg.Cursor[TupleRow]


def advance(cur: Cursor, store: str, positions: Positions | None) -> None:
    """Moves the store's marks past ``positions`` (pack, end); a mark never moves back."""
    furthest: dict[int, int] = {}
    for pack, end in positions or ():
        furthest[pack] = max(furthest.get(pack, 0), end)
    if furthest:
        cur.executemany(
            f"INSERT INTO {SCHEMA}.marks (store, pack, position) VALUES (%s, %s, %s) "
            "ON CONFLICT (store, pack) DO UPDATE "
            "SET position = GREATEST(marks.position, EXCLUDED.position)",
            [(store, pack, end) for pack, end in sorted(furthest.items())],
        )


def read(cur: Cursor, store: str) -> dict[int, int]:
    cur.execute(f"SELECT pack, position FROM {SCHEMA}.marks WHERE store = %s", (store,))
    return {int(pack): int(position) for pack, position in cur.fetchall()}


def set_marks(cur: Cursor, store: str, marks: Mapping[int, int | None]) -> None:
    """Sets packs' marks outright (None forgets a pack)."""
    for pack, end in sorted(marks.items()):
        if end is None:
            cur.execute(f"DELETE FROM {SCHEMA}.marks WHERE store = %s AND pack = %s", (store, pack))
        else:
            cur.execute(
                f"INSERT INTO {SCHEMA}.marks (store, pack, position) VALUES (%s, %s, %s) "
                "ON CONFLICT (store, pack) DO UPDATE SET position = EXCLUDED.position",
                (store, pack, end),
            )


def record_unindexed(
    cur: Cursor, store: str, manifest: bytes, pack: int, end: int, why: str
) -> None:
    cur.execute(
        f"INSERT INTO {SCHEMA}.unindexed (store, manifest_hash, pack, position, why) "
        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (store, manifest_hash) DO UPDATE "
        "SET pack = EXCLUDED.pack, position = EXCLUDED.position, why = EXCLUDED.why",
        (store, _native.manifest_hash(manifest), pack, end, why),
    )


def unindexed(cur: Cursor, store: str) -> dict[str, dict[str, Any]]:
    cur.execute(
        f"SELECT manifest_hash, pack, position, why FROM {SCHEMA}.unindexed WHERE store = %s "
        "ORDER BY manifest_hash",
        (store,),
    )
    return {
        h: {"pack": int(pack), "end": int(end), "why": why} for h, pack, end, why in cur.fetchall()
    }


def forget_unindexed(cur: Cursor, manifests: Iterable[bytes]) -> None:
    """Indexed after all (stored again, through any store): no longer unindexed."""
    hashes = sorted({_native.manifest_hash(m) for m in manifests})
    if hashes:
        cur.execute(f"DELETE FROM {SCHEMA}.unindexed WHERE manifest_hash = ANY(%s)", (hashes,))
