"""DICOMweb latency against Orthanc's DICOMweb plugin (Debian: orthanc-dicomweb), both holding
the same generated instances: QIDO-RS study searches (PatientName prefix, StudyDate range) and
WADO-RS retrieval of single frames of a multi-frame instance; p50 and p95 of each, client-side
wall time over HTTP keep-alive.

    python benches/dicomweb_vs_orthanc.py [--instances 100000] [--requests 100]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from dicomvault.bench.corpus import multiframe_instance, small_corpus
from dicomvault.bench.ingest import store
from dicomvault.bench.peers import Dicomvault, Orthanc, free_port

PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def timed(client: httpx.Client, urls: list[str]) -> tuple[float, float]:
    times = []
    for url in urls:
        started = time.perf_counter()
        response = client.get(url, headers={"Accept": "*/*"})
        times.append((time.perf_counter() - started) * 1e3)
        if response.status_code != 200:
            raise RuntimeError(f"{url}: {response.status_code} {response.text[:200]}")
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = small_corpus(work / "corpus", args.instances)
        frames = multiframe_instance(work, size_mb=25)
        files = [g.path for g in corpus] + [frames.path]
        http_port = free_port()
        config = work / "dicomvault.toml"
        config.write_text(f'[http]\nenabled = true\nhost = "127.0.0.1"\nport = {http_port}\n')
        ours = Dicomvault(config=config)
        theirs = Orthanc(options={"Plugins": [PLUGIN], "DicomWeb": {"Enable": True}})
        rng = random.Random(1)
        studies = sorted({g.study_instance_uid for g in corpus})
        figures: dict[str, dict[str, tuple[float, float]]] = {}
        for peer, base in ((ours, f"http://127.0.0.1:{http_port}/dicom-web"), (theirs, "")):
            (work / peer.name).mkdir()
            peer.start(work / peer.name)
            try:
                store(peer, files, 4)
                if peer is theirs:
                    base = f"http://127.0.0.1:{theirs.http_port}/dicom-web"
                frame_url = (
                    f"{base}/studies/{frames.study_instance_uid}/series/"
                    f"{frames.series_instance_uid}/instances/{frames.sop_instance_uid}/frames/"
                )
                names = [
                    f"{base}/studies?PatientName=Bench^small{rng.randrange(97)}*"
                    for _ in range(args.requests)
                ]
                years = [rng.randrange(2010, 2025) for _ in range(args.requests)]
                ranges = [f"{base}/studies?StudyDate={y}0101-{y}0131" for y in years]
                frame_urls = [
                    f"{frame_url}{rng.randrange(1, frames.number_of_frames + 1)}"
                    for _ in range(args.requests)
                ]
                with httpx.Client(timeout=120) as client:
                    timed(client, names[:5] + frame_urls[:5])  # warm both
                    figures[peer.name] = {
                        "QIDO studies, PatientName prefix": timed(client, names),
                        "QIDO studies, StudyDate range": timed(client, ranges),
                        "WADO-RS one frame (512x512x16)": timed(client, frame_urls),
                    }
            finally:
                peer.stop()
        print(f"{len(files)} instances ({len(studies)} studies), {args.requests} requests each")
        for what in figures["dicomvault"]:
            (p50, p95), (o50, o95) = figures["dicomvault"][what], figures["orthanc"][what]
            print(
                f"{what:<34} dicomvault p50 {p50:7.2f} ms p95 {p95:7.2f}   "
                f"orthanc p50 {o50:7.2f} ms p95 {o95:7.2f}   {o50 / p50:5.1f}x faster"
            )


if __name__ == "__main__":
    sys.exit(main())
