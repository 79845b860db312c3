"""The servers benchmarks measure, each started fresh in its own directory and stopped for
its usage: dicomvault serve, DCMTK's storescp, Orthanc from Debian and pynetdicom's storescp.

A peer knows the remote AEs it must accept retrieve requests from (``modalities``: name ->
(AE title, host, port)), so that the same servers serve ingest, query and retrieve benchmarks.
"""

from __future__ import annotations

import ctypes
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


def process_tree(pid: int) -> list[int]:
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


def _rss_kb(pid: int) -> tuple[int, int]:
    """(resident, of which anonymous: heap and stacks, not mapped files such as LMDB's) KiB."""
    found = {"VmRSS:": 0, "RssAnon:": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(maxsplit=1)[0] if line else ""
            if key in found:
                found[key] = int(line.split()[1])
    except OSError:
        pass
    return found["VmRSS:"], found["RssAnon:"]


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU of ``pids`` and of their children already reaped."""
    ticks = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        # After "pid (comm) ": state is field 3; utime, stime, cutime, cstime are 14 to 17.
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks += sum(int(f) for f in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Samples the resident memory of a process tree: ``current_mb`` is the last total
    (``anonymous_mb`` the part not mapped from files), the peak the largest seen; ``pids``
    every process seen in the tree.
    (wait4's ru_maxrss would count the Python parent's pages inherited before exec.)"""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid, self.interval = pid, interval
        self.peak_kb = self.current_kb = self.anonymous_kb = 0
        self.pids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            tree = process_tree(self.pid)
            self.pids.update(tree)
            usage = [_rss_kb(p) for p in tree]
            total = sum(resident for resident, _ in usage)
            # The peak first: a reader never sees a current figure above it.
            self.peak_kb = max(self.peak_kb, total)
            self.anonymous_kb = sum(anonymous for _, anonymous in usage)
            self.current_kb = total

    @property
    def current_mb(self) -> float:
        return self.current_kb / 1024

    @property
    def anonymous_mb(self) -> float:
        return self.anonymous_kb / 1024

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kb / 1024


PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> None:
    """Makes this process the reaper of its orphaned descendants, so that the CPU time of a
    server's children its parent had not reaped when it was stopped (storescp --fork's last
    associations) is collected by ``Peer.stop`` instead of lost to init."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _reap(pids: set[int], timeout: float = 30) -> float:
    """Waits for those of ``pids`` that became this process's children (killed if still alive
    after ``timeout`` seconds); their CPU seconds."""
    cpu, waiting = 0.0, set(pids)
    deadline = time.monotonic() + timeout
    while waiting:
        for pid in list(waiting):
            try:
                done, _, usage = os.wait4(pid, os.WNOHANG)
            except ChildProcessError:
                waiting.discard(pid)
                continue
            if done:
                waiting.discard(pid)
                cpu += usage.ru_utime + usage.ru_stime
            elif time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01 if waiting else 0)
    return cpu


class Peer:
    """A storage SCP under test: ``start`` it in a fresh directory, ``stop`` returns usage."""

    name = ""
    aet = "STORESCP"

    def __init__(self, modalities: dict[str, tuple[str, str, int]] | None = None) -> None:
        self.modalities = modalities or {}

    def command(self, workdir: Path, port: int) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return PEER_ENV

    def start(self, workdir: Path, port: int = 0) -> int:
        _become_subreaper()
        self.port = port or free_port()
        self.log_path = workdir / "server.log"
        self.log = self.log_path.open("w")
        command = self.command(workdir, self.port)
        self.proc = subprocess.Popen(
            command,
            cwd=workdir,
            env=self.environment(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, self.proc, command[0])
        # What starting up cost (Python's imports are most of a second) is not the work
        # measured.
        self.startup_cpu = cpu_seconds(process_tree(self.proc.pid))
        self.sampler = RssSampler(self.proc.pid)
        return self.port

    def stop(self) -> tuple[float, float]:
        """Stops the server; returns its CPU seconds since it listened (children included) and
        its peak RSS in MB."""
        peak = self.sampler.stop()
        self.proc.send_signal(signal.SIGTERM)
        _, _, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = 0
        self.log.close()
        orphans = _reap(self.sampler.pids - {self.proc.pid})
        return usage.ru_utime + usage.ru_stime + orphans - self.startup_cpu, peak


class Dicomvault(Peer):
    """``dicomvault serve`` with the settings of ``config`` (the deployment's, so that storage
    settings such as sync and compression are measured as they will run) on ``root`` (an
    archive filled beforehand), else on a new archive. ``sync`` overrides ``[storage] sync``
    (the row is then named after it); ``build`` runs another build of dicomvault (a directory
    put first on the server's PYTHONPATH), named ``label``."""

    aet = "DICOMVAULT"

    def __init__(
        self,
        modalities: dict[str, tuple[str, str, int]] | None = None,
        root: Path | None = None,
        config: Path | None = None,
        sync: str | None = None,
        build: Path | None = None,
        label: str = "dicomvault",
    ) -> None:
        super().__init__(modalities)
        self.root = root
        self.base_config = config
        self.sync, self.build = sync, build
        self.name = f"{label} {sync}" if sync else label

    def environment(self) -> dict[str, str]:
        env = dict(PEER_ENV)
        if self.sync:
            env["DICOMVAULT_STORAGE_SYNC"] = self.sync
        if self.build:
            env["PYTHONPATH"] = str(self.build)
        return env

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
    (plugins, DICOMweb, ``orthanc_postgresql_index``); its HTTP port is ``http_port``."""

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


ORTHANC_POSTGRESQL_INDEX = Path("/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so")


def orthanc_postgresql_index(url: str, connections: int = 4) -> dict[str, object]:
    """``Orthanc`` options that put its index in the PostgreSQL database at ``url`` (Debian's
    orthanc-postgresql, plugin 4.0), a database other Orthanc processes may share; its storage
    stays on local disk. ``connections``: the plugin's pool (1 by default, which would make
    every C-STORE of an Orthanc wait for the others' index writes)."""
    return {
        "Plugins": [str(ORTHANC_POSTGRESQL_INDEX)],
        # The plugin's own lock would let only one Orthanc open the database; jobs saved in it
        # would be resumed by every Orthanc sharing it.
        "SaveJobs": False,
        "PostgreSQL": {
            "EnableIndex": True,
            "EnableStorage": False,
            "ConnectionUri": url,
            "Lock": False,
            "IndexConnectionsCount": connections,
        },
    }
