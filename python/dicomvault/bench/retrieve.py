"""C-GET of a study: DCMTK's getscu retrieves a 100-instance CT study from ``dicomvault serve``
and from Orthanc, each holding the same study, in the same run; instances/s per server (median
of the runs) and dicomvault's ratio to Orthanc.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pydicom

from dicomvault.bench.corpus import ct_corpus
from dicomvault.bench.ingest import store
from dicomvault.bench.peers import DCMTK, PEER_ENV, Dicomvault, Orthanc, Peer

CALLER = "BENCH"


def getscu(peer: Peer, study_uid: str, out: Path) -> float:
    """Retrieves the study into ``out``; returns wall seconds."""
    argv = [str(DCMTK / "getscu"), "-S", "-aet", CALLER, "-aec", peer.aet, "127.0.0.1"]
    argv += [str(peer.port), "-k", "QueryRetrieveLevel=STUDY"]
    argv += ["-k", f"StudyInstanceUID={study_uid}", "-od", str(out)]
    started = time.perf_counter()
    subprocess.run(argv, env=PEER_ENV, capture_output=True, check=True)
    return time.perf_counter() - started


def run(
    cache: Path,
    work: Path,
    instances: int = 100,
    runs: int = 3,
    config: Path | None = None,
    report: Callable[[str], None] = print,
) -> dict[str, float]:
    """Returns {server: instances/s}."""
    corpus = cache / f"study-{instances}"
    if not (corpus / ".complete").exists():
        shutil.rmtree(corpus, ignore_errors=True)
        ct_corpus(corpus, instances, studies=1)
        (corpus / ".complete").touch()
    files = sorted(corpus.rglob("*.dcm"))
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    bench = {CALLER: (CALLER, "127.0.0.1", 104)}
    peers: list[Peer] = [Dicomvault(bench, config=config)]
    if shutil.which("Orthanc"):
        peers.append(Orthanc(bench))
    rates: dict[str, float] = {}
    for peer in peers:
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            peer.start(Path(tmp))
            try:
                store(peer, files, 1)
                seconds = []
                for attempt in range(runs):
                    out = Path(tmp) / f"get-{attempt}"
                    out.mkdir()
                    seconds.append(getscu(peer, study_uid, out))
                    received = sum(1 for _ in out.iterdir())
                    if received != len(files):
                        raise RuntimeError(f"{peer.name} returned {received} of {len(files)}")
            finally:
                peer.stop()
        rates[peer.name] = len(files) / statistics.median(seconds)
        ratio = ""
        if peer.name != "dicomvault":
            ratio = f"  dicomvault/{peer.name}: {rates['dicomvault'] / rates[peer.name]:.2f}x"
        label = f"C-GET study of {len(files)} CT"
        report(f"{label}  {peer.name:<11} {rates[peer.name]:8.0f} inst/s{ratio}")
    return rates
