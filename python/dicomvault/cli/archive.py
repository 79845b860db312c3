"""Archive administration commands: import, export, ls, show, lookup, stats, delete, gc,
verify, reindex, init-db."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer

from dicomvault._native import DamagedError, manifest_hash
from dicomvault.cli.common import (
    ConfigOption,
    RootOption,
    audited,
    fail,
    open_archive,
    settings,
)
from dicomvault.cli.output import human_bytes, print_json, print_table
from dicomvault.dicom.keys import parse_keys
from dicomvault.index import Level, Record, backends
from dicomvault.index.levels import PLURALS
from dicomvault.index.protocol import IndexUnavailable
from dicomvault.store import Archive, IngestOutcome
from dicomvault.store.backends import StorageError, on_object_storage, serving_nodes
from dicomvault.store.importer import import_paths
from dicomvault.store.maintenance import PackRewritten, RewriteReport

app = typer.Typer()


# Table columns per level: tags, then counters (prefixed "#") and "size".
COLUMNS: dict[Level, list[str]] = {
    Level.PATIENT: [
        "PatientID",
        "IssuerOfPatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "#studies",
        "#instances",
        "size",
    ],
    Level.STUDY: [
        "StudyInstanceUID",
        "StudyDate",
        "AccessionNumber",
        "StudyDescription",
        "ModalitiesInStudy",
        "#series",
        "#instances",
        "size",
    ],
    Level.SERIES: [
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "#instances",
        "size",
    ],
    Level.IMAGE: [
        "SOPInstanceUID",
        "InstanceNumber",
        "NumberOfFrames",
        "TransferSyntaxUID",
        "size",
    ],
}


def _cell(record: Record, column: str) -> str | int:
    if column == "size":
        return human_bytes(record.size)
    if column.startswith("#"):
        return record.counts.get(column[1:], 0)
    return record.tags.get(column, "")


@app.command("import")
def import_(
    paths: Annotated[list[Path], typer.Argument(help="Files and directories (recursive).")],
    workers: Annotated[int, typer.Option(help="Parallel workers (0: one per CPU).")] = -1,
    report: Annotated[
        Path | None,
        typer.Option(help="Write one JSON line per file once its outcome is final (durable)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """Import DICOM files into the archive (byte-identical, de-duplicated, indexed)."""
    # rich costs every other command's start-up 30 ms: loaded where it is used.
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with open_archive(config, root) as archive:
        workers = workers if workers >= 0 else int(archive.settings["import"]["workers"])
        report_file = report.open("a", buffering=1) if report else None
        console = Console(stderr=True)
        progress = Progress(
            TextColumn("[bold]import"),
            BarColumn(bar_width=None),
            TextColumn("{task.fields[files]} files  {task.fields[rate]}"),
            TimeElapsedColumn(),
            console=console,
            disable=quiet,
        )
        task = progress.add_task("import", total=None, files=0, rate="")
        totals = {"files": 0, "bytes": 0}

        def on_file(path: Path, outcome: IngestOutcome) -> None:
            totals["files"] += 1
            totals["bytes"] += outcome.size
            elapsed = max(progress.tasks[task].elapsed or 0.0, 1e-6)
            files_rate, mb_rate = totals["files"] / elapsed, totals["bytes"] / elapsed / 1e6
            rate = f"{files_rate:.0f} files/s  {mb_rate:.1f} MB/s"
            progress.update(task, files=totals["files"], rate=rate)
            if report_file is not None:
                line = {"path": str(path), "status": outcome.status, "key": outcome.key}
                if outcome.reason:
                    line["reason"] = outcome.reason
                report_file.write(json.dumps(line) + "\n")

        with progress:
            try:
                summary = import_paths(archive, paths, workers=workers, on_file=on_file)
            except FileNotFoundError as e:
                fail(str(e))
        if report_file is not None:
            report_file.close()
    for path in summary.not_dicom:
        typer.echo(f"skipped (not DICOM): {path}", err=True)
    for path, reason in summary.rejected:
        typer.echo(f"rejected: {path}: {reason}", err=True)
    for path, reason in summary.failed:
        typer.echo(f"failed: {path}: {reason}", err=True)
    if summary.not_tried:
        typer.echo(
            f"stopped: the archive could not store more; {summary.not_tried} files not tried",
            err=True,
        )
    seconds = max(summary.seconds, 1e-9)
    others = "".join(
        f", {name} {count}"
        for name, count in (
            ("different (first kept)", summary.different),
            ("replaced", summary.replaced),
            ("failed", len(summary.failed)),
        )
        if count
    )
    typer.echo(
        f"stored {summary.stored}, duplicate {summary.duplicate}{others}, "
        f"rejected {len(summary.rejected)}, not DICOM {len(summary.not_dicom)}: "
        f"{summary.files} files, {human_bytes(summary.bytes)} in {summary.seconds:.2f} s "
        f"({summary.files / seconds:.0f} files/s, {summary.bytes / seconds / 1e6:.1f} MB/s)"
    )
    if summary.rejected or summary.failed:
        raise typer.Exit(1)


def _resolve(archive: Archive, values: list[str]) -> list[Record]:
    try:
        return archive.resolve_all(values)
    except LookupError as e:
        fail(f"nothing in the archive matches {e.args[0]!r}")


@app.command()
def export(
    uids: Annotated[
        list[str] | None,
        typer.Argument(help="UIDs or PatientIDs at any level; none exports everything."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("export"),
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """Export instances as the exact Part 10 files that were received (a damaged instance is
    reported and left out; the exit code is then 1)."""
    with open_archive(config, root) as archive:
        records = None
        if uids:
            records = _resolve(archive, uids)
        audited(archive, "export", records, f"export to {out}")
        count = size = damaged = 0
        for instance in archive.instances(records):
            try:
                archive.export(instance, out)
            except DamagedError as e:
                typer.echo(f"damaged: {instance.key}: {e}", err=True)
                damaged += 1
                continue
            count += 1
            size += instance.size
    typer.echo(f"exported {count} instances ({human_bytes(size)}) to {out}")
    if damaged:
        fail(f"{damaged} damaged instances were not exported: run dicomvault verify")


@app.command("ls")
def ls(
    level: Annotated[str, typer.Argument(help="patients, studies, series or instances.")],
    key: Annotated[
        list[str] | None,
        typer.Option("-k", "--key", help="Filter as in C-FIND: Tag=value (wildcards, ranges)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON records.")] = False,
    limit: Annotated[int | None, typer.Option(min=0, help="At most this many records.")] = None,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """List what the archive holds at one level."""
    if level not in PLURALS:
        fail(f"level must be one of {', '.join(PLURALS)}")
    query_level = PLURALS[level]
    try:
        filters = parse_keys(key or [])
    except ValueError as e:
        fail(str(e))
    with open_archive(config, root) as archive:
        records = archive.records(query_level, filters, limit=limit)
    if as_json:
        print_json([r.to_json() for r in records])
        return
    columns = COLUMNS[query_level]
    print_table(columns, ([_cell(r, c) for c in columns] for r in records))


@app.command()
def show(
    uid: Annotated[str, typer.Argument(help="A UID or PatientID.")],
    history: Annotated[
        bool,
        typer.Option(
            "--history",
            help="An instance's versions: the stored one and those it replaced (until gc).",
        ),
    ] = False,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """Show a record: an instance's full data set (like dcmdump), or a level's tags."""
    with open_archive(config, root) as archive:
        records = _resolve(archive, [uid])
        audited(archive, "read", records, f"show {uid}")
        for record in records:
            if record.level is not Level.IMAGE:
                print_json(record.to_json())
            elif history:
                versions = [
                    {
                        "manifest": record.manifest,
                        "size": record.size,
                        "received_at": record.received_at,
                        "source": record.source,
                    },
                    *(record.history or []),
                ]
                print_table(
                    ["version", "manifest", "size", "received_at", "source"],
                    (
                        [
                            "stored" if i == 0 else f"replaced {i}",
                            manifest_hash(v["manifest"]),
                            human_bytes(v["size"]),
                            v["received_at"],
                            v["source"] or "",
                        ]
                        for i, v in enumerate(versions)
                    ),
                )
            else:
                ds = archive.dataset(record)
                typer.echo(
                    f"# {record.key}  ({human_bytes(record.size)}, from {record.source}, "
                    f"received {record.received_at})"
                )
                if ds.file_meta:
                    typer.echo(str(ds.file_meta))
                typer.echo(str(ds))


@app.command()
def lookup(
    value: Annotated[str, typer.Argument(help="PatientID, AccessionNumber or any UID.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON records.")] = False,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """Find which records an identifier names, at every level."""
    with open_archive(config, root) as archive:
        records = _resolve(archive, [value])
    if as_json:
        print_json([r.to_json() for r in records])
    else:
        print_table(
            ["level", "key", "parent", "instances"],
            ([r.level.value, r.key, r.parent or "", r.counts.get("instances", 1)] for r in records),
        )


@app.command()
def stats(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """Counts, sizes and storage use (with the de-duplication saving)."""
    with open_archive(config, root) as archive:
        figures = archive.stats()
    if as_json:
        print_json(figures)
        return
    for name, value in figures.items():
        shown = human_bytes(value) if name in ("size", "pack_bytes") else value
        typer.echo(f"{name:>18}: {shown}")


@app.command()
def nodes(config: ConfigOption = None, root: RootOption = None) -> None:
    """The nodes serving an archive on S3 + PostgreSQL, as their heartbeats say (read from
    the index alone: listed while S3 is down too)."""
    try:
        seen = serving_nodes(settings(config, root))
    except (IndexUnavailable, backends.BackendError, StorageError) as e:
        fail(str(e))
    if not seen:
        typer.echo("no node is serving now (nodes beat on S3 + PostgreSQL only)")
        return
    print_table(
        ["node", "address", "since", "last beat", "state"],
        [
            [
                str(n.node),
                n.address,
                datetime.fromtimestamp(n.started, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ"),
                f"{n.seen_ago:.0f} s ago",
                "serving" if n.serving else "silent (stopped or cut off)",
            ]
            for n in seen
        ],
    )


@app.command()
def delete(
    uid: Annotated[str, typer.Argument(help="A Study/Series/SOP Instance UID or a PatientID.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """Delete a patient, study, series or instance (its blobs are reclaimed by gc)."""
    with open_archive(config, root) as archive:
        records = [r for r in _resolve(archive, [uid]) if r.key == uid or r.level is Level.PATIENT]
        if len(records) != 1:
            fail(f"{uid!r} names {len(records)} records; give a unique UID")
        record = records[0]
        count = record.counts.get("instances", 1)
        if not yes:
            typer.confirm(
                f"delete {record.level.value} {record.key} ({count} instances)?", abort=True
            )
        removed = archive.delete(record)
        audited(archive, "delete", [record], f"delete {record.level.value} {record.key}")
    typer.echo(f"deleted {len(removed)} instances ({human_bytes(sum(r.size for r in removed))})")


@app.command()
def gc(
    config: ConfigOption = None,
    root: RootOption = None,
    grace: Annotated[
        float,
        typer.Option(
            min=0,
            help="On S3: seconds an unreferenced object must have been left before it goes to "
            "the trash, and spent in the trash before it is deleted (longer than any C-STORE "
            "takes).",
        ),
    ] = 3600,
) -> None:
    """Reclaim the space of deleted instances: on packs, by rewriting them (the archive must be
    idle); on S3, by collecting unreferenced objects while every node serves (one node acts)."""
    try:
        objects = on_object_storage(settings(config, root))
    except StorageError as e:
        fail(str(e))
    if objects:
        _collect(config, root, grace)
        return
    with open_archive(config, root, exclusive=True) as archive:
        try:
            report = archive.gc(report_pack)
        except RuntimeError as e:
            fail(str(e))
        except OSError as e:  # a pack it could not write: the old ones are still in place
            fail(f"gc stopped: {e}; the archive is intact (run it again once there is room)")
    report_rewrite(report)


def _collect(config: Path | None, root: Path | None, grace: float) -> None:
    """gc on S3 (see ``Archive.collect``)."""
    with open_archive(config, root) as archive:
        try:
            report = archive.collect(grace)
        except (RuntimeError, OSError, DamagedError, IndexUnavailable) as e:
            fail(f"gc stopped: {e}")
    if report is None:
        typer.echo("a gc or reindex is running on another node (or process): nothing done here")
        return
    typer.echo(
        f"blob objects: {report.blobs}; to the trash: {report.trashed} "
        f"({human_bytes(report.trashed_bytes)}); unreferenced but recent, left: "
        f"{report.recent}; put back from the trash: {report.restored}; deleted: "
        f"{report.deleted} ({human_bytes(report.deleted_bytes)}); stale uploads deleted: "
        f"{report.stale_uploads}"
    )


def report_pack(event: PackRewritten) -> None:
    """One pack gc or repack replaced."""
    typer.echo(
        f"pack {event.pack}: {human_bytes(event.bytes_before)} -> {human_bytes(event.bytes_after)}"
    )


def report_rewrite(report: RewriteReport) -> None:
    """What rewriting the packs did (gc, repack); fails when referenced blobs are missing."""
    typer.echo(
        f"packs rewritten: {report['packs_rewritten']} (left as they were: "
        f"{report['packs_skipped']}); {human_bytes(report['bytes_before'])} -> "
        f"{human_bytes(report['bytes_after'])}; records dropped: {report['records_dropped']}; "
        f"all packs: {human_bytes(report['pack_bytes_before'])} -> "
        f"{human_bytes(report['pack_bytes_after'])}"
    )
    for line in report["damaged"]:
        typer.echo(f"DAMAGED, moved to the quarantine: {line}", err=True)
    if report["missing"]:
        fail(f"{len(report['missing'])} referenced blobs were not found: run verify")


@app.command()
def verify(config: ConfigOption = None, root: RootOption = None) -> None:
    """Re-hash every blob and check every manifest and index record."""
    with open_archive(config, root) as archive:
        report, defects = archive.verify()
    for defect in defects:
        typer.echo(f"DEFECT {defect.key}: {defect.reason}")
    typer.echo(
        f"checked {report.records} records ({human_bytes(report.bytes)}): "
        f"{len(report.damaged)} damaged records, {len(defects)} defects"
    )
    if defects or report.damaged:
        raise typer.Exit(1)


@app.command("init-db")
def init_db(config: ConfigOption = None, root: RootOption = None) -> None:
    """Create or upgrade the index's PostgreSQL schema (index backend "postgresql")."""
    try:
        found, now = backends.init_db(settings(config, root))
    except backends.BackendError as e:
        fail(str(e))
    if found == now:
        typer.echo(f"the index schema is at version {now}: nothing to do")
    else:
        typer.echo(f"the index schema is at version {now} (was {found or 'none'})")


@app.command()
def reindex(config: ConfigOption = None, root: RootOption = None) -> None:
    """Rebuild the index from the log alone: the packs, or every node's segments on S3 (the
    archive must be idle: on S3 + PostgreSQL, every node stopped). Exits 1, as verify does,
    when records were damaged or instances could not be indexed: the index is rebuilt without
    them, and a script must not take that for a whole archive."""
    with open_archive(config, root, exclusive=True) as archive:
        try:
            rebuilt = archive.reindex()
        except (RuntimeError, IndexUnavailable) as e:
            fail(str(e))
        unindexed = archive.unindexed()
    if rebuilt is None:
        fail("a gc or reindex is running on another node (or process)")
    count, damaged = rebuilt
    for damage in damaged:
        typer.echo(f"DAMAGED {damage.message}", err=True)
    for manifest, place in unindexed.items():
        typer.echo(
            f"NOT INDEXED: the instance of manifest {manifest} (pack {place['pack']}): "
            f"{place['why']}",
            err=True,
        )
    typer.echo(
        f"reindexed {count} instances; {len(damaged)} damaged records, "
        f"{len(unindexed)} instances that could not be indexed (see verify)"
    )
    if damaged or unindexed:
        raise typer.Exit(1)
