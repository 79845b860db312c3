"""A real S3 service for the tests (``dicomvault.bench.engines``): SeaweedFS started on free
loopback ports for the session, with one bucket; each test that asks gets a prefix of its own
in it, so archives never see each other's objects."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dicomvault.bench.engines import SeaweedFs


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFs]:
    server = SeaweedFs().start()
    yield server
    server.stop()
