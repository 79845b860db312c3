"""Ingest benchmark: DCMTK's storescu against dicomvault and its peers, in one run.

For each corpus (CT 512x512x16, small ~10 KB instances, one large multi-frame) and each
concurrency (1 and 4 associations, TCP_NODELAY=1 exported for DCMTK), every server is started
fresh, fed by storescu, stopped, and measured: instances/s, MB/s, server CPU seconds and peak
RSS (from wait4 on the server process), medians of ``runs`` runs. The servers: dicomvault
serve (sync = always: every instance durable before its success), DCMTK's storescp writing
files (--fork, so it too serves associations in parallel), Orthanc with its default SQLite
index (when installed) and pynetdicom's storescp app. Each run starts with nothing dirty in
the page cache (``sync``), so that no run pays for the writeback of another. Also measured in
the same run: the disk (dd with fdatasync) and a loopback socket transfer, the machine's
limits.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dicomvault.bench.corpus import ct_corpus, multiframe_instance, small_corpus
from dicomvault.bench.peers import (
    DCMTK,
    PEER_ENV,
    DcmtkStorescp,
    Dicomvault,
    Orthanc,
    Peer,
    PynetdicomStorescp,
)


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


def store(
    peer: Peer,
    files: list[Path],
    associations: int,
    port: int = 0,
    options: tuple[str, ...] = (),
) -> float:
    """Sends ``files`` over ``associations`` concurrent storescu runs (to ``port``, else the
    peer's, with storescu's ``options``); returns wall seconds."""
    groups = [files[i::associations] for i in range(associations)]
    errors: list[str] = []

    def run(group: list[Path]) -> None:
        argv = [
            str(DCMTK / "storescu"),
            "-aet",
            "BENCH",
            "-aec",
            peer.aet,
            *options,
            "127.0.0.1",
            str(port or peer.port),
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
    config: Path | None = None,
    report: Callable[[str], None] = print,
) -> list[Row]:
    peers: list[Peer] = [Dicomvault(config=config), DcmtkStorescp(), PynetdicomStorescp()]
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
                        # What the previous run left dirty in the page cache (storescp and
                        # Orthanc do not fsync) is written back now, not during this run.
                        os.sync()
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
