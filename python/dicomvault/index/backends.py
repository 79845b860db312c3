"""The one place an index backend is chosen and opened from the configuration (``[index]
backend``): LMDB under the archive root, or PostgreSQL at ``[index] url`` (psycopg is
imported only then); and ``init_db``, which creates or upgrades PostgreSQL's schema."""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from dicomvault.config import Settings
from dicomvault.index.lmdb_index import LmdbIndex
from dicomvault.index.protocol import Index

BACKENDS = ("lmdb", "postgresql")
# The pack store's identity, in the archive root: what replay marks in a shared index are
# kept under (``store.backends.storage_identity``).
STORE_ID = "store-id"


class BackendError(RuntimeError):
    """The configured index cannot be opened: its configuration, its server or its schema."""


def store_identity(root: Path) -> str:
    """The identity of the pack store under ``root``, made once (a random UUID)."""
    path = root / STORE_ID
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    made = str(uuid.uuid4())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:  # another process made it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(made + "\n")
        f.flush()
        os.fsync(f.fileno())
    return made


def index_url(settings: Settings) -> str:
    """``[index] url``, required on PostgreSQL."""
    url = str(settings["index"]["url"])
    if not url:
        raise BackendError(
            '[index] backend = "postgresql" needs [index] url (or DICOMVAULT_INDEX_URL)'
        )
    return url


def index_on_postgresql(settings: Settings) -> bool:
    """Whether the index is on PostgreSQL (BackendError for an unknown backend)."""
    return _backend(settings) == "postgresql"


def _backend(settings: Settings) -> str:
    backend = str(settings["index"]["backend"])
    if backend not in BACKENDS:
        raise BackendError(f"[index] backend must be lmdb or postgresql, not {backend!r}")
    return backend


def open_index(
    settings: Settings,
    *,
    store: str,
    barrier: Callable[[], None] | None = None,
    same_data_set: Callable[[bytes, bytes], bool] | None = None,
) -> Index:
    """The archive's index as ``settings`` configure it, keeping its replay marks under
    ``store``, the identity of the archive's storage (see ``LmdbIndex`` for ``barrier`` and
    ``same_data_set``)."""
    conf = settings["index"]
    if _backend(settings) == "lmdb":
        return LmdbIndex(
            settings.root / "index",
            map_size=int(conf["map_size"]),
            sync=False,
            barrier=barrier,
            same_data_set=same_data_set,
        )
    url = index_url(settings)
    _need_psycopg()
    import psycopg

    from dicomvault.index import pg_index, pg_schema

    try:
        return pg_index.PgIndex(
            url,
            store=store,
            pool_size=int(conf["pool_size"]),
            barrier=barrier,
            same_data_set=same_data_set,
        )
    except (psycopg.Error, pg_schema.SchemaError) as e:
        raise _failed(url, e) from e


def init_db(settings: Settings) -> tuple[int, int]:
    """Creates or upgrades the PostgreSQL schema of ``[index] url``: (the version found, 0
    for none; the version now)."""
    if _backend(settings) != "postgresql":
        raise BackendError('init-db is for [index] backend = "postgresql" (LMDB needs none)')
    url = index_url(settings)
    _need_psycopg()
    import psycopg

    from dicomvault.index import pg_schema

    try:
        with psycopg.connect(url, autocommit=True) as conn:
            return pg_schema.migrate(conn)
    except (psycopg.Error, pg_schema.SchemaError) as e:
        raise _failed(url, e) from e


def _failed(url: str, error: Exception) -> BackendError:
    """The index at ``url`` (its password hidden) failed: psycopg's reason, on one line (it
    puts its hints on lines of their own)."""
    from dicomvault.index import pg_schema

    return BackendError(f"the index at {pg_schema.redact(url)}: {' '.join(str(error).split())}")


def _need_psycopg() -> None:
    """Whether psycopg is installed (only the PostgreSQL index needs it)."""
    if (
        importlib.util.find_spec("psycopg") is None
        or importlib.util.find_spec("psycopg_pool") is None
    ):
        raise BackendError(
            "the PostgreSQL index needs psycopg: pip install 'dicomvault[postgresql]'"
        )
