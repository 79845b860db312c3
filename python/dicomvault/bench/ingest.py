"""Ingest benchmark: DCMTK's storescu against dicomvault and its peers, in one run.

For each corpus (CT 512x512x16, small ~10 KB instances, one large multi-frame) and each
concurrency (1 and 4 associations, TCP_NODELAY=1 exported for DCMTK), every server is started
fresh, fed by storescu, stopped, and measured: instances/s, MB/s, server CPU seconds and peak
RSS (from wait4 on the server process), medians of ``runs`` runs. The servers: dicomvault
serve (sync = always: every instance durable before its success), DCMTK's storescp writing
files (--fork, so it too serves associations in parallel), Orthanc with its default SQLite
index (when installed) and pynetdicom's storescp app. Also measured in the same run: the
disk (dd with fdatasync) and a loopback socket transfer, the machine's limits.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dicomvault.bench.corpus import ct_corpus, multiframe_instance, small_corpus

DCMTK = Path("/usr/bin")
PEER_ENV = {**os.environ, "TCP_NODELAY": "1"}


@dataclass
class Measurement:
    seconds: float
    cpu: float
    rss_mb: float


@dataclass
class Row:
    server: str
    corpus: str
    associations: int
    instances: int
    megabytes: float
    runs: list[Measurement] = field(default_factory=list)

    def median(self, attribute: str) -> float:
        return statistics.median(getattr(m, attribute) for m in self.runs)

    @property
    def per_second(self) -> float:
        return self.instances / self.median("seconds")

    @property
    def mb_per_second(self) -> float:
        return self.megabytes / self.median("seconds")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


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

    def command(self, workdir: Path, port: int) -> list[str]:
        raise NotImplementedError

    def start(self, workdir: Path) -> int:
        self.port = free_port()
        self.log = (workdir / "server.log").open("w")
        self.proc = subprocess.Popen(
            self.command(workdir, self.port),
            cwd=workdir,
            env=PEER_ENV,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, self.proc)
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
    name = "dicomvault"
    aet = "DICOMVAULT"

    def command(self, workdir: Path, port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "dicomvault",
            "serve",
            "--root",
            str(workdir / "archive"),
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
    name = "orthanc"
    aet = "ORTHANC"

    def command(self, workdir: Path, port: int) -> list[str]:
        config = {
            "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "index"),
            "DicomAet": "ORTHANC",
            "DicomPort": port,
            "HttpPort": free_port(),
            "Plugins": [],
            "RemoteAccessAllowed": False,
            "DicomAlwaysAllowStore": True,
        }
        (workdir / "orthanc.json").write_text(json.dumps(config))
        return ["Orthanc", str(workdir / "orthanc.json")]


def store(peer: Peer, files: list[Path], associations: int) -> float:
    """Sends ``files`` over ``associations`` concurrent storescu runs; returns wall seconds."""
    groups = [files[i::associations] for i in range(associations)]
    errors: list[str] = []

    def run(group: list[Path]) -> None:
        argv = [
            str(DCMTK / "storescu"),
            "-aet",
            "BENCH",
            "-aec",
            peer.aet,
            "127.0.0.1",
            str(peer.port),
            *map(str, group),
        ]
        result = subprocess.run(argv, env=PEER_ENV, capture_output=True, text=True)
        if result.returncode != 0:
            errors.append(result.stderr[-2000:])

    threads = [threading.Thread(target=run, args=(g,)) for g in groups if g]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"storescu to {peer.name} failed:\n{errors[0]}")
    return elapsed


def disk_mb_per_second(directory: Path, megabytes: int = 1024) -> float:
    target = directory / "dd.bin"
    started = time.perf_counter()
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={megabytes}", "conv=fdatasync"],
        check=True,
        capture_output=True,
    )
    elapsed = time.perf_counter() - started
    target.unlink()
    return megabytes * 1.048576 / elapsed


def loopback_mb_per_second(megabytes: int = 2048) -> float:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    chunk = b"\0" * (1 << 20)

    def sink() -> None:
        conn, _ = server.accept()
        with conn:
            while conn.recv_into(bytearray(1 << 20)):
                pass

    reader = threading.Thread(target=sink)
    reader.start()
    with socket.create_connection(("127.0.0.1", port)) as client:
        started = time.perf_counter()
        for _ in range(megabytes):
            client.sendall(chunk)
    reader.join()
    server.close()
    return megabytes * 1.048576 / (time.perf_counter() - started)


def corpora(cache: Path, quick: bool) -> dict[str, list[Path]]:
    """The benchmark corpora, generated once into ``cache``."""
    sizes = {"CT 0.5 MB": 100 if quick else 1000, "small 10 KB": 500 if quick else 5000}
    made: dict[str, list[Path]] = {}
    for name, count in sizes.items():
        folder = cache / f"{name.split()[0].lower()}-{count}"
        marker = folder / ".complete"
        if not marker.exists():
            shutil.rmtree(folder, ignore_errors=True)
            generate = ct_corpus if name.startswith("CT") else small_corpus
            generate(folder, count)
            marker.touch()
        made[name] = sorted(p for p in folder.rglob("*.dcm"))
    size_mb = 50 if quick else 500
    large = cache / f"multiframe-{size_mb}mb.dcm"
    if not large.exists():
        multiframe_instance(cache, size_mb=size_mb)
    made[f"multi-frame {size_mb} MB"] = [large]
    return made


def run(
    cache: Path,
    work: Path,
    runs: int = 3,
    quick: bool = False,
    servers: list[str] | None = None,
    report: Callable[[str], None] = print,
) -> list[Row]:
    peers: list[Peer] = [Dicomvault(), DcmtkStorescp(), PynetdicomStorescp()]
    if shutil.which("Orthanc"):
        peers.insert(2, Orthanc())
    if servers:
        peers = [p for p in peers if p.name in servers]
    report(
        f"disk (dd, fdatasync): {disk_mb_per_second(work):.0f} MB/s; "
        f"loopback TCP: {loopback_mb_per_second():.0f} MB/s"
    )
    rows: list[Row] = []
    for corpus_name, files in corpora(cache, quick).items():
        megabytes = sum(f.stat().st_size for f in files) / 1e6
        for associations in (1, 4):
            if len(files) < associations:
                continue
            for peer in peers:
                row = Row(peer.name, corpus_name, associations, len(files), megabytes)
                for _ in range(runs):
                    with tempfile.TemporaryDirectory(dir=work) as tmp:
                        peer.start(Path(tmp))
                        try:
                            seconds = store(peer, files, associations)
                        finally:
                            cpu, rss = peer.stop()
                    row.runs.append(Measurement(seconds, cpu, rss))
                rows.append(row)
                report(format_row(row, rows))
    return rows


def format_row(row: Row, rows: list[Row]) -> str:
    ours = next(
        (
            r
            for r in rows
            if r.server == "dicomvault"
            and r.corpus == row.corpus
            and r.associations == row.associations
        ),
        None,
    )
    ratio = ""
    if ours is not None and row.server != "dicomvault":
        ratio = f"  dicomvault/{row.server}: {ours.mb_per_second / row.mb_per_second:.2f}x"
    return (
        f"{row.corpus:<22} {row.associations} assoc  {row.server:<11} "
        f"{row.per_second:8.0f} inst/s {row.mb_per_second:7.1f} MB/s  "
        f"cpu {row.median('cpu'):6.2f} s  rss {row.median('rss_mb'):6.0f} MB{ratio}"
    )


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="storescu -> server ingest benchmark")
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "dicomvault-bench"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small corpora, for a smoke run")
    parser.add_argument("--server", action="append", help="only these servers (repeatable)")
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.cache) as work:
        run(args.cache, Path(work), args.runs, args.quick, args.server)


if __name__ == "__main__":
    main()
