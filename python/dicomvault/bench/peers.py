"""The servers benchmarks measure, each started fresh in its own directory and stopped for
its usage: dicomvault serve, DCMTK's storescp, Orthanc from Debian and pynetdicom's storescp.

A peer knows the remote AEs it must accept retrieve requests from (``modalities``: name ->
(AE title, host, port)), so that the same servers serve ingest, query and retrieve benchmarks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

DCMTK = Path("/usr/bin")
# DCMTK and Orthanc leave Nagle on without it and stall ~40 ms per message.
PEER_ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    """Returns once ``proc`` (``what``, for errors) accepts connections on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout} s")


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (forked children of storescp --fork)."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                stack += [int(c) for c in task.read_text().split()]
            except OSError:
                continue
    return found


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler:
    """Samples the resident memory of a process tree; ``peak_mb`` is the largest total seen.
    (wait4's ru_maxrss would count the Python parent's pages inherited before exec.)"""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid, self.interval, self.peak_kb = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_kb = max(self.peak_kb, sum(_rss_kb(p) for p in _tree(self.pid)))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kb / 1024


class Peer:
    """A storage SCP under test: ``start`` it in a fresh directory, ``stop`` returns usage."""

    name = ""
    aet = "STORESCP"

    def __init__(self, modalities: dict[str, tuple[str, str, int]] | None = None) -> None:
        self.modalities = modalities or {}

    def command(self, workdir: Path, port: int) -> list[str]:
        raise NotImplementedError

    def start(self, workdir: Path, port: int = 0) -> int:
        self.port = port or free_port()
        self.log_path = workdir / "server.log"
        self.log = self.log_path.open("w")
        command = self.command(workdir, self.port)
        self.proc = subprocess.Popen(
            command, cwd=workdir, env=PEER_ENV, stdout=self.log, stderr=subprocess.STDOUT
        )
        wait_for_port(self.port, self.proc, command[0])
        self.sampler = RssSampler(self.proc.pid)
        return self.port

    def stop(self) -> tuple[float, float]:
        """Stops the server; returns its CPU seconds (children included) and peak RSS in MB."""
        peak = self.sampler.stop()
        self.proc.send_signal(signal.SIGTERM)
        _, _, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = 0
        self.log.close()
        return usage.ru_utime + usage.ru_stime, peak


class Dicomvault(Peer):
    """``dicomvault serve`` with the settings of ``config`` (the deployment's, so that storage
    settings such as sync and compression are measured as they will run) on ``root`` (an
    archive filled beforehand), else on a new archive."""

    name = "dicomvault"
    aet = "DICOMVAULT"

    def __init__(
        self,
        modalities: dict[str, tuple[str, str, int]] | None = None,
        root: Path | None = None,
        config: Path | None = None,
    ) -> None:
        super().__init__(modalities)
        self.root = root
        self.base_config = config

    def command(self, workdir: Path, port: int) -> list[str]:
        config = workdir / "dicomvault.toml"
        base = self.base_config.read_text() + "\n" if self.base_config else ""
        config.write_text(
            base
            + "".join(
                f'[modalities.{name}]\naet = "{aet}"\nhost = "{host}"\nport = {remote}\n'
                for name, (aet, host, remote) in self.modalities.items()
            )
        )
        return [
            sys.executable,
            "-m",
            "dicomvault",
            "serve",
            "--config",
            str(config),
            "--root",
            str(self.root or workdir / "archive"),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
        ]


class DcmtkStorescp(Peer):
    name = "storescp"

    def command(self, workdir: Path, port: int) -> list[str]:
        (workdir / "out").mkdir()
        return [str(DCMTK / "storescp"), "--fork", "-od", str(workdir / "out"), str(port)]


class PynetdicomStorescp(Peer):
    name = "pynetdicom"

    def command(self, workdir: Path, port: int) -> list[str]:
        (workdir / "out").mkdir()
        return [
            sys.executable,
            "-m",
            "pynetdicom",
            "storescp",
            str(port),
            "-od",
            str(workdir / "out"),
            "-q",
            "--max-pdu",
            "0",
        ]


class Orthanc(Peer):
    """Debian's Orthanc with its default SQLite index; ``options`` add to its configuration
    (plugins, DICOMweb); its HTTP port is ``http_port``."""

    name = "orthanc"
    aet = "ORTHANC"

    def __init__(
        self,
        modalities: dict[str, tuple[str, str, int]] | None = None,
        options: dict[str, object] | None = None,
    ) -> None:
        super().__init__(modalities)
        self.options = options or {}
        self.http_port = 0

    def command(self, workdir: Path, port: int) -> list[str]:
        self.http_port = free_port()
        config = {
            "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "index"),
            "DicomAet": "ORTHANC",
            "DicomPort": port,
            "HttpPort": self.http_port,
            "Plugins": [],
            "RemoteAccessAllowed": False,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {
                name: [aet, host, remote] for name, (aet, host, remote) in self.modalities.items()
            },
            **self.options,
        }
        (workdir / "orthanc.json").write_text(json.dumps(config))
        return ["Orthanc", str(workdir / "orthanc.json")]
