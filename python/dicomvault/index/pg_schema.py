"""The index's schema on PostgreSQL and its versioned migrations: ``migrate`` (``dicomvault
init-db``) creates or upgrades it, safe to run twice and from several nodes at once (an
advisory lock); ``prepare`` (opening the index) creates it in a database that has none, and
refuses one that is older (run ``init-db``) or newer than this version knows.

Everything lies in the ``dicomvault`` schema. Record keys are ``bytea`` (UTF-8; a patient's
key holds a NUL, which ``text`` cannot), so that key order is byte order as on LMDB; records
are their msgpack form (``records.encode``). The ``ix`` table holds the secondary index
entries (``secondary``): its primary key is the B-tree that serves PatientID, PatientName
(exact, and case-folded prefixes), StudyDate ranges, AccessionNumber, Modality and
ModalitiesInStudy; the UIDs are the level tables' primary keys. Totals are counted by queries,
not kept in a row every writer would update. Replay marks and unindexed records are keyed by
the pack store they refer to (the archive's store identity)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import psycopg

SCHEMA = "dicomvault"
# A constant advisory lock key ("dcmvault" in ASCII): one migration at a time.
MIGRATION_LOCK = 0x64636D7661756C74

# Migration N (1-based) brings the schema from version N - 1 to N. Never edit a released one:
# append another.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
        f"CREATE TABLE {SCHEMA}.patients (key bytea PRIMARY KEY, body bytea NOT NULL)",
        f"""CREATE TABLE {SCHEMA}.studies (
            key bytea PRIMARY KEY, parent bytea NOT NULL, body bytea NOT NULL)""",
        f"CREATE INDEX studies_parent ON {SCHEMA}.studies (parent, key)",
        f"""CREATE TABLE {SCHEMA}.series (
            key bytea PRIMARY KEY, parent bytea NOT NULL, body bytea NOT NULL)""",
        f"CREATE INDEX series_parent ON {SCHEMA}.series (parent, key)",
        f"""CREATE TABLE {SCHEMA}.instances (
            key bytea PRIMARY KEY,
            parent bytea NOT NULL,
            size bigint NOT NULL,
            conflict boolean NOT NULL,
            history boolean NOT NULL,
            body bytea NOT NULL)""",
        f"CREATE INDEX instances_parent ON {SCHEMA}.instances (parent, key)",
        f"CREATE INDEX instances_history ON {SCHEMA}.instances (key) WHERE history",
        f"""CREATE TABLE {SCHEMA}.ix (
            code bytea NOT NULL, value bytea NOT NULL, key bytea NOT NULL,
            PRIMARY KEY (code, value, key))""",
        f"""CREATE TABLE {SCHEMA}.marks (
            store text NOT NULL, pack bigint NOT NULL, position numeric(20) NOT NULL,
            PRIMARY KEY (store, pack))""",
        f"""CREATE TABLE {SCHEMA}.unindexed (
            store text NOT NULL, manifest_hash text NOT NULL, pack bigint NOT NULL,
            position numeric(20) NOT NULL, why text NOT NULL,
            PRIMARY KEY (store, manifest_hash))""",
        f"CREATE INDEX unindexed_manifest ON {SCHEMA}.unindexed (manifest_hash)",
    ),
    (
        f"""CREATE TABLE {SCHEMA}.nodes (
            store text NOT NULL, node bigint NOT NULL, address text NOT NULL,
            started timestamptz NOT NULL, seen timestamptz NOT NULL,
            PRIMARY KEY (store, node))""",
    ),
    (
        f"""CREATE TABLE {SCHEMA}.journal (
            source text NOT NULL, item text NOT NULL, body bytea NOT NULL,
            PRIMARY KEY (source, item))""",
    ),
]
VERSION = len(MIGRATIONS)


class SchemaError(RuntimeError):
    """The database's schema is not one this version can use as it is."""


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    if "://" not in url:  # a "key=value" connection string
        return " ".join(
            "password=***" if part.startswith("password=") else part for part in url.split()
        )
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def version(conn: psycopg.Connection) -> int | None:
    """The schema's version, or None in a database without one."""
    row = conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.version",)).fetchone()
    if row is None or row[0] is None:
        return None
    found = conn.execute(f"SELECT version FROM {SCHEMA}.version").fetchone()
    return int(found[0]) if found is not None else None


def migrate(conn: psycopg.Connection) -> tuple[int, int]:
    """Creates or upgrades the schema to ``VERSION`` in one transaction; returns (the version
    found, 0 for none; the version now). A newer schema than this version knows is a
    SchemaError."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        found = version(conn) or 0
        if found > VERSION:
            raise SchemaError(
                f"the index schema is version {found}, newer than this dicomvault knows "
                f"({VERSION}): upgrade dicomvault"
            )
        for statements in MIGRATIONS[found:]:
            for statement in statements:
                conn.execute(statement)
        if found == 0:
            conn.execute(f"CREATE TABLE {SCHEMA}.version (version integer NOT NULL)")
            conn.execute(f"INSERT INTO {SCHEMA}.version VALUES (%s)", (VERSION,))
        else:
            conn.execute(f"UPDATE {SCHEMA}.version SET version = %s", (VERSION,))
    return found, VERSION


def prepare(conn: psycopg.Connection) -> None:
    """At open: creates the schema in a database that has none (like ``init-db``); an older
    schema must be upgraded by ``init-db`` (an explicit step, when every node runs the new
    version), a newer one is refused."""
    found = version(conn)
    if found is None:
        migrate(conn)
    elif found < VERSION:
        raise SchemaError(
            f"the index schema is version {found}, this dicomvault needs {VERSION}: "
            "run `dicomvault init-db --config FILE` to upgrade it"
        )
    elif found > VERSION:
        raise SchemaError(
            f"the index schema is version {found}, newer than this dicomvault knows "
            f"({VERSION}): upgrade dicomvault"
        )
