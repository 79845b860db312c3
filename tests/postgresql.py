"""A real PostgreSQL for the tests (``dicomvault.bench.engines``): a throwaway cluster
started on a free loopback port for the session, and a fresh database for each test that asks
for one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dicomvault.bench.engines import PostgreSQL


@pytest.fixture(scope="session")
def postgresql() -> Iterator[PostgreSQL]:
    server = PostgreSQL().start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgresql: PostgreSQL) -> str:
    """A fresh, empty database on the session's PostgreSQL."""
    return postgresql.database()
