"""``dicomvault migrate``: from a PACS over query/retrieve (or DICOMweb, or Orthanc's storage)
into the archive, or from the archive into another (``to``); resumable, verified, reported."""

from __future__ import annotations

import csv
import datetime as dt
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dicomvault.cli.common import (
    ConfigOption,
    RootOption,
    archive_for,
    audited,
    fail,
    open_archive,
    recorded,
    settings,
)
from dicomvault.cli.dicom import KeysOption, TargetArgument, _keys, _target
from dicomvault.cli.output import print_json, print_table
from dicomvault.config import ConfigError, Settings
from dicomvault.migrate.journal import STATES, JournalRow, open_journal, rows_of
from dicomvault.migrate.live import Progress, live_path
from dicomvault.store.maintenance import PackRewritten, RepackReport

if TYPE_CHECKING:
    from dicomvault.migrate.pipeline import Migration, Plan

app = typer.Typer(
    help="Migrate into the archive, resumably: from a PACS (C-FIND + C-GET/C-MOVE), a DICOMweb "
    "server (QIDO-RS + WADO-RS) or Orthanc's storage; or out of it, into another archive (to).",
    no_args_is_help=True,
)

DateOption = Annotated[str | None, typer.Option(help="YYYYMMDD (StudyDate).")]
FindLimitOption = Annotated[
    int, typer.Option(help="The source's C-FIND result limit: fuller windows are split.")
]


def _date(text: str | None, default: dt.date) -> dt.date:
    if text is None:
        return default
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        fail(f"not a date (YYYYMMDD): {text!r}")


def _plan(
    since: str | None,
    until: str | None,
    keys: list[str] | None,
    find_limit: int,
    **more: object,
) -> Plan:
    from dicomvault.migrate.pipeline import FIRST_DAY, Plan

    return Plan(
        since=_date(since, FIRST_DAY),
        until=_date(until, dt.date.today()),
        keys=_keys(keys),
        find_limit=find_limit,
        undated=since is None and until is None,
        **more,  # type: ignore[arg-type]
    )


def _exit_unless_settled(left: list[JournalRow]) -> None:
    """Lists what is left and exits 1, if anything is."""
    if left:
        _not_verified(left)
        raise typer.Exit(1)


def _not_verified(rows: list[JournalRow]) -> None:
    print_table(
        ["item", "date", "state", "attempts", "expected", "received", "error"],
        [
            (r.item, r.study_date, r.state, r.attempts, r.expected, r.received, r.error)
            for r in rows
        ],
    )


