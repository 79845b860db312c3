"""Crash campaign: `dicomvault serve` SIGKILLed at random moments while it takes C-STOREs on 4
associations, an import (another process on the same archive) and STOW-RS at once; and, every
few rounds, a gc, repack, reindex or delete killed half-way. After each round the archive is
opened again and checked: every acknowledged instance is there and bit-exact, nothing is
indexed twice, and `verify` is clean.

    python benches/crash_campaign.py [--rounds 50] [--seed 1] [--work DIR]

Acknowledged means: a C-STORE answered Success (storescu), an import report line (written
once the instance is durable), a STOW-RS response naming the instance.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from dicomvault.bench.corpus import GeneratedInstance, small_corpus
from dicomvault.bench.peers import DCMTK, PEER_ENV, free_port, wait_for_port

# Fresh instances each round, by source.
PER_ASSOCIATION, PER_IMPORT, PER_STOW = 150, 150, 60
MAINTENANCE = ("gc", "repack", "reindex", "delete")


@dataclass
class Tally:
    rounds: int = 0
    acknowledged: int = 0
    lost: list[str] = field(default_factory=list)
    altered: list[str] = field(default_factory=list)
    double_indexed: int = 0
    verify_failures: list[str] = field(default_factory=list)
    kills: dict[str, int] = field(default_factory=dict)


def dataset_bytes(data: bytes) -> bytes:
    """A Part 10 file's data set: what a C-STORE or STOW-RS carries unchanged."""
    meta_length = int.from_bytes(data[140:144], "little")
    return data[144 + meta_length :]


