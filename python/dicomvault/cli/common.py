"""Options every command shares (``--config``, ``--root``) and opening the archive they name."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from dicomvault import config
from dicomvault.audit import AuditTrail, Who
from dicomvault.index import Record
from dicomvault.index.backends import BackendError
from dicomvault.security.logsafe import EscapingFormatter
from dicomvault.store import Archive
from dicomvault.store.backends import StorageError, require_packs

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", help="TOML configuration file (default: ./dicomvault.toml if present)."
    ),
]
RootOption = Annotated[
    Path | None,
    typer.Option(
        "--root", help="Archive root directory (default: \\[archive] root, dicomvault-data)."
    ),
]


def settings(config_file: Path | None, root: Path | None) -> config.Settings:
    try:
        return config.load(config_file, root=root)
    except config.ConfigError as e:
        fail(str(e))


def open_archive(
    config_file: Path | None,
    root: Path | None,
    *,
    exclusive: bool = False,
    packs_only: str | None = None,
) -> Archive:
    return archive_for(settings(config_file, root), exclusive=exclusive, packs_only=packs_only)


def archive_for(
    conf: config.Settings,
    *,
    exclusive: bool = False,
    packs_only: str | None = None,
    serving: str | None = None,
) -> Archive:
    """The archive ``conf`` configures; refused up front when the command (``packs_only``
    names it) works on packs and the archive is not on them. ``serving``: for ``serve``, the
    address it serves DICOM at."""
    try:
        if packs_only is not None:
            require_packs(conf, packs_only)
        return Archive(conf, exclusive=exclusive, serving=serving)
    except (BlockingIOError, BackendError, StorageError) as e:
        fail(str(e))
    except OSError as e:  # the storage cannot be reached or read (a bucket, a disk)
        fail(f"the archive cannot be opened: {e}")


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def setup_logging(verbose: bool = False) -> None:
    """One sink for every logger (the Rust listener's and uvicorn's too), escaping control
    characters in messages: what a peer sends cannot forge a log line."""
    handler = logging.StreamHandler()
    handler.setFormatter(EscapingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


def audited(archive: Archive, event: str, records: Sequence[Record] | None, what: str) -> None:
    """A command's audit record: the local user, and the patients and studies of ``records``
    (None: every one, which the record says rather than lists)."""
    patients, studies = archive.audit_subjects(records or [])
    archive.audit.record(
        event,
        Who.local(),
        patients=patients,
        studies=studies,
        what=what,
        detail={"all": True} if records is None else None,
    )


def recorded(conf: config.Settings, event: str, what: str, **detail: str) -> None:
    """A command's audit record, written without opening the archive (which a server may
    hold): the local user, about no patient."""
    trail = AuditTrail(conf.root, conf["audit"])
    try:
        trail.record(event, Who.local(), what=what, detail=detail)
    finally:
        trail.close()
