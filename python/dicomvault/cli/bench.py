"""``dicomvault bench``: the measurements a deployment is sized from, run on this machine
against the peers installed here (DCMTK, Orthanc, pynetdicom)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from dicomvault.cli.common import ConfigOption

app = typer.Typer(
    help="Benchmarks against DCMTK and Orthanc: ingest, C-FIND at scale, C-GET, scale-out.",
    no_args_is_help=True,
)

WorkOption = Annotated[
    Path,
    typer.Option(
        "--work",
        help="Corpora and scratch archives (kept between runs); put it on the archive's disk.",
    ),
]
DEFAULT_WORK = Path("dicomvault-bench")


def _work(work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    return work


@app.command()
def ingest(
    runs: Annotated[int, typer.Option(help="Runs per measurement (the median is shown).")] = 3,
    quick: Annotated[bool, typer.Option(help="Small corpora, for a smoke run.")] = False,
    server: Annotated[
        list[str] | None,
        typer.Option(help="Only these servers: dicomvault, storescp, orthanc, pynetdicom."),
    ] = None,
    sync: Annotated[
        list[str] | None,
        typer.Option(help="dicomvault's storage sync modes measured (default all three)."),
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option(help="Also measure this git ref of the repository, built for the run."),
    ] = None,
    jobs: Annotated[int, typer.Option(help="CARGO_BUILD_JOBS for the baseline's build.")] = 1,
    repo: Annotated[
        Path | None,
        typer.Option(help="Repository of --baseline (default: the one dicomvault runs from)."),
    ] = None,
    work: WorkOption = DEFAULT_WORK,
    config: ConfigOption = None,
) -> None:
    """storescu (1 and 4 associations) into dicomvault (sync always, batch, never), storescp,
    Orthanc and pynetdicom: 1000 CT, 5000 small instances, one 500 MB multi-frame; instances/s,
    MB/s, ratios, CPU ms per instance, peak RSS, C-STORE round trip, against the disk's
    durable bandwidth and fdatasync latency."""
    from dicomvault.bench import baseline as builder
    from dicomvault.bench import ingest as bench

    unknown = set(sync or ()) - set(bench.SYNC_MODES) | set(server or ()) - set(bench.SERVERS)
    if unknown:
        raise typer.BadParameter(f"unknown server or sync mode: {', '.join(sorted(unknown))}")
    cache = _work(work)
    built = None
    if baseline:
        commit, build = builder.build(baseline, cache, jobs, repo)
        typer.echo(f"baseline: {baseline} = {commit}, built in {build}")
        built = (baseline, build)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        bench.run(cache, Path(scratch), runs, quick, server, sync, config, built)


@app.command()
def sustained(
    count: Annotated[int, typer.Option(help="Small instances sent, all distinct.")] = 1_000_000,
    associations: Annotated[int, typer.Option(help="Concurrent storescu associations.")] = 4,
    sync: Annotated[
        str | None, typer.Option(help="The archive's storage sync mode (default: configured).")
    ] = None,
    work: WorkOption = DEFAULT_WORK,
    config: ConfigOption = None,
) -> None:
    """COUNT small instances into one archive over storescu: the ingest rate and the server's
    RSS at each tenth, the first tenth's rate against the last's."""
    from dicomvault.bench import sustained as bench

    cache = _work(work)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        bench.run(Path(scratch), count, associations, sync, config)


@app.command()
def find(
    instances: Annotated[int, typer.Option(help="Instances generated into the index.")] = 1_000_000,
    count: Annotated[int, typer.Option(help="Queries of each kind.")] = 100,
    work: WorkOption = DEFAULT_WORK,
    config: ConfigOption = None,
) -> None:
    """findscu STUDY-level queries against an index of INSTANCES: p50/p95 per kind of query,
    from request received to final response sent."""
    from dicomvault.bench import query as bench

    bench.run(_work(work), instances, count, config)


@app.command()
def retrieve(
    instances: Annotated[int, typer.Option(help="Instances in the study.")] = 100,
    runs: Annotated[int, typer.Option(help="Retrieves per server (the median is shown).")] = 3,
    work: WorkOption = DEFAULT_WORK,
    config: ConfigOption = None,
) -> None:
    """getscu of one CT study from dicomvault and from Orthanc: instances/s and the ratio."""
    from dicomvault.bench import retrieve as bench

    cache = _work(work)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        bench.run(cache, Path(scratch), instances, runs, config)


@app.command()
def scale(
    count: Annotated[int, typer.Option(help="CT instances sent per row.")] = 1000,
    runs: Annotated[int, typer.Option(help="Runs per row (the best is shown).")] = 3,
    find_instances: Annotated[
        int,
        typer.Option(help="C-FIND p50 against an index of this many instances (0: skip)."),
    ] = 0,
    find_queries: Annotated[int, typer.Option(help="C-FIND queries of each kind.")] = 100,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the figures as JSON (the table to stderr).")
    ] = False,
    work: WorkOption = DEFAULT_WORK,
) -> None:
    """CT ingest by storescu (1 and 4 associations) into dicomvault on local packs + LMDB, on
    S3 + PostgreSQL as one node and as two, and into Orthanc on SQLite and on PostgreSQL as
    one and two processes: instances/s, C-STORE p50/p99, CPU per instance of the servers and
    engines, optionally C-FIND p50, and the 2 nodes / 1 node, S3 / local, dicomvault / Orthanc
    ratios."""
    from dicomvault.bench import scale as bench

    cache = _work(work)
    report = (lambda line: typer.echo(line, err=True)) if as_json else typer.echo
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        result = bench.run(cache, Path(scratch), count, runs, find_instances, find_queries, report)
    if as_json:
        typer.echo(result.to_json())
