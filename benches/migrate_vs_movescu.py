"""Migration throughput, from an Orthanc holding generated CT studies: `dicomvault migrate
pacs` (C-MOVE, then C-GET; 1 and 4 retrieve associations) against the shell loops a site
would otherwise run — DCMTK's movescu per study into `dicomvault serve`, getscu per study
into a directory (and then `dicomvault import` of it) — and against a second Orthanc pulling
the same studies (its REST `/modalities/{source}/move`, one study per request). Every figure
is measured in the same run, each into a fresh archive (or directory, or Orthanc);
instances/s, and ratios. A migration is timed twice: whole (the command's wall time, Python's
start-up and the archive's opening and closing included), and from its start to its last
study verified, as its live figures (`migrate status`) say: the running Orthanc's start-up is
not counted either.

    python benches/migrate_vs_movescu.py                      # 50 x 4 and 10 x 200
    python benches/migrate_vs_movescu.py --sets 50x4 --repeat 3   # the best of 3 of each
    python benches/migrate_vs_movescu.py --sync batch   # like for like with getscu's files

getscu never fsyncs; the archive's default (`sync = always`) makes every instance durable
before its C-STORE-RSP. `--sync batch` (nothing lost on a killed process) compares like with
like.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import pydicom

from dicomvault.bench.corpus import ct_corpus
from dicomvault.bench.ingest import store
from dicomvault.bench.peers import DCMTK, PEER_ENV, Dicomvault, Orthanc, free_port

OUR_AET = "DICOMVAULT"
PULLER_AET = "PULLER"
# --parallel 4 is the command's default.
MIGRATIONS = [
    ("migrate --method move --parallel 1", "move", 1),
    ("migrate --method move --parallel 4", "move", 4),
    ("migrate --method get --parallel 1", "get", 1),
    ("migrate --method get --parallel 4", "get", 4),
]
MOVESCU = "movescu loop into dicomvault serve"
GETSCU = "getscu loop into a directory"
GETSCU_IMPORT = "getscu loop, then dicomvault import"
ORTHANC_PULL = "Orthanc pulling, REST move per study"


def dicomvault(*args: object, config: Path, root: Path) -> None:
    argv = [sys.executable, "-m", "dicomvault", *map(str, args)]
    subprocess.run(
        [*argv, "--config", str(config), "--root", str(root)],
        check=True,
        env=PEER_ENV,
        capture_output=True,
    )


def study_loop(tool: str, studies: list[str], port: int, *extra: str) -> None:
    for study in studies:
        subprocess.run(
            [
                str(DCMTK / tool),
                "-S",
                "-aet",
                OUR_AET,
                "-aec",
                "ORTHANC",
                *extra,
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                f"StudyInstanceUID={study}",
                "127.0.0.1",
                str(port),
            ],
            check=True,
            env=PEER_ENV,
            capture_output=True,
        )


def rest_move(puller: Orthanc, study: str) -> None:
    body = {
        "Level": "Study",
        "Resources": [{"StudyInstanceUID": study}],
        "TargetAet": PULLER_AET,
        "Synchronous": True,
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{puller.http_port}/modalities/source/move",
        data=json.dumps(body).encode(),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        response.read()


def measure_set(
    work: Path, studies_n: int, per_study: int, repeat: int, sync: str
) -> tuple[dict[str, float], dict[str, float]]:
    """Instances/s of every way, on a corpus of ``studies_n`` x ``per_study`` instances; and
    of each migration from its start to its end (its start-up not counted)."""
    files = [
        g.path
        for g in ct_corpus(
            work / "corpus", studies_n * per_study, rows=256, columns=256, studies=studies_n
        )
    ]
    studies = sorted(
        {str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files}
    )
    port, puller_port = free_port(), free_port()
    source = Orthanc(
        {
            OUR_AET: (OUR_AET, "127.0.0.1", port),
            PULLER_AET: (PULLER_AET, "127.0.0.1", puller_port),
        }
    )
    (work / "orthanc").mkdir()
    source.start(work / "orthanc")
    runs = 0

    def timed(
        step: Callable[[Path], None],
        around: Callable[[Path], AbstractContextManager[object]] = lambda _: nullcontext(),
        times: int = repeat,
    ) -> float:
        """The best instances/s of ``times`` runs of ``step(fresh directory)``, each inside
        ``around(fresh directory)`` (a server started and stopped outside the timing), each
        after what earlier runs wrote reached the disk (its writeback would weigh on the
        later ones only)."""
        nonlocal runs
        best = 0.0
        for _ in range(times):
            runs += 1
            fresh = work / f"run-{runs}"
            fresh.mkdir()
            with around(fresh):
                os.sync()
                started = time.perf_counter()
                step(fresh)
                best = max(best, len(files) / (time.perf_counter() - started))
        return best

    figures: dict[str, float] = {}
    working: dict[str, float] = {}
    try:
        store(source, files, 1)
        config = work / "dicomvault.toml"
        config.write_text(
            f'[dicom]\naet = "{OUR_AET}"\nhost = "127.0.0.1"\nport = {port}\n'
            f'[storage]\nsync = "{sync}"\n'
            f'[modalities.pacs]\naet = "ORTHANC"\nhost = "127.0.0.1"\nport = {source.port}\n'
        )
        # The migrations in turn, repeat after repeat: none always runs after the others.
        for label, method, parallel in [m for _ in range(repeat) for m in MIGRATIONS]:

            def migrate(
                fresh: Path, m: str = method, p: int = parallel, label: str = label
            ) -> None:
                dicomvault(
                    "migrate",
                    "pacs",
                    "pacs",
                    "--method",
                    m,
                    "--parallel",
                    p,
                    config=config,
                    root=fresh / "archive",
                )
                live = json.loads((fresh / "archive/migrate/live-pacs.json").read_text())
                rate = live["instances"] / (live["finished"] - live["started"])
                working[label] = max(working.get(label, 0.0), rate)

            figures[label] = max(figures.get(label, 0.0), timed(migrate, times=1))

        @contextmanager
        def serving(fresh: Path) -> Iterator[None]:
            server = Dicomvault(root=fresh / "archive", config=config)
            server.start(fresh, port)
            try:
                yield
            finally:
                server.stop()

        figures[MOVESCU] = timed(
            lambda _: study_loop("movescu", studies, source.port, "-aem", OUR_AET), serving
        )
        figures[GETSCU] = timed(
            lambda fresh: study_loop("getscu", studies, source.port, "-od", str(fresh))
        )

        def getscu_import(fresh: Path) -> None:
            # What the loop leaves is files: into an archive (fsynced, indexed) as migrate does.
            (fresh / "files").mkdir()
            study_loop("getscu", studies, source.port, "-od", str(fresh / "files"))
            dicomvault("import", fresh / "files", config=config, root=fresh / "archive")

        figures[GETSCU_IMPORT] = timed(getscu_import)

        def pull(fresh: Path) -> None:
            for study in studies:
                rest_move(puller, study)

        puller = Orthanc({"source": ("ORTHANC", "127.0.0.1", source.port)})
        puller.options = {"DicomAet": PULLER_AET}
        (work / "puller").mkdir()
        puller.start(work / "puller", puller_port)
        try:
            figures[ORTHANC_PULL] = timed(pull)
        finally:
            puller.stop()
    finally:
        source.stop()
    return figures, working


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="50x4,10x200", help="STUDIESxINSTANCES, comma-separated")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the best counts")
    parser.add_argument(
        "--sync", default="always", choices=("always", "batch"), help="the archive's [storage] sync"
    )
    args = parser.parse_args()
    results = []
    for spec in args.sets.split(","):
        studies_n, per_study = map(int, spec.split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            figures, working = measure_set(Path(tmp), studies_n, per_study, args.repeat, args.sync)
        results.append((studies_n, per_study, figures, working))
    for studies_n, per_study, figures, working in results:
        print(
            f"\n{studies_n} studies x {per_study} instances (256x256 CT), Orthanc as the source,"
            f" sync = {args.sync}"
        )
        movescu, getscu, pull = figures[MOVESCU], figures[GETSCU], figures[ORTHANC_PULL]
        for label, rate in figures.items():
            versus = f"{rate / movescu:5.2f}x movescu  {rate / getscu:5.2f}x getscu"
            print(f"{label:<38} {rate:7.1f} instances/s  {versus}  {rate / pull:5.2f}x Orthanc")
        for label, rate in working.items():
            print(
                f"{label + ', start-up not counted':<58} {rate:7.1f} instances/s  "
                f"{rate / pull:5.2f}x Orthanc"
            )
        for method in ("move", "get"):
            one = figures[f"migrate --method {method} --parallel 1"]
            four = figures[f"migrate --method {method} --parallel 4"]
            print(f"--method {method}: --parallel 4 is {four / one:.2f}x --parallel 1")


if __name__ == "__main__":
    main()
