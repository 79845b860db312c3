"""The audit trail's records and files: ``<root>/audit/YYYY-MM-DD.jsonl`` (``[audit] path``),
one JSON object a line, one file a day (UTC, by when the line was written).

A record is appended with one ``write(2)`` before the operation it records is acknowledged
(so a killed server has lost none of them) and fsynced within a second. Instances the DICOM
listener acknowledges before they are indexed are the exception the pack log covers: their
records are written as the index applies them, from the log, before the index marks them
applied; a crash in between replays them at the next open, under the same record id (their
place in the log), and readers keep one record per id.

A record: ``id``, ``time`` (UTC), ``event`` (store, query, retrieve, read, export, send,
delete, migrate, login, logout), ``outcome`` (success, failure, denied), who (``user``; or
``ae`` and ``address``; ``via``: dicom, http or cli), ``patients`` ([{id, issuer, name}]),
``studies`` (Study Instance UIDs), ``what`` (the request, in a line) and ``detail``.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicomvault.index import Level

if TYPE_CHECKING:
    from dicomvault.audit.syslog import SyslogForwarder
    from dicomvault.index import Index, InstanceEntry, Record

SUFFIX = ".jsonl"
# Seconds between fsyncs of the day's file, while records are being written.
SYNC_INTERVAL = 1.0

Patient = dict[str, str]


@dataclass(frozen=True)
class Who:
    """Who did it: an authenticated user, or a DICOM peer (calling AE title and address)."""

    user: str | None = None
    ae: str | None = None
    address: str | None = None
    via: str = "cli"

    @classmethod
    def local(cls) -> Who:
        """The operating system user running a command."""
        try:
            return cls(user=getpass.getuser(), via="cli")
        except (KeyError, OSError):
            return cls(user=f"uid:{os.getuid()}", via="cli")

    @classmethod
    def from_source(cls, source: str) -> Who:
        """Who sent an instance, from the source its manifest record carries: ``AE@address``
        (the listener, or a peer a C-GET retrieved from), ``REST:user@address`` or
        ``STOW-RS:user@address`` (HTTP; no ``:user`` without authentication),
        ``import:PATH`` (a command)."""
        if source.startswith("import:"):
            return cls.local()
        head, at, address = source.rpartition("@")
        if not at:
            return cls(via="cli")
        for channel in ("REST", "STOW-RS"):
            if head == channel:
                return cls(address=address, via="http")
            if head.startswith(channel + ":"):
                return cls(user=head[len(channel) + 1 :], address=address, via="http")
        return cls(ae=head, address=address, via="dicom")


def patient_of(tags: Mapping[str, Any]) -> Patient:
    """A patient as records name it, from an index record's or an instance's tags."""
    found = {
        "id": str(tags.get("PatientID", "") or ""),
        "issuer": str(tags.get("IssuerOfPatientID", "") or ""),
        "name": str(tags.get("PatientName", "") or ""),
    }
    return {k: v for k, v in found.items() if v or k == "id"}


def about(index: Index, records: Iterable[Record]) -> tuple[list[Patient], list[str]]:
    """The patients and the studies that index records belong to (a patient's record names
    no study)."""
    patients: list[Patient] = []
    studies: list[str] = []
    for record in records:
        chain = {record.level: record}
        while record.level.parent is not None and record.parent is not None:
            parent = index.get(record.level.parent, record.parent)
            if parent is None:
                break
            chain[parent.level] = record = parent
        if Level.PATIENT in chain:
            patients.append(patient_of(chain[Level.PATIENT].tags))
        if Level.STUDY in chain:
            studies.append(chain[Level.STUDY].key)
    return unique_patients(patients), list(dict.fromkeys(studies))


def unique_patients(patients: Iterable[Patient]) -> list[Patient]:
    found: dict[tuple[str, str], Patient] = {}
    for p in patients:
        found.setdefault((p["id"], p.get("issuer", "")), p)
    return list(found.values())


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AuditTrail:
    """Appends records to the day's file (and hands them to syslog, when configured)."""

    def __init__(self, root: Path, settings: Mapping[str, Any]) -> None:
        self.directory = root / str(settings["path"])
        self._lock = threading.Lock()
        self._day: date | None = None
        self._fd: int | None = None
        self._dirty = False
        self._closing = threading.Event()
        self._syncer: threading.Thread | None = None
        self._syslog: SyslogForwarder | None = None
        if settings["syslog"]:
            from dicomvault.audit.syslog import SyslogForwarder

            self._syslog = SyslogForwarder(str(settings["syslog"]), str(settings["syslog_ca"]))

    def record(
        self,
        event: str,
        who: Who,
        *,
        outcome: str = "success",
        patients: Iterable[Patient] = (),
        studies: Iterable[str] = (),
        what: str = "",
        detail: Mapping[str, Any] | None = None,
        record_id: str | None = None,
        time: str | None = None,
    ) -> dict[str, Any]:
        """Writes one record; returns it."""
        record = self.make(
            event,
            who,
            outcome=outcome,
            patients=patients,
            studies=studies,
            what=what,
            detail=detail,
            record_id=record_id,
            time=time,
        )
        self.write([record])
        return record

    @staticmethod
    def make(
        event: str,
        who: Who,
        *,
        outcome: str = "success",
        patients: Iterable[Patient] = (),
        studies: Iterable[str] = (),
        what: str = "",
        detail: Mapping[str, Any] | None = None,
        record_id: str | None = None,
        time: str | None = None,
    ) -> dict[str, Any]:
        record: dict[str, Any] = {
            "id": record_id or uuid.uuid4().hex,
            "time": time or _stamp(utc_now()),
            "event": event,
            "outcome": outcome,
            "via": who.via,
        }
        for key in ("user", "ae", "address"):
            if (value := getattr(who, key)) is not None:
                record[key] = value
        record["patients"] = unique_patients(patients)
        record["studies"] = list(dict.fromkeys(s for s in studies if s))
        if what:
            record["what"] = what
        if detail:
            record["detail"] = dict(detail)
        return record

    def stored(
        self, entries: Sequence[InstanceEntry], positions: Sequence[tuple[int, int] | None]
    ) -> None:
        """The records of instances stored: one per instance, its id its place in the pack
        log (``None``: a duplicate that was not logged), its time when it was received."""
        records = []
        for entry, position in zip(entries, positions, strict=True):
            tags = entry.tags
            records.append(
                self.make(
                    "store",
                    Who.from_source(entry.source),
                    patients=[patient_of(tags)],
                    studies=[str(tags.get("StudyInstanceUID", ""))],
                    what=f"store {tags.get('SOPInstanceUID', '')}",
                    detail={
                        "source": entry.source,
                        "sop_class": str(tags.get("SOPClassUID", "")),
                        "instance": str(tags.get("SOPInstanceUID", "")),
                        "size": entry.size,
                    },
                    record_id=f"log:{position[0]}:{position[1]}" if position else None,
                    time=entry.received_at,
                )
            )
        if records:
            self.write(records)

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        """Appends the records to today's file in one write: they are in it when this
        returns (a killed process loses none), on disk within SYNC_INTERVAL."""
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
        with self._lock:
            fd = self._today()
            written = os.write(fd, data)
            while written < len(data):  # a regular file takes it all, barring a full disk
                written += os.write(fd, data[written:])
            self._dirty = True
            if self._syncer is None:
                self._syncer = threading.Thread(target=self._sync_loop, name="audit", daemon=True)
                self._syncer.start()
        if self._syslog is not None:
            self._syslog.send(records)

    def _today(self) -> int:
        today = utc_now().date()
        if self._fd is None or today != self._day:
            if self._fd is not None:
                os.fsync(self._fd)
                os.close(self._fd)
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = self.directory / f"{today.isoformat()}{SUFFIX}"
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._day = today
        return self._fd

    def sync(self) -> None:
        with self._lock:
            if self._fd is not None and self._dirty:
                os.fsync(self._fd)
                self._dirty = False

    def _sync_loop(self) -> None:
        while not self._closing.wait(SYNC_INTERVAL):
            with contextlib.suppress(OSError):  # the next write reports a failing disk
                self.sync()

    def close(self) -> None:
        self._closing.set()
        if self._syncer is not None:
            self._syncer.join()
        self.sync()
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        if self._syslog is not None:
            self._syslog.close()


def read_records(directory: Path, since: datetime | None = None) -> Iterator[dict[str, Any]]:
    """The records of the trail in ``directory``, oldest file first, each id once; ``since``
    leaves out records older than it (a file is never older than its records: it is named by
    the day a record was written, not the day it tells of)."""
    seen: set[str] = set()
    first = (since - timedelta(days=1)).date().isoformat() if since else ""
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        if path.stem < first:
            continue
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:  # a line torn by a crash in mid-write
                    continue
                if record.get("id") in seen:
                    continue
                seen.add(record.get("id", ""))
                if since is not None and record.get("time", "") < _stamp(since):
                    continue
                yield record
