"""Scale-out: CT ingest into one and two nodes on the shared backends (S3 on SeaweedFS +
PostgreSQL) against the local default, and the same with Orthanc on PostgreSQL as the peer.

Every figure in the same run on this one machine, each into a fresh archive (a new bucket
prefix and database): DCMTK's storescu at 1 and 4 associations (split between the nodes for
the two-node rows) into

- ``dicomvault serve`` on local packs + LMDB (the default), on S3 + PostgreSQL as one node,
  and as two nodes sharing them;
- Orthanc with its default SQLite index, and with its index on PostgreSQL (Debian's
  orthanc-postgresql) as one Orthanc and as two sharing one database. Orthanc's storage stays
  on local disk, which favours it (its files are never sent over the network), and each of the
  two holds only what it received.

Per row: instances/s, the C-STORE latency p50/p99 (each C-STORE's request sent to response
received, from storescu's log timestamped to the microsecond, under the row's load) and CPU
per instance — the servers' plus that of the engines the row runs on, which is what sizes a
real cluster; optionally C-FIND p50 against an index of M synthetic instances on each of
dicomvault's index backends (``bench find``'s queries). Then the ratios issue 16 sets targets
for. PostgreSQL runs durable (fsync, synchronous commits), dicomvault with ``sync = always``
and Orthanc with its default ``SyncStorageArea``, so that every server acknowledges only what
is on disk; SeaweedFS (``weed mini``) writes its volumes without fsync, which favours the S3
rows.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dicomvault.bench import query
from dicomvault.bench.engines import PostgreSQL, SeaweedFs
from dicomvault.bench.ingest import CT, Sent, generated, send
from dicomvault.bench.peers import (
    ORTHANC_POSTGRESQL_INDEX,
    Dicomvault,
    Orthanc,
    Peer,
    orthanc_postgresql_index,
)

LOCAL = "dicomvault local"
SHARED = "dicomvault S3+PG"
ORTHANC_SQLITE = "Orthanc SQLite"
ORTHANC_PG = "Orthanc PG"
ENGINES = ("postgresql", "seaweedfs")

Tables = dict[str, dict[str, Any]]


@dataclass
class Setup:
    """One server on one set of backends, as ``nodes`` processes; ``start`` makes them, each
    with its directory, under a fresh directory."""

    name: str
    nodes: int
    associations: tuple[int, ...]
    engines: tuple[str, ...]  # whose CPU the setup is charged
    make: Callable[[Path], list[tuple[Peer, Path]]]
    index: str | None = None  # dicomvault's index backend, for the C-FIND column


@dataclass
class Row:
    setup: str
    nodes: int
    associations: int
    rate: float  # instances/s
    p50_ms: float
    p99_ms: float
    cpu_ms: dict[str, float]  # per instance: the servers' ("nodes") and each engine's
    find_p50_ms: float | None = None

    @property
    def cpu_ms_total(self) -> float:
        return sum(self.cpu_ms.values())


@dataclass
class Ratio:
    name: str
    value: float
    target: float | None

    def __str__(self) -> str:
        shown = f"{self.name}: {self.value:.2f}x"
        if self.target is not None:
            met = "met" if self.value >= self.target else "NOT met"
            shown += f" (target >= {self.target:g}x: {met})"
        return shown


@dataclass
class Result:
    instances: int
    runs: int
    find_instances: int
    rows: list[Row] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)

    def to_json(self) -> str:
        rows = [asdict(row) | {"cpu_ms_total": row.cpu_ms_total} for row in self.rows]
        ratios = [asdict(ratio) for ratio in self.ratios]
        return json.dumps(asdict(self) | {"rows": rows, "ratios": ratios}, indent=2)


def toml(sections: Tables) -> str:
    return "".join(
        f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())
        for name, table in sections.items()
    )


def node_dirs(tmp: Path, count: int) -> list[Path]:
    dirs = [tmp / f"node{i}" for i in range(count)]
    for workdir in dirs:
        workdir.mkdir()
    return dirs


def dicomvault_nodes(tmp: Path, nodes: list[Tables]) -> list[tuple[Peer, Path]]:
    """One ``dicomvault serve`` per configuration in ``nodes``, each acknowledging a C-STORE
    only once it is durable."""
    made: list[tuple[Peer, Path]] = []
    for workdir, sections in zip(node_dirs(tmp, len(nodes)), nodes, strict=True):
        storage = {"sync": "always", **sections.get("storage", {})}
        config = workdir / "base.toml"
        config.write_text(toml({**sections, "storage": storage}))
        made.append((Dicomvault(config=config), workdir))
    return made


def orthanc_nodes(tmp: Path, count: int, options: dict[str, object]) -> list[tuple[Peer, Path]]:
    """``count`` Orthanc processes with the same ``options``, each its own ports and storage."""
    return [(Orthanc(options=options), workdir) for workdir in node_dirs(tmp, count)]


def setups(pg: PostgreSQL, s3: SeaweedFs, report: Callable[[str], None]) -> list[Setup]:
    """The rows' setups, in the order they are measured and shown."""

    def shared(count: int) -> list[Tables]:
        url, storage = pg.database(), s3.storage()
        index = {"backend": "postgresql", "url": url}
        return [{"storage": {**storage, "node": n + 1}, "index": index} for n in range(count)]

    def orthanc_pg(count: int) -> Callable[[Path], list[tuple[Peer, Path]]]:
        return lambda tmp: orthanc_nodes(tmp, count, orthanc_postgresql_index(pg.database()))

    found = [
        Setup(LOCAL, 1, (1, 4), (), lambda tmp: dicomvault_nodes(tmp, [{}]), "lmdb"),
        Setup(SHARED, 1, (1, 4), ENGINES, lambda tmp: dicomvault_nodes(tmp, shared(1)), "pg"),
        Setup(SHARED, 2, (4,), ENGINES, lambda tmp: dicomvault_nodes(tmp, shared(2)), "pg"),
    ]
    if not shutil.which("Orthanc"):
        report("Orthanc is not installed (Debian package orthanc): no Orthanc rows")
        return found
    found.append(Setup(ORTHANC_SQLITE, 1, (1, 4), (), lambda tmp: orthanc_nodes(tmp, 1, {})))
    if not ORTHANC_POSTGRESQL_INDEX.exists():
        report("Debian package orthanc-postgresql is not installed: no Orthanc PG rows")
        return found
    found.append(Setup(ORTHANC_PG, 1, (1, 4), ("postgresql",), orthanc_pg(1)))
    found.append(Setup(ORTHANC_PG, 2, (4,), ("postgresql",), orthanc_pg(2)))
    return found


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def measure(
    setup: Setup,
    files: list[Path],
    associations: int,
    work: Path,
    engines: dict[str, Callable[[], float]],
) -> Row:
    """Sends ``files`` over ``associations`` storescu runs split between the setup's nodes,
    each started fresh, the files dealt between them."""
    # What the previous run left dirty in the page cache is written back now, not during this.
    os.sync()
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        nodes = setup.make(Path(tmp))
        started: list[Peer] = []
        try:
            # One after another: the first Orthanc on a database creates its schema.
            for peer, workdir in nodes:
                peer.start(workdir)
                started.append(peer)
            peers = [peer for peer, _ in nodes]
            shares = [files[i :: len(peers)] for i in range(len(peers))]
            per_node = max(1, associations // len(peers))
            before = {name: engines[name]() for name in setup.engines}
            with ThreadPoolExecutor(len(peers)) as pool:
                sent: list[Sent] = list(pool.map(lambda p, f: send(p, f, per_node), peers, shares))
            cpu = {name: engines[name]() - before[name] for name in setup.engines}
        finally:
            # At once: Orthanc takes seconds to stop.
            with ThreadPoolExecutor(max(1, len(started))) as pool:
                stopped = list(pool.map(lambda peer: peer.stop()[0], started))
    cpu = {"nodes": sum(stopped)} | cpu
    trips = [trip * 1e3 for s in sent for trip in s.round_trips]
    return Row(
        setup=setup.name,
        nodes=setup.nodes,
        associations=associations,
        rate=len(files) / max(s.seconds for s in sent),
        p50_ms=percentile(trips, 0.5),
        p99_ms=percentile(trips, 0.99),
        cpu_ms={name: seconds * 1e3 / len(files) for name, seconds in cpu.items()},
    )


def find(
    cache: Path,
    scratch: Path,
    pg: PostgreSQL,
    instances: int,
    queries: int,
    report: Callable[[str], None],
) -> dict[str, float]:
    """C-FIND p50 of the slowest kind of query, per index backend, against ``instances``
    synthetic instances (LMDB's index kept in ``cache`` for the next run, as ``bench find``
    keeps it; PostgreSQL's in this run's cluster)."""
    config = scratch / "find-pg.toml"
    config.write_text(toml({"index": {"backend": "postgresql", "url": pg.database()}}))
    found = {}
    for index, work, settings in (("lmdb", cache, None), ("pg", scratch / "find-pg", config)):
        report(f"C-FIND against {instances:,} instances, index on {index}:")
        by_kind = query.run(work, instances, queries, settings, report)
        found[index] = max(p50 for p50, _ in by_kind.values())
    return found


def ratios(rows: list[Row]) -> list[Ratio]:
    """Issue 16's ratios of instances/s, with their targets, and Orthanc's own for comparison;
    those whose rows were measured."""
    rate = {(r.setup, r.nodes, r.associations): r.rate for r in rows}
    wanted = [
        ("dicomvault 2 nodes / 1 node on S3+PG, 4 assoc", (SHARED, 2, 4), (SHARED, 1, 4), 1.4),
        ("dicomvault S3+PG / local, 1 node, 1 assoc", (SHARED, 1, 1), (LOCAL, 1, 1), 0.6),
        ("dicomvault S3+PG / local, 1 node, 4 assoc", (SHARED, 1, 4), (LOCAL, 1, 4), 0.6),
        (
            "dicomvault 2 nodes on S3+PG / Orthanc 2 nodes on PG, 4 assoc",
            (SHARED, 2, 4),
            (ORTHANC_PG, 2, 4),
            2.0,
        ),
        ("Orthanc 2 nodes / 1 node on PG, 4 assoc", (ORTHANC_PG, 2, 4), (ORTHANC_PG, 1, 4), None),
        ("Orthanc PG / SQLite, 1 node, 4 assoc", (ORTHANC_PG, 1, 4), (ORTHANC_SQLITE, 1, 4), None),
    ]
    return [
        Ratio(name, rate[ours] / rate[theirs], target)
        for name, ours, theirs, target in wanted
        if ours in rate and theirs in rate
    ]


HEADER = (
    f"{'server':<18} {'nodes':>5} {'assoc':>5} {'inst/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
    f"{'cpu ms/inst':>11} {'nodes':>6} {'pg':>6} {'s3':>6} {'find p50 ms':>11}"
)


def format_row(row: Row) -> str:
    def part(name: str) -> str:
        return f"{row.cpu_ms[name]:6.2f}" if name in row.cpu_ms else f"{'-':>6}"

    found = f"{row.find_p50_ms:11.2f}" if row.find_p50_ms is not None else f"{'-':>11}"
    return (
        f"{row.setup:<18} {row.nodes:>5} {row.associations:>5} {row.rate:8.1f} "
        f"{row.p50_ms:7.2f} {row.p99_ms:7.2f} {row.cpu_ms_total:11.2f} {part('nodes')} "
        f"{part('postgresql')} {part('seaweedfs')} {found}"
    )


def run(
    cache: Path,
    work: Path,
    count: int = 1000,
    runs: int = 3,
    find_instances: int = 0,
    find_queries: int = 100,
    report: Callable[[str], None] = print,
) -> Result:
    """Measures every row (the best of ``runs`` by instances/s), then C-FIND if
    ``find_instances``; prints the table and the ratios."""
    files = generated(cache, CT, count)
    result = Result(len(files), runs, find_instances)
    pg = PostgreSQL(durable=True).start()
    s3 = SeaweedFs().start()
    try:
        engines = {"postgresql": pg.cpu_seconds, "seaweedfs": s3.cpu_seconds}
        measured: list[tuple[Setup, Row]] = []
        for setup in setups(pg, s3, report):
            for associations in setup.associations:
                tries = [measure(setup, files, associations, work, engines) for _ in range(runs)]
                best = max(tries, key=lambda row: row.rate)
                measured.append((setup, best))
                report(f"measured: {format_row(best)}")
        if find_instances:
            p50 = find(cache, work, pg, find_instances, find_queries, report)
            for setup, row in measured:
                row.find_p50_ms = p50.get(setup.index) if setup.index else None
    finally:
        s3.stop()
        pg.stop()
    result.rows = [row for _, row in measured]
    result.ratios = ratios(result.rows)
    report(
        f"\n{len(files)} CT instances (0.5 MB) by storescu, best of {runs} run(s) per row; "
        "p50/p99: C-STORE request sent to response received; cpu: per instance, the servers' "
        "(nodes) plus PostgreSQL's (pg) and SeaweedFS's (s3) where the row runs on them"
        + (
            f"; find p50: C-FIND STUDY against {find_instances:,} instances, the slowest kind "
            "of query's p50 (dicomvault only)"
            if find_instances
            else ""
        )
    )
    report(HEADER)
    for row in result.rows:
        report(format_row(row))
    report("")
    for ratio in result.ratios:
        report(str(ratio))
    return result
