"""A real PostgreSQL for the tests: a throwaway cluster (``initdb``) started on a free loopback
port for the session, and a fresh database for each test that asks for one."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dicomvault.bench.peers import free_port


def pg_bin(tool: str) -> str:
    """A PostgreSQL server tool: on PATH, else Debian's /usr/lib/postgresql/NN/bin (newest)."""
    found = shutil.which(tool)
    if found:
        return found
    versions = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{tool}"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    if not versions:
        raise RuntimeError(f"PostgreSQL's {tool} is not installed (apt-get install postgresql)")
    return str(versions[-1])


class PostgreSQL:
    """A cluster in its own directory, its server listening on 127.0.0.1 only; as root it
    runs as the ``postgres`` user (the server refuses root)."""

    def __init__(self, *, durable: bool = False) -> None:
        # Durability is not what most tests test: without fsync and synchronous commits each
        # database is cheap. A test that crashes the server needs what it acknowledged kept.
        self.durable = durable
        # Not under pytest's tmp_path: its parents are private to root.
        self.dir = Path(tempfile.mkdtemp(prefix="dicomvault-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._names = itertools.count()

    def _run(self, *argv: str) -> None:
        subprocess.run([*self.as_user, *argv], check=True, capture_output=True, timeout=120)

    def start(self) -> PostgreSQL:
        """Starts the server: on a new cluster, or on the one a ``kill`` left."""
        if not self.data.exists():
            self._run(
                pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                "-E", "UTF8", "--locale=C", "--no-sync",
            )  # fmt: skip
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            pg_bin("pg_ctl"), "-D", str(self.data), "-o", options,
            "-l", str(self.dir / "server.log"), "-w", "start",
        )  # fmt: skip
        return self

    def kill(self) -> None:
        """Stops the server as a crash would, keeping the cluster for ``start``."""
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """The URL of a new, empty database."""
        name = f"test_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


@pytest.fixture(scope="session")
def postgresql() -> Iterator[PostgreSQL]:
    server = PostgreSQL().start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgresql: PostgreSQL) -> str:
    """A fresh, empty database on the session's PostgreSQL."""
    return postgresql.database()
