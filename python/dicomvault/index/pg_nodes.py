"""The nodes serving one archive, on PostgreSQL: a row per serving node, refreshed every few
seconds (a heartbeat) and removed when it stops, so that every node, maintenance and the
operator see which nodes are up — a killed node's row stays, and goes silent."""

from __future__ import annotations

from datetime import datetime, timezone

import psycopg
from psycopg.rows import TupleRow

from dicomvault.index.pg_schema import SCHEMA
from dicomvault.index.records import NodeSeen

Cursor = psycopg.Cursor[TupleRow]


def beat(cur: Cursor, store: str, node: int, address: str, started: float) -> None:
    cur.execute(
        f"INSERT INTO {SCHEMA}.nodes (store, node, address, started, seen) "
        "VALUES (%s, %s, %s, %s, now()) ON CONFLICT (store, node) DO UPDATE "
        "SET address = EXCLUDED.address, started = EXCLUDED.started, seen = now()",
        (store, node, address, datetime.fromtimestamp(started, timezone.utc)),
    )


def leave(cur: Cursor, store: str, node: int) -> None:
    cur.execute(f"DELETE FROM {SCHEMA}.nodes WHERE store = %s AND node = %s", (store, node))


def seen(cur: Cursor, store: str) -> list[NodeSeen]:
    cur.execute(
        f"SELECT node, address, started, extract(epoch FROM now() - seen) "
        f"FROM {SCHEMA}.nodes WHERE store = %s ORDER BY node",
        (store,),
    )
    return [
        NodeSeen(int(node), str(address), started.timestamp(), float(ago))
        for node, address, started, ago in cur.fetchall()
    ]
