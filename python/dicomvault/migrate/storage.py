"""Migration from another archive's storage area: Orthanc's StorageDirectory.

Orthanc keeps each attachment in a file named by its UUID under two levels of folders, and
lists them in its index (SQLite, table AttachedFiles): type 1 is the instance as Orthanc holds
it, other types are derived (type 3, the instance up to its Pixel Data, would pass for an
instance of its own). A file is plain, or zlib-compressed behind an 8-byte little-endian
uncompressed length when ``StorageCompression`` is on. Each file is a journal item: ingested
(byte for byte what Orthanc holds, checked against the MD5 in Orthanc's index) and
``verified`` once durable in the archive, ``skipped`` when it is not an instance, ``failed``
with the reason when it cannot be read. A second run resumes with the files not settled yet.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import zlib
from collections.abc import Callable
from pathlib import Path

from dicomvault.index import CommitOutcome
from dicomvault.migrate.journal import SETTLED, Journal, JournalRow
from dicomvault.store import Archive
from dicomvault.store.applier import Pending

log = logging.getLogger("dicomvault.migrate")

# Outstanding commits at most; each group commit takes what has queued meanwhile.
WINDOW = 256
DICOM_ATTACHMENT = 1


def orthanc_attachments(index: Path) -> dict[str, tuple[int, str]]:
    """Orthanc's attachments by UUID: (file type, MD5 of the uncompressed content)."""
    with sqlite3.connect(f"file:{index}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT uuid, fileType, uncompressedMD5 FROM AttachedFiles")
        return {uuid: (file_type, md5 or "") for uuid, file_type, md5 in rows}


def orthanc_attachment(data: bytes) -> bytes | None:
    """The DICOM instance an Orthanc attachment holds, or None when it holds none."""
    if data[128:132] == b"DICM":
        return data
    if len(data) > 8:
        try:
            inflated = zlib.decompress(data[8:])
        except zlib.error:
            return None
        if len(inflated) == int.from_bytes(data[:8], "little") and inflated[128:132] == b"DICM":
            return inflated
    return None


def source_name(directory: Path) -> str:
    return f"orthanc-storage:{directory.resolve()}"


class OrthancStorageMigration:
    """Moves the instances of an Orthanc StorageDirectory into ``archive``."""

    def __init__(
        self,
        archive: Archive,
        journal: Journal,
        directory: Path,
        index: Path,
        report: Callable[[str], None] = log.info,
    ) -> None:
        self.archive, self.journal, self.directory = archive, journal, directory
        self.attachments = orthanc_attachments(index)
        self.source = source_name(directory)
        self.report = report

    def run(self) -> list[JournalRow]:
        """Migrates every file not settled yet; returns the rows still not settled."""
        waiting: list[tuple[JournalRow, Pending[CommitOutcome]]] = []
        files = sorted(p for p in self.directory.rglob("*") if p.is_file())
        for count, path in enumerate(files, 1):
            row = self.journal.get(self.source, str(path.relative_to(self.directory)))
            if row.state in SETTLED:
                continue
            row.attempts += 1
            future = self._ingest(path, row)
            if future is not None:
                waiting.append((row, future))
            if len(waiting) >= WINDOW:
                self._settle(waiting)
            if count % 1000 == 0:
                self.report(f"{count}/{len(files)} files")
        self._settle(waiting)
        return self.journal.unsettled(self.source)

    def _ingest(self, path: Path, row: JournalRow) -> Pending[CommitOutcome] | None:
        file_type, md5 = self.attachments.get(path.name, (0, ""))
        if file_type != DICOM_ATTACHMENT:
            why = f"attachment of type {file_type}" if file_type else "not in Orthanc's index"
            row.state, row.error = "skipped", why
            self.journal.put(row)
            return None
        try:
            instance = orthanc_attachment(path.read_bytes())
        except OSError as e:
            instance, row.error = None, str(e)
        else:
            if instance is None:
                row.error = "neither DICOM nor a zlib-compressed DICOM file"
            elif md5 and hashlib.md5(instance).hexdigest() != md5:
                instance, row.error = None, "content does not match the MD5 in Orthanc's index"
        if instance is None:
            row.state = "failed"
            self.journal.put(row)
            return None
        outcome, future = self.archive.ingest_bytes(instance, self.source, str(path))
        if future is None:
            row.state, row.error = "failed", outcome.reason or "not stored"
            self.journal.put(row)
        return future

    def _settle(self, waiting: list[tuple[JournalRow, Pending[CommitOutcome]]]) -> None:
        for row, future in waiting:
            try:
                future.result()
            except Exception as e:  # the index or the disk: the instance is not in
                row.state, row.error = "failed", f"commit failed: {e}"
            else:
                row.state, row.error, row.received = "verified", "", 1
            self.journal.put(row)
        waiting.clear()
