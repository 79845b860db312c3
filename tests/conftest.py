"""Shared fixtures: running the real ``dicomvault`` command in a subprocess against a
temporary archive root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

# The session's PostgreSQL (``postgresql``, ``pg_url``), for the index on it, and SeaweedFS
# (``seaweedfs``), for the blobs on S3.
pytest_plugins = ["tests.postgresql", "tests.seaweedfs"]


class Cli:
    """Runs ``python -m dicomvault`` with ``--root`` pointing at a test archive."""

    def __init__(self, root: Path, cwd: Path) -> None:
        self.root = root
        self.cwd = cwd
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.env.pop("DICOMVAULT_ARCHIVE_ROOT", None)

    def command(self, *args: str | Path) -> list[str]:
        return [sys.executable, "-m", "dicomvault", *map(str, args)]

    def run(
        self, *args: str | Path, check: bool = True, with_root: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = self.command(*args) + (["--root", str(self.root)] if with_root else [])
        result = subprocess.run(
            argv, cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=600
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
            )
        return result

    def json(self, *args: str | Path) -> object:
        return json.loads(self.run(*args, "--json").stdout)

    def ls(self, level: str, keys: Sequence[str] = ()) -> list[dict]:
        argv: list[str] = ["ls", level]
        for k in keys:
            argv += ["-k", k]
        result = self.json(*argv)
        assert isinstance(result, list)
        return result


# The archive's backends, for the tests that run on each: the embedded default, and the
# shared ones several nodes run on (README: S3 and PostgreSQL).
BACKENDS = ["packs+lmdb", "s3+postgresql"]


def backend_sections(request: pytest.FixtureRequest) -> dict[str, dict]:
    """The configuration tables of the backend ``request.param`` names (one of ``BACKENDS``):
    none for the default; else a prefix of its own in the session's SeaweedFS and a new
    database on its PostgreSQL."""
    if request.param == "packs+lmdb":
        return {}
    seaweedfs = request.getfixturevalue("seaweedfs")
    postgresql = request.getfixturevalue("postgresql")
    return {
        "storage": {**seaweedfs.storage(), "node": 1},
        "index": {"backend": "postgresql", "url": postgresql.database()},
    }


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "archive", tmp_path)
