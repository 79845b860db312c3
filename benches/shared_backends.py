"""CT ingest on the shared backends against the embedded default, on this one machine:
DCMTK's storescu (1 and 4 associations) into `dicomvault serve` on local packs + LMDB (the
default), into one node on S3 (SeaweedFS) + PostgreSQL, and into two nodes sharing them (the
associations split between the nodes). Every figure in the same run, each into a fresh
archive (a new bucket prefix and database): instances/s, the ratios, and CPU per instance —
the nodes' plus SeaweedFS's and PostgreSQL's, which is what sizes a real cluster.

    python benches/shared_backends.py                       # 1000 CT, best of 3
    python benches/shared_backends.py --count 200 --runs 1  # a smoke run

PostgreSQL runs durable (fsync, synchronous commits) and the archive with `sync = always`,
so that both sides acknowledge only what is on disk; SeaweedFS (`weed mini`) writes its
volumes without fsync, which favours the S3 rows.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dicomvault.bench.corpus import ct_corpus
from dicomvault.bench.engines import PostgreSQL, SeaweedFs
from dicomvault.bench.ingest import send
from dicomvault.bench.peers import Dicomvault


@dataclass
class Row:
    name: str
    associations: int
    rate: float  # instances/s
    cpu_ms: dict[str, float]  # per instance: the nodes', PostgreSQL's, SeaweedFS's


def corpus(work: Path, count: int) -> list[Path]:
    folder = work / f"ct-{count}"
    if not (folder / ".complete").exists():
        ct_corpus(folder, count)
        (folder / ".complete").touch()
    return sorted(folder.rglob("*.dcm"))


def toml(sections: dict[str, dict]) -> str:
    return "".join(
        f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())
        for name, table in sections.items()
    )


def ingest(
    files: list[Path],
    nodes: list[dict[str, dict]],
    associations: int,
    engines_cpu: Callable[[], dict[str, float]],
) -> tuple[float, dict[str, float]]:
    """Sends ``files`` over ``associations`` storescu runs split between ``nodes`` (each its
    configuration tables), each node a fresh server; instances/s, and CPU ms per instance of
    the nodes and of each engine."""
    with tempfile.TemporaryDirectory() as tmp:
        peers = []
        for i, sections in enumerate(nodes):
            workdir = Path(tmp) / f"node{i}"
            workdir.mkdir()
            config = workdir / "base.toml"
            config.write_text(toml({"storage": {"sync": "always"}, **sections}))
            peer = Dicomvault(config=config)
            peer.start(workdir)
            peers.append(peer)
        before = engines_cpu()
        shares = [files[i :: len(peers)] for i in range(len(peers))]
        per_node = max(1, associations // len(peers))
        with ThreadPoolExecutor(len(peers)) as pool:
            sent = list(pool.map(lambda p, f: send(p, f, per_node), peers, shares))
        after = engines_cpu()
        cpu = {"nodes": sum(peer.stop()[0] for peer in peers)}
        cpu |= {engine: after[engine] - before[engine] for engine in after}
    seconds = max(s.seconds for s in sent)
    return len(files) / seconds, {k: v * 1e3 / len(files) for k, v in cpu.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="CT instances sent")
    parser.add_argument("--runs", type=int, default=3, help="runs per row (the best is kept)")
    parser.add_argument("--work", type=Path, default=Path("dicomvault-bench"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    files = corpus(args.work, args.count)
    pg = PostgreSQL(durable=True).start()
    s3 = SeaweedFs().start()
    try:

        def shared(node_numbers: list[int]) -> list[dict[str, dict]]:
            url, storage = pg.database(), s3.storage()
            index = {"backend": "postgresql", "url": url}
            return [{"storage": {**storage, "node": n}, "index": index} for n in node_numbers]

        def engines_cpu() -> dict[str, float]:
            return {"postgresql": pg.cpu_seconds(), "seaweedfs": s3.cpu_seconds()}

        setups: list[tuple[str, Callable[[], list[dict[str, dict]]], list[int]]] = [
            ("local packs + LMDB", lambda: [{}], [1, 4]),
            ("S3 + PostgreSQL, 1 node", lambda: shared([1]), [1, 4]),
            ("S3 + PostgreSQL, 2 nodes", lambda: shared([1, 2]), [4]),
        ]
        rows = []
        for name, nodes, counts in setups:
            for associations in counts:
                runs = [ingest(files, nodes(), associations, engines_cpu) for _ in range(args.runs)]
                rate, cpu = max(runs, key=lambda run: run[0])
                rows.append(Row(name, associations, rate, cpu))
                parts = ", ".join(f"{k} {v:.2f}" for k, v in cpu.items() if v > 0)
                print(
                    f"{name:26} {associations} assoc: {rate:7.1f} inst/s, "
                    f"{sum(cpu.values()):6.2f} ms CPU/inst ({parts})"
                )
    finally:
        s3.stop()
        pg.stop()
    rate = {(r.name, r.associations): r.rate for r in rows}
    local, one, two = (s[0] for s in setups)
    print(f"\n{len(files)} CT instances, best of {args.runs}")
    for associations in (1, 4):
        ratio = rate[(one, associations)] / rate[(local, associations)]
        print(f"S3 + PostgreSQL / local default, {associations} assoc: {ratio:.2f}x")
    print(f"2 nodes / 1 node on S3 + PostgreSQL, 4 assoc: {rate[(two, 4)] / rate[(one, 4)]:.2f}x")


if __name__ == "__main__":
    main()