class Campaign:
    def __init__(self, work: Path, seed: int) -> None:
        self.work = work
        self.root = work / "archive"
        self.rng = random.Random(seed)
        self.port, self.http_port = free_port(), free_port()
        self.config = work / "dicomvault.toml"
        self.config.write_text(
            f'[archive]\nroot = "{self.root}"\n'
            f'[dicom]\nhost = "127.0.0.1"\nport = {self.port}\n'
            f'[http]\nenabled = true\nhost = "127.0.0.1"\nport = {self.http_port}\n'
        )
        # Every acknowledged instance: SOP Instance UID -> the data set it must hold.
        self.expected: dict[str, bytes] = {}
        self.tally = Tally()

    # Processes -----------------------------------------------------------------------------

    def command(self, *args: object) -> list[str]:
        return [sys.executable, "-m", "dicomvault", *map(str, args), "--config", str(self.config)]

    def serve(self) -> subprocess.Popen:
        log = (self.work / "serve.log").open("a")
        proc = subprocess.Popen(
            self.command("serve"), stdout=log, stderr=subprocess.STDOUT, env=PEER_ENV
        )
        wait_for_port(self.http_port, proc, "dicomvault serve")
        wait_for_port(self.port, proc, "dicomvault serve")
        return proc

    def kill_after(self, proc: subprocess.Popen, low: float, high: float, what: str) -> None:
        time.sleep(self.rng.uniform(low, high))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            self.tally.kills[what] = self.tally.kills.get(what, 0) + 1
        proc.wait()

    # Writers -------------------------------------------------------------------------------

    def storescu(self, batch: list[GeneratedInstance], acked: list[GeneratedInstance]) -> None:
        result = subprocess.run(
            [str(DCMTK / "storescu"), "-v", "-nh", "-aec", "DICOMVAULT", "-xe",
             "127.0.0.1", str(self.port), *[str(g.path) for g in batch]],
            capture_output=True, text=True, env=PEER_ENV, check=False,
        )  # fmt: skip
        by_path = {str(g.path): g for g in batch}
        sending = None
        for line in result.stderr.splitlines():
            if line.startswith("I: Sending file: "):
                sending = by_path.get(line.removeprefix("I: Sending file: ").strip())
            elif "Received Store Response (Success)" in line and sending is not None:
                acked.append(sending)
                sending = None

    def importer(self, batch: list[GeneratedInstance], report: Path) -> subprocess.Popen:
        folder = self.work / f"import-{uuid.uuid4().hex}"
        folder.mkdir()
        for g in batch:
            (folder / g.path.name).hardlink_to(g.path)
        return subprocess.Popen(
            self.command("import", folder, "--quiet", "--report", report),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stow(self, batch: list[GeneratedInstance], acked: list[GeneratedInstance]) -> None:
        url = f"http://127.0.0.1:{self.http_port}/dicom-web/studies"
        with httpx.Client(timeout=30) as client:
            for g in batch:
                boundary = uuid.uuid4().hex
                body = (
                    f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                    + g.path.read_bytes()
                    + f"\r\n--{boundary}--\r\n".encode()
                )
                headers = {
                    "Content-Type": f'multipart/related; type="application/dicom"; '
                    f"boundary={boundary}"
                }
                try:
                    response = client.post(url, content=body, headers=headers)
                except httpx.HTTPError:
                    return  # the server is gone
                if response.status_code == 200 and g.sop_instance_uid in response.text:
                    acked.append(g)

    # Rounds --------------------------------------------------------------------------------

    def ingest_round(self, pool: list[GeneratedInstance]) -> None:
        server = self.serve()
        batches = [pool[i * PER_ASSOCIATION : (i + 1) * PER_ASSOCIATION] for i in range(4)]
        rest = pool[4 * PER_ASSOCIATION :]
        to_import, to_stow = rest[:PER_IMPORT], rest[PER_IMPORT : PER_IMPORT + PER_STOW]
        acked: list[GeneratedInstance] = []
        report = self.work / f"report-{uuid.uuid4().hex}.jsonl"
        threads = [threading.Thread(target=self.storescu, args=(b, acked)) for b in batches]
        threads.append(threading.Thread(target=self.stow, args=(to_stow, acked)))
        importing = self.importer(to_import, report)
        for t in threads:
            t.start()
        killer = threading.Thread(target=self.kill_after, args=(importing, 0.2, 2.0, "import"))
        killer.start()
        self.kill_after(server, 0.1, 1.0, "serve during ingest")
        for t in [*threads, killer]:
            t.join()
        by_path = {str(g.path.name): g for g in to_import}
        if report.exists():
            for line in report.read_text().splitlines():
                outcome = json.loads(line)
                if outcome["status"] in ("stored", "duplicate"):
                    acked.append(by_path[Path(outcome["path"]).name])
        for g in acked:
            self.expected[g.sop_instance_uid] = dataset_bytes(g.path.read_bytes())
        self.tally.acknowledged += len(acked)

    def maintenance_round(self, kind: str) -> None:
        if kind == "repack":
            server = self.serve()
            repacking = subprocess.Popen(
                self.command("migrate", "repack", "--compression", "zstd"),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            self.kill_after(server, 0.1, 1.0, "serve during repack")
            repacking.wait()
            return
        if kind == "delete":
            server = self.serve()
            victim = self.rng.choice(sorted(self.expected))
            deleting = subprocess.run(
                self.command("delete", victim, "--yes"), capture_output=True, check=False
            )
            self.kill_after(server, 0.0, 0.5, "serve after delete")
            if deleting.returncode == 0:
                del self.expected[victim]
            return
        proc = subprocess.Popen(
            self.command(kind), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.kill_after(proc, 0.02, 0.6, kind)

    def check(self, label: str) -> None:
        """Opens the archive again and checks what it holds against what was acknowledged."""
        listed = json.loads(
            subprocess.run(
                self.command("ls", "instances", "--json"), capture_output=True, check=True
            ).stdout
        )
        keys = [r["key"] for r in listed]
        self.tally.double_indexed += len(keys) - len(set(keys))
        stats = json.loads(
            subprocess.run(self.command("stats", "--json"), capture_output=True, check=True).stdout
        )
        self.tally.double_indexed += abs(stats["instances"] - len(set(keys)))
        lost = sorted(set(self.expected) - set(keys))
        self.tally.lost += lost
        out = self.work / f"export-{uuid.uuid4().hex}"
        subprocess.run(self.command("export", "--out", out), capture_output=True, check=False)
        exported = {p.stem: dataset_bytes(p.read_bytes()) for p in out.rglob("*.dcm")}
        self.tally.altered += [
            uid for uid, data in self.expected.items() if uid in exported and exported[uid] != data
        ]
        verify = subprocess.run(self.command("verify"), capture_output=True, text=True)
        if verify.returncode != 0:
            self.tally.verify_failures.append(f"{label}: {verify.stdout[-300:]}")

    def run(self, rounds: int) -> Tally:
        per_round = 4 * PER_ASSOCIATION + PER_IMPORT + PER_STOW
        pool = small_corpus(self.work / "corpus", rounds * per_round)
        for r in range(rounds):
            self.ingest_round(pool[r * per_round : (r + 1) * per_round])
            self.check(f"round {r + 1}")
            if r % 5 == 4:
                kind = MAINTENANCE[(r // 5) % len(MAINTENANCE)]
                self.maintenance_round(kind)
                self.check(f"round {r + 1} ({kind})")
            self.tally.rounds += 1
            print(
                f"round {r + 1}: {self.tally.acknowledged} acknowledged so far, "
                f"{len(self.tally.lost)} lost, {len(self.tally.altered)} altered, "
                f"{len(self.tally.verify_failures)} verify failures",
                flush=True,
            )
        return self.tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", type=Path, help="Where the archive lives (default: a tmp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        tally = Campaign(Path(tmp), args.seed).run(args.rounds)
    print(json.dumps(tally.__dict__, indent=2))
    failed = tally.lost or tally.altered or tally.double_indexed or tally.verify_failures
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
