"""C-FIND at scale over the network: DCMTK's findscu asks STUDY-level queries of ``dicomvault
serve`` on an archive whose index holds a million synthetic instances.

The latency is the server's own figure for each request, from the C-FIND-RQ received to the
final response sent, as its per-request log line reports it; p50 and p95 per kind of query
(PatientName prefix wildcard, a StudyDate range holding ~10 studies, AccessionNumber,
PatientID). The index is generated straight into the archive (no packs behind it: C-FIND reads
only the index).
"""

from __future__ import annotations

import random
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from dicomvault.bench.peers import DCMTK, PEER_ENV, Dicomvault
from dicomvault.bench.synthetic import commit_all, queries
from dicomvault.config import load
from dicomvault.index.backends import open_index
from dicomvault.store.backends import storage_identity

CALLER = "BENCH"
RETURN_KEYS = [
    "StudyInstanceUID",
    "StudyDate",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedInstances",
]
_DURATION = re.compile(r"C-FIND from \S+: status 0x0000 in ([0-9.]+) ms")


def fill(root: Path, instances: int, config: Path | None, report: Callable[[str], None]) -> None:
    """Generates ``instances`` into the index of the archive at ``root``, on the backend
    ``config`` names (LMDB under the root, or PostgreSQL; kept for the next run). An index
    that holds them already is left as it is — asked, not remembered beside the root: a
    PostgreSQL database may be another, or empty, since."""
    settings = load(config, root=root)
    index = open_index(settings, store=storage_identity(settings))
    try:
        if index.stats()["instances"] >= instances:
            return
        started = time.perf_counter()
        commit_all(index, 0, instances, batch=5000)  # what is there already stays, once
    finally:
        index.close()
    report(f"index of {instances:,} instances generated in {time.perf_counter() - started:.0f} s")


def findscu(port: int, filters: dict[str, str]) -> None:
    keys = [f"{k}={v}" for k, v in filters.items()]
    keys += [k for k in RETURN_KEYS if k not in filters]  # a later bare -k would blank it
    argv = [str(DCMTK / "findscu"), "-S", "-aet", CALLER, "-aec", Dicomvault.aet]
    argv += ["127.0.0.1", str(port), "-k", "QueryRetrieveLevel=STUDY"]
    for key in keys:
        argv += ["-k", key]
    subprocess.run(argv, env=PEER_ENV, capture_output=True, check=True)


def run(
    work: Path,
    instances: int = 1_000_000,
    count: int = 100,
    config: Path | None = None,
    report: Callable[[str], None] = print,
) -> dict[str, tuple[float, float]]:
    """Asks ``count`` queries of each kind; returns {kind: (p50 ms, p95 ms)}."""
    root = work / f"find-{instances}"
    root.mkdir(parents=True, exist_ok=True)
    fill(root, instances, config, report)
    server = Dicomvault({CALLER: (CALLER, "127.0.0.1", 104)}, root=root, config=config)
    results: dict[str, tuple[float, float]] = {}
    rng = random.Random(1)
    (work / "find-server").mkdir(exist_ok=True)
    port = server.start(work / "find-server")
    try:
        for kind, make in queries(instances, rng).items():
            before = len(_DURATION.findall(server.log_path.read_text()))
            for _ in range(count):
                findscu(port, make())
            times = sorted(durations(server, before + count)[before:])
            p50, p95 = times[len(times) // 2], times[int(len(times) * 0.95)]
            results[kind] = (p50, p95)
            report(f"C-FIND STUDY {kind:<20} p50 {p50:6.2f} ms   p95 {p95:6.2f} ms")
    finally:
        server.stop()
    return results


def durations(server: Dicomvault, expected: int, timeout: float = 10) -> list[float]:
    """The C-FIND durations logged so far, once ``expected`` of them are there."""
    deadline = time.monotonic() + timeout
    while True:
        found = [float(ms) for ms in _DURATION.findall(server.log_path.read_text())]
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.05)
