"""``dicomvault audit``: the audit trail's records, filtered by patient, user and time."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Annotated

import typer

from dicomvault.audit import read_records
from dicomvault.cli.common import ConfigOption, RootOption, archive_for, fail, settings
from dicomvault.cli.output import print_table
from dicomvault.security.accounts import parse_duration

app = typer.Typer()


def _since(text: str) -> datetime:
    """A date (2026-01-31, 20260131), a UTC time (2026-01-31T08:00) or a span back from now
    (12h, 7d)."""
    for form in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return datetime.strptime(text, form).replace(tzinfo=timezone.utc)
        except ValueError:
            pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    except ValueError:
        pass
    try:
        return datetime.now(timezone.utc) - parse_duration(text)
    except ValueError:
        fail(
            f"--since: a date (2026-01-31), a time (2026-01-31T08:00) or a span (7d), not {text!r}"
        )


@app.command()
def audit(
    patient: Annotated[
        str | None, typer.Option("--patient", help="Records naming this PatientID.")
    ] = None,
    user: Annotated[
        str | None, typer.Option("--user", help="Records of this user or AE title.")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="From this date, time or span (7d).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the records as JSON lines.")
    ] = False,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """Read the audit trail: who stored, queried, retrieved, read, exported, sent or deleted
    which patient's data, and the logins. Opening the archive first records what a killed
    server had acknowledged but not yet recorded."""
    conf = settings(config, root)
    start = _since(since) if since else None
    with archive_for(conf) as archive:
        directory = archive.audit.directory
    found = [
        r
        for r in read_records(directory, start)
        if (patient is None or any(p.get("id") == patient for p in r.get("patients", [])))
        and (user is None or user in (r.get("user"), r.get("ae")))
    ]
    if as_json:
        for record in found:
            typer.echo(json.dumps(record, ensure_ascii=False))
        return
    print_table(
        ["time", "event", "outcome", "who", "patients", "what"],
        (
            [
                r["time"][:23],
                r["event"],
                r["outcome"],
                r.get("user")
                or (f"{r['ae']}@{r.get('address', '')}" if r.get("ae") else r.get("address", "")),
                " ".join(p["id"] for p in r.get("patients", [])),
                r.get("what", ""),
            ]
            for r in found
        ),
    )
