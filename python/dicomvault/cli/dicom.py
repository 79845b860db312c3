"""DICOM network commands: ``serve`` and the SCU verbs echo, send, find, get, move."""

from __future__ import annotations

import logging
import signal
import socket
import threading
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
    settings,
)
from dicomvault.cli.output import print_json, print_table
from dicomvault.config import ConfigError, Settings
from dicomvault.dicom.keys import parse_keys
from dicomvault.index import Level
from dicomvault.net.policy import AccessPolicy, Modality, PolicyError
from dicomvault.store.importer import iter_files

if TYPE_CHECKING:
    from dicomvault.net.scu import RetrieveResult, Scu

# The network layer (pynetdicom) is imported by the commands that use it, so that the archive
# commands start without it.

app = typer.Typer()
log = logging.getLogger("dicomvault")

TargetArgument = Annotated[str, typer.Argument(help="A \\[modalities] name, or AET@host:port.")]
LevelOption = Annotated[str, typer.Option("--level", "-L", help="PATIENT, STUDY, SERIES or IMAGE.")]
KeysOption = Annotated[
    list[str] | None,
    typer.Option(
        "-k", "--key", help="Tag=value (keyword or (gggg,eeee)); Tag alone is a return key."
    ),
]


@app.command()
def serve(
    aet: Annotated[str | None, typer.Option(help="Our AE title (\\[dicom] aet).")] = None,
    port: Annotated[int | None, typer.Option(help="DICOM port (\\[dicom] port).")] = None,
    host: Annotated[str | None, typer.Option(help="Listen address (\\[dicom] host).")] = None,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """Run the archive: DICOM listener in the foreground until SIGTERM or Ctrl-C. Commands
    that rewrite the archive (`migrate repack`) reach it through <root>/control.sock."""
    from dicomvault.control import ControlServer
    from dicomvault.net.scp import DicomServer

    conf = settings(config, root)
    for key, value in (("aet", aet), ("port", port), ("host", host)):
        if value is not None:
            conf["dicom"][key] = value
    if conf["http"]["enabled"]:
        from dicomvault.http.auth import check_settings

        try:
            check_settings(conf)
        except ConfigError as e:
            fail(str(e), 2)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    dicom = conf["dicom"]
    host = socket.gethostname() if dicom["host"] in ("0.0.0.0", "::") else dicom["host"]
    with archive_for(conf, serving=f"{host}:{dicom['port']}") as archive:
        http = None
        server = None
        control = ControlServer(archive)
        # The DICOM port opens last: once it answers, HTTP and the control socket do too.
        control.start()
        try:
            if conf["http"]["enabled"]:
                from dicomvault.http.server import HttpServer

                http = HttpServer(archive, conf)
                http_host, http_port = http.start()
                scheme = "https" if http.tls else "http"
                typer.echo(
                    f"HTTP on {scheme}://{http_host}:{http_port} (auth {conf['http']['auth']}): "
                    "web UI /ui/, REST /, DICOMweb /dicom-web, /metrics, /openapi.json",
                    err=True,
                )
            server = DicomServer(archive, conf)
            try:
                bound_host, bound_port = server.start()
            except ConfigError as e:
                fail(str(e), 2)
            tls = f", TLS on port {server.tls_address[1]}" if server.tls_address else ""
            typer.echo(
                f"dicomvault serving {conf['dicom']['aet']} on {bound_host}:{bound_port}{tls}, "
                f"archive {conf.root}",
                err=True,
            )
            archive.serve_heartbeat(f"{host}:{bound_port}")
            # A signal that another thread received runs its handler only once the main thread
            # runs Python code again: wake up every second to let it.
            while not stop.wait(1):
                pass
            log.info("stopping: no new associations; committing what was received")
        except (OSError, PolicyError) as e:
            fail(str(e))
        finally:
            if http is not None:
                http.stop()
            if server is not None:
                server.stop()
            control.stop()
    log.info("stopped")


def _target(conf: Settings, target: str) -> Modality:
    try:
        return AccessPolicy(conf["dicom"], conf["modalities"]).target(target)
    except PolicyError as e:
        fail(str(e))


def _level(level: str) -> Level:
    try:
        return Level(level.upper())
    except ValueError:
        fail("--level must be PATIENT, STUDY, SERIES or IMAGE")


def _keys(keys: list[str] | None) -> dict[str, str]:
    try:
        return parse_keys(keys or [])
    except ValueError as e:
        fail(str(e))


@app.command()
def echo(target: TargetArgument, config: ConfigOption = None, root: RootOption = None) -> None:
    """C-ECHO a remote AE."""
    from dicomvault.net.scu import ScuError
    from dicomvault.net.status import SUCCESS, describe

    conf = settings(config, root)
    try:
        status = _scu(conf).echo(_target(conf, target))
    except ScuError as e:
        fail(str(e))
    typer.echo(f"C-ECHO {target}: {describe(status)}")
    if status != SUCCESS:
        raise typer.Exit(1)


@app.command()
def send(
    items: Annotated[
        list[str], typer.Argument(help="Files, directories or archived UIDs (any level).")
    ],
    to: Annotated[str, typer.Option("--to", help="A \\[modalities] name, or AET@host:port.")],
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """C-STORE files or archived instances to a remote AE (byte for byte where accepted)."""
    from dicomvault.net.outbound import StoredInstance, stored_instance
    from dicomvault.net.scu import ScuError
    from dicomvault.net.status import SUCCESS, describe

    conf = settings(config, root)
    target = _target(conf, to)
    paths = [Path(i) for i in items if Path(i).exists()]
    uids = [i for i in items if not Path(i).exists()]
    with open_archive(config, root) as archive:
        try:
            records = archive.resolve_all(uids)
        except LookupError as e:
            fail(f"{e.args[0]!r} is neither a file nor in the archive")
        if records:
            audited(archive, "send", records, f"send to {to}")
        outgoing: list[Path | StoredInstance] = [
            *iter_files(paths),
            *(stored_instance(archive, r) for r in archive.instances(records)),
        ]
        try:
            results = _scu(conf).send(target, outgoing)
        except ScuError as e:
            fail(str(e))
    failed = [(uid, s) for uid, s in results if s != SUCCESS]
    for uid, status in failed:
        typer.echo(f"failed: {uid}: {describe(status)}", err=True)
    typer.echo(f"sent {len(results) - len(failed)} of {len(results)} instances to {to}")
    if failed:
        raise typer.Exit(1)


@app.command()
def find(
    target: TargetArgument,
    level: LevelOption = "STUDY",
    key: KeysOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (DICOM JSON model).")] = False,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """C-FIND a remote AE (Study Root; Patient Root at PATIENT level)."""
    from dicomvault.net.scu import ScuError

    conf = settings(config, root)
    keys = _keys(key)
    try:
        results = list(_scu(conf).find(_target(conf, target), _level(level), keys))
    except ScuError as e:
        fail(str(e))
    if as_json:
        print_json([ds.to_json_dict() for ds in results])
        return
    columns = list(dict.fromkeys([*keys, *(e.keyword for ds in results[:1] for e in ds)]))
    columns = [
        c
        for c in columns
        if c not in ("QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle")
    ]
    print_table(columns, ([str(ds.get(c, "") or "") for c in columns] for ds in results))


def _scu(conf: Settings, reuse: bool = False) -> Scu:
    from dicomvault.net.scu import Scu

    return Scu(conf, reuse=reuse)


def _report(verb: str, result: RetrieveResult) -> None:
    from dicomvault.net.status import describe

    typer.echo(
        f"{verb}: {describe(result.status)}; {result.completed} completed, "
        f"{result.failed} failed, {result.warning} warnings"
    )
    for uid in result.failed_uids:
        typer.echo(f"failed: {uid}", err=True)
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def get(
    target: TargetArgument,
    level: LevelOption = "STUDY",
    key: KeysOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write files here instead of archiving.")
    ] = None,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """C-GET from a remote AE into the archive (or --out DIR), each instance as the source
    holds it: an IMAGE-level C-FIND lists their SOP Classes first, and the C-GET proposes
    them in each transfer syntax (several C-GETs, by series, when they are many)."""
    from dicomvault.net.as_held import GetRequest, fetch_as_held, get_requests
    from dicomvault.net.bulk import BulkScu
    from dicomvault.net.scu import ScuError

    conf = settings(config, root)
    source = _target(conf, target)
    asked, keys = _level(level), _keys(key)
    try:
        lister = BulkScu(conf, source)
        try:
            requests = get_requests(asked, keys, lister.listing(keys))
        finally:
            lister.close()
        if out is not None:
            into, scu = out, _scu(conf)

            def to_files(r: GetRequest) -> RetrieveResult:
                return scu.get(source, r.level, r.keys, into, r.classes)

            result = fetch_as_held(requests, to_files)
        else:
            # Into the archive over the Rust SCU: the listener's receive path.
            with open_archive(config, root) as archive:
                bulk = BulkScu(conf, source, archive)

                def to_archive(r: GetRequest) -> RetrieveResult:
                    return bulk.get(r.level, r.keys, classes=r.classes, as_held=True)

                try:
                    result = fetch_as_held(requests, to_archive)
                finally:
                    bulk.close()
    except ScuError as e:
        fail(str(e))
    for uid, why in result.refused:
        typer.echo(f"refused: {uid}: {why}", err=True)
    for uid, sop_class in result.unproposed:
        typer.echo(
            f"refused: {uid}: of {sop_class}, not proposed in each transfer syntax "
            "(unlisted, or more classes in one series than a C-GET proposes so): it could "
            "have come in another syntax than the source holds it in",
            err=True,
        )
    _report("C-GET", result)


@app.command()
def move(
    target: TargetArgument,
    dest: Annotated[str, typer.Option("--dest", help="AE title the instances are sent to.")],
    level: LevelOption = "STUDY",
    key: KeysOption = None,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """C-MOVE from a remote AE to a destination AE."""
    from dicomvault.net.scu import ScuError

    conf = settings(config, root)
    try:
        result = _scu(conf).move(_target(conf, target), dest, _level(level), _keys(key))
    except ScuError as e:
        fail(str(e))
    _report("C-MOVE", result)


@app.command()
def commit(
    target: TargetArgument,
    key: KeysOption = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the report.")
    ] = 60.0,
    port: Annotated[
        int | None,
        typer.Option(
            "--port",
            help="Where the report may come (the peer's address for us); \\[dicom] port by "
            "default, where `serve`, when it runs, takes the report for this command.",
        ),
    ] = None,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """Storage Commitment: ask a remote AE to commit the archive's instances the keys select
    (a migration's source or target); exit 1 unless it committed every one."""
    from pynetdicom import AE

    from dicomvault.net.commitment import CommitmentError, request_commitment
    from dicomvault.net.status import describe
    from dicomvault.store.finder import Finder

    conf = settings(config, root)
    keys = _keys(key)
    with open_archive(config, root) as archive:
        finder = Finder(archive, bool(conf["index"]["case_insensitive_pn"]))
        instances = [
            (m["SOPClassUID"], m["SOPInstanceUID"])
            for m in finder.find(Level.IMAGE, keys, ["SOPClassUID"])
        ]
    if not instances:
        fail("no instance of the archive matches the keys")
    ae = AE(ae_title=str(conf["dicom"]["aet"]))
    ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = 30, timeout, timeout
    listen = (str(conf["dicom"]["host"]), port or int(conf["dicom"]["port"]))
    try:
        report = request_commitment(
            ae, _target(conf, target), instances, listen, timeout, conf.root
        )
    except (CommitmentError, OSError) as e:
        fail(f"storage commitment: {e}")
    typer.echo(f"committed {len(report.committed)} of {len(instances)} instances")
    for sop_class, sop_instance, reason in report.failed:
        typer.echo(f"not committed: {sop_instance} ({sop_class}): {describe(reason)}", err=True)
    if report.failed or len(report.committed) != len(instances):
        raise typer.Exit(1)
