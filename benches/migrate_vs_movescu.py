"""Migration throughput: `dicomvault migrate pacs` (C-MOVE, then C-GET; 1 and 4 studies at
once) against DCMTK's movescu moving the same studies one by one into `dicomvault serve`,
from an Orthanc holding generated studies. Each figure is a fresh archive; instances/s.

    python benches/migrate_vs_movescu.py [--studies 50] [--per-study 4]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom

from dicomvault.bench.corpus import ct_corpus
from dicomvault.bench.ingest import store
from dicomvault.bench.peers import DCMTK, PEER_ENV, Dicomvault, Orthanc, free_port

OUR_AET = "DICOMVAULT"


def dicomvault(*args: object, config: Path, root: Path) -> None:
    argv = [sys.executable, "-m", "dicomvault", *map(str, args)]
    subprocess.run([*argv, "--config", str(config), "--root", str(root)], check=True, env=PEER_ENV)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=50)
    parser.add_argument("--per-study", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files = [
            g.path
            for g in ct_corpus(
                work / "corpus",
                args.studies * args.per_study,
                rows=256,
                columns=256,
                studies=args.studies,
            )
        ]
        studies = sorted(
            {str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files}
        )
        port = free_port()
        source = Orthanc({OUR_AET: (OUR_AET, "127.0.0.1", port)})
        (work / "orthanc").mkdir()
        source.start(work / "orthanc")
        try:
            store(source, files, 1)
            config = work / "dicomvault.toml"
            config.write_text(
                f'[dicom]\naet = "{OUR_AET}"\nhost = "127.0.0.1"\nport = {port}\n'
                f'[modalities.pacs]\naet = "ORTHANC"\nhost = "127.0.0.1"\nport = {source.port}\n'
            )
            figures = {}
            for label, method, parallel in [
                ("migrate --method move", "move", 1),
                ("migrate --method move --parallel 4", "move", 4),
                ("migrate --method get", "get", 1),
                ("migrate --method get --parallel 4", "get", 4),
            ]:
                root = work / f"archive-{method}-{parallel}"
                started = time.perf_counter()
                dicomvault(
                    "migrate",
                    "pacs",
                    "pacs",
                    "--method",
                    method,
                    "--parallel",
                    parallel,
                    config=config,
                    root=root,
                )
                figures[label] = len(files) / (time.perf_counter() - started)
            server = Dicomvault(root=work / "archive-movescu", config=config)
            (work / "serve").mkdir()
            server.start(work / "serve", port)
            started = time.perf_counter()
            for study in studies:
                subprocess.run(
                    [
                        str(DCMTK / "movescu"),
                        "-S",
                        "-aec",
                        "ORTHANC",
                        "-aem",
                        OUR_AET,
                        "-k",
                        "QueryRetrieveLevel=STUDY",
                        "-k",
                        f"StudyInstanceUID={study}",
                        "127.0.0.1",
                        str(source.port),
                    ],
                    check=True,
                    env=PEER_ENV,
                    capture_output=True,
                )
            figures["movescu per study into dicomvault serve"] = len(files) / (
                time.perf_counter() - started
            )
            server.stop()
        finally:
            source.stop()
        base = figures["movescu per study into dicomvault serve"]
        print(f"{len(studies)} studies, {len(files)} instances (256x256 CT), Orthanc as the source")
        for label, rate in figures.items():
            print(f"{label:<42} {rate:7.1f} instances/s  {rate / base:5.2f}x movescu")


if __name__ == "__main__":
    main()