@app.command()
def pacs(
    source: TargetArgument,
    since: DateOption = None,
    until: DateOption = None,
    key: KeysOption = None,
    method: Annotated[str, typer.Option(help="get (C-GET) or move (C-MOVE to us).")] = "get",
    find_limit: FindLimitOption = 500,
    retries: Annotated[int, typer.Option(help="Retries of a study that failed.")] = 2,
    parallel: Annotated[
        int, typer.Option(help="Retrieve associations at once (studies in flight).")
    ] = 4,
    rate_limit: Annotated[
        float, typer.Option(help="Studies started per minute at most (0: no limit).")
    ] = 0,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """Enumerate SOURCE's studies, retrieve each into the archive and verify it, as a
    pipeline (listing ahead of retrieval, --parallel associations retrieving); a second run
    resumes (verified studies are never fetched again). `migrate status SOURCE` shows its
    progress from another terminal. Exits 1 if any study is left unverified (see `migrate
    report`)."""
    from dicomvault.migrate.pacs import PacsMigration
    from dicomvault.net.bulk import BulkScu
    from dicomvault.net.vocabulary import ScuError

    if method not in ("get", "move"):
        fail("--method must be get or move")
    if parallel < 1:
        fail("--parallel must be 1 or more")
    conf = settings(config, root)
    target = _target(conf, source)
    plan = _plan(
        since,
        until,
        key,
        find_limit,
        method=method,
        retries=retries,
        parallel=parallel,
        rate_limit=rate_limit,
    )
    with open_archive(config, root) as archive, open_journal(archive.settings) as journal:
        audited(archive, "migrate", [], f"migrate pacs from {target.aet} ({method})")
        try:
            scu = BulkScu(conf, target, archive)
        except ScuError as e:
            fail(str(e))
        migration = PacsMigration(
            archive, scu, target, journal, str(conf["dicom"]["aet"]), report=typer.echo
        )
        # C-MOVE needs us listening as the destination the source knows.
        server = None
        if method == "move":
            from dicomvault.net.listener import StoreListener

            server = StoreListener(archive, conf)
        try:
            if server is not None:
                try:
                    server.start()
                except ConfigError as e:
                    fail(str(e), 2)
                except OSError as e:
                    fail(
                        f"cannot listen for the source's C-STOREs on port "
                        f"{conf['dicom']['port']}: {e} (is `dicomvault serve` running? stop "
                        "it, or migrate with --method get)"
                    )
            left = _run(migration, plan)
        finally:
            scu.close()
            if server is not None:
                server.stop()
    _summary(archive.settings, target.name, left)


@app.command()
def dicomweb(
    url: Annotated[str, typer.Argument(help="The DICOMweb root, e.g. https://pacs/dicom-web.")],
    since: DateOption = None,
    until: DateOption = None,
    key: KeysOption = None,
    token: Annotated[str | None, typer.Option(help="A bearer token for the source.")] = None,
    user: Annotated[
        str | None, typer.Option(help="A user for the source (HTTP Basic; asks the password).")
    ] = None,
    find_limit: FindLimitOption = 500,
    retries: Annotated[int, typer.Option(help="Retries of a study that failed.")] = 2,
    parallel: Annotated[int, typer.Option(help="WADO-RS requests at once (studies).")] = 4,
    rate_limit: Annotated[
        float, typer.Option(help="Studies started per minute at most (0: no limit).")
    ] = 0,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """Migrate the studies of the DICOMweb server at URL: QIDO-RS to list (paged; date
    windows split where the source caps its answers), WADO-RS to fetch (streamed into the
    archive byte for byte), verified against the source's instance list; journaled and
    resumable like `migrate pacs` (`migrate status URL`, `migrate report URL`)."""
    from dicomvault.migrate.dicomweb import DicomwebMigration, authorization

    if token and user:
        fail("--token or --user, not both")
    if parallel < 1:
        fail("--parallel must be 1 or more")
    password = typer.prompt("password", hide_input=True) if user is not None else None
    plan = _plan(
        since,
        until,
        key,
        find_limit,
        retries=retries,
        parallel=parallel,
        rate_limit=rate_limit,
    )
    with open_archive(config, root) as archive, open_journal(archive.settings) as journal:
        migration = DicomwebMigration(
            archive, journal, url, authorization(token, user, password), report=typer.echo
        )
        audited(archive, "migrate", [], f"migrate dicomweb from {migration.url}")
        left = _run(migration, plan)
    _summary(archive.settings, migration.name, left)


def _run(migration: Migration, plan: Plan) -> list[JournalRow]:
    """Runs a migration, its progress shown here and published for `migrate status`; the
    studies left unverified."""
    from dicomvault.migrate.pipeline import MigrationError, SourceError
    from dicomvault.store.archive import IndexUnavailable

    progress = Progress(migration.name, path=live_path(migration.archive.root, migration.name))
    with _shown(progress) as on_study:
        migration.on_study = on_study
        try:
            return migration.run(plan, progress)
        except (MigrationError, SourceError, IndexUnavailable) as e:
            fail(str(e))


def _summary(conf: Settings, name: str, left: list[JournalRow]) -> None:
    """How many studies are verified; exits 1, listing them, if any is not."""
    rows = rows_of(conf, name)
    verified = sum(r.state == "verified" for r in rows)
    typer.echo(f"{verified} of {len(rows)} studies verified")
    _exit_unless_settled(left)


@contextmanager
def _shown(progress: Progress) -> Iterator[Callable[[Progress, JournalRow], None]]:
    """How each finished study is shown: a line on a pipe or file, a progress bar (rich) on
    a terminal, both with the figures `migrate status` shows."""
    progress.publish(force=True)
    if not sys.stdout.isatty():

        def line(progress: Progress, row: JournalRow) -> None:
            outcome = row.state if row.state == "verified" else f"{row.state}: {row.error}"
            typer.echo(f"{progress.line()} {row.item}: {outcome}")

        yield line
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
    from rich.progress import Progress as Bar

    with Bar(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[figures]}"),
    ) as bar:
        task = bar.add_task(progress.source, total=None, figures="")

        def update(progress: Progress, row: JournalRow) -> None:
            if row.state != "verified":
                bar.console.print(f"{row.item}: {row.state}: {row.error}")
            figures = progress.line().split(" studies, ", 1)[1].rstrip("]")
            total = progress.total if progress.enumerated else None
            bar.update(task, completed=progress.done, total=total, figures=figures)

        yield update


@app.command()
def compare(
    source: TargetArgument,
    since: DateOption = None,
    until: DateOption = None,
    key: KeysOption = None,
    find_limit: FindLimitOption = 500,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """Check only: SOURCE's studies (enumerated as `migrate pacs` does) against the archive,
    instance by instance, nothing retrieved. Exits 1 if any is not complete here."""
    from dicomvault.migrate.pacs import PacsMigration
    from dicomvault.migrate.pipeline import SourceError
    from dicomvault.net.bulk import BulkScu
    from dicomvault.net.vocabulary import ScuError

    conf = settings(config, root)
    target = _target(conf, source)
    plan = _plan(since, until, key, find_limit)
    with open_archive(config, root) as archive, open_journal(archive.settings) as journal:
        try:
            scu = BulkScu(conf, target)
        except ScuError as e:
            fail(str(e))
        migration = PacsMigration(archive, scu, target, journal, str(conf["dicom"]["aet"]))
        try:
            left = migration.compare(plan)
        except SourceError as e:
            fail(str(e))
        finally:
            scu.close()
    _exit_unless_settled(left)
    typer.echo("every study is complete in the archive")


@app.command("orthanc-storage")
def orthanc_storage(
    directory: Annotated[Path, typer.Argument(help="Orthanc's StorageDirectory.")],
    index: Annotated[
        Path | None,
        typer.Option(help="Orthanc's index (SQLite file, or its IndexDirectory); default DIR."),
    ] = None,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """Import every instance of an Orthanc StorageDirectory (plain or zlib-compressed
    attachments), journaled and resumable. Exits 1 if any file could not be migrated."""
    from dicomvault.migrate.storage import OrthancStorageMigration

    if not directory.is_dir():
        fail(f"not a directory: {directory}")
    index = index or directory
    index = index / "index" if index.is_dir() else index
    if not index.is_file():
        fail(f"no Orthanc index at {index}: name it with --index")
    with open_archive(config, root) as archive, open_journal(archive.settings) as journal:
        audited(archive, "migrate", [], f"migrate orthanc-storage from {directory}")
        migration = OrthancStorageMigration(archive, journal, directory, index, report=typer.echo)
        left = migration.run()
        rows = list(journal.rows(migration.source))
    for state in STATES:
        if count := sum(r.state == state for r in rows):
            typer.echo(f"{count} files {state}")
    _exit_unless_settled(left)


@app.command()
def repack(
    compression: Annotated[str, typer.Option(help="none or zstd.")] = "zstd",
    level: Annotated[int, typer.Option(help="zstd level (1-22).")] = 3,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """Rewrite every pack with every blob stored anew in another compression, pack by pack,
    reclaiming each old pack as soon as its copy is written; then verify every blob. When
    `dicomvault serve` holds the archive, the server does it (asked through
    <root>/control.sock) and goes on serving: retrieves read each blob from wherever it is,
    instances stored meanwhile go to new packs. Otherwise it is done here, the archive held
    exclusively. Set \\[storage] compression too, for what arrives next."""
    from dicomvault.cli.archive import report_pack, report_rewrite
    from dicomvault.control import ControlError, request

    conf = settings(config, root)
    recorded(conf, "repack", f"repack {compression} {level}")
    try:
        report: RepackReport | None = request(
            conf.root,
            "repack",
            lambda p: report_pack(PackRewritten(**p)),
            compression=compression,
            level=level,
        )
    except ControlError as e:
        fail(str(e))
    if report is None:  # no server: the archive is ours
        with archive_for(conf, exclusive=True, packs_only="migrate repack") as archive:
            try:
                report = archive.repack(compression, level, report_pack)
            except ValueError as e:
                fail(str(e))
            except OSError as e:  # a pack it could not write: the old ones are still in place
                fail(
                    f"repack stopped: {e}; the archive is intact (run it again once there is room)"
                )
    report_rewrite(report)
    if report["defects"]:
        for key, reason in report["defects"]:
            typer.echo(f"DEFECT {key}: {reason}", err=True)
        fail(
            f"verify found {len(report['defects'])} defects after repacking: run dicomvault verify"
        )
    typer.echo(f"verified {report['verified']} records")


@app.command("to")
def to(
    destination: Annotated[
        Path,
        typer.Argument(
            # Escaped: rich reads [word] as markup.
            help="The destination's configuration file (TOML): its \\[archive] root, "
            "\\[storage] and \\[index], e.g. S3 and PostgreSQL."
        ),
    ],
    parallel: Annotated[int, typer.Option(help="Instances streaming at once.")] = 4,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """Copy this archive (--config, --root) into the archive DESTINATION configures, every
    instance byte for byte with its receive time and source, then verify every one there (its
    bytes read back). Only what the destination misses is copied: run it again after an
    interruption. While serve runs on the destination, give this run another \\[storage] node.
    Exits 1, listing them, if any instance is missing or different on the destination."""
    from dicomvault.migrate.archive_copy import ArchiveCopy, CopyError

    if parallel < 1:
        fail("--parallel must be 1 or more")
    conf = settings(config, root)
    target = settings(destination, None)
    if target.root.resolve() == conf.root.resolve():
        fail(f"{destination} names this archive's root ({conf.root}): give it a root of its own")
    with archive_for(conf) as source, archive_for(target) as copy:
        audited(source, "export", None, f"migrate to {destination}")
        audited(copy, "migrate", None, f"migrate to here from {conf.root}")
        try:
            report = ArchiveCopy(source, copy, parallel=parallel, report=typer.echo).run()
        except CopyError as e:
            fail(f"migrate to {destination} stopped: {e}; run it again to resume")
    typer.echo(
        f"{report.instances} instances ({report.bytes} bytes): {report.copied} copied now, "
        f"{report.present} already there, {report.verified} verified"
    )
    if report.problems:
        print_table(["instance", "problem"], sorted(report.problems.items()))
        fail(f"{len(report.problems)} instances missing or different on the destination")


def _source(conf: Settings, source: str) -> str:
    """The journal's name for SOURCE: a storage directory, a DICOMweb URL, or a
    [modalities] target."""
    from dicomvault.migrate.storage import source_name

    if source.startswith(("http://", "https://")):
        return source.rstrip("/")
    # A [modalities] name first: a directory of that name where the command runs is not it.
    if source in conf["modalities"] or not Path(source).is_dir():
        return _target(conf, source).name
    return source_name(Path(source))


@app.command()
def status(source: TargetArgument, config: ConfigOption = None, root: RootOption = None) -> None:
    """Items per state for SOURCE (a PACS, a DICOMweb URL, or a storage directory); for a
    migration running
    now (or the last one), its studies done, instances, MB, rates and ETA."""
    conf = settings(config, root)
    name = _source(conf, source)
    rows = rows_of(conf, name)
    live = Progress.load(conf.root, name)
    if live is not None:
        how = "running" if live.running else "finished" if live.finished else "stopped"
        enumerating = "" if live.enumerated or not live.running else " (still enumerating)"
        typer.echo(f"migration {how}{enumerating}: {live.line()}")
    print_table(["state", "items"], [(s, sum(r.state == s for r in rows)) for s in STATES])


@app.command()
def report(
    source: TargetArgument,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    as_csv: Annotated[bool, typer.Option("--csv")] = False,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """Every item of SOURCE (a PACS, a DICOMweb URL, or a storage directory) not migrated,
    and why."""
    conf = settings(config, root)
    rows = [r for r in rows_of(conf, _source(conf, source)) if r.state != "verified"]
    if as_json:
        print_json([asdict(r) for r in rows])
    elif as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(list(asdict(JournalRow("", "")).keys()))
        writer.writerows(list(asdict(r).values()) for r in rows)
    else:
        _not_verified(rows)
