"""The ``dicomvault`` command: one Typer application assembling the command groups."""

from __future__ import annotations

import typer

from dicomvault.cli import archive, audit, bench, dicom, migrate, users
from dicomvault.cli.common import setup_logging

app = typer.Typer(
    name="dicomvault",
    help="dicomvault: a DICOM archive engine (content-addressed packs, LMDB index, DICOM "
    "services).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for group in (archive.app, dicom.app, audit.app):
    app.registered_commands.extend(group.registered_commands)
app.add_typer(bench.app, name="bench")
app.add_typer(migrate.app, name="migrate")
app.add_typer(users.users, name="user")
app.add_typer(users.tokens, name="token")


def main() -> None:
    setup_logging()
    app()
