"""The migration journal: one row per (source, study) in an LMDB environment under the archive
root, with its state, expected and received instance counts, attempts and last error.

States: ``pending`` (enumerated), ``running`` (a retrieve started), ``done`` (retrieved, not yet
verified), ``verified`` (the archive holds every SOP Instance UID the source lists), ``failed``
(retries exhausted, or gone from the source). Every change is committed at once, so a killed
migration resumes from what the journal says.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lmdb
import msgpack

STATES = ("pending", "running", "done", "verified", "failed")


@dataclass
class StudyRow:
    source: str
    study: str
    state: str = "pending"
    study_date: str = ""
    expected: int = 0
    received: int = 0
    attempts: int = 0
    error: str = ""
    updated: float = field(default_factory=time.time)


class Journal:
    """The journal of an archive (``<root>/migrate``)."""

    def __init__(self, root: Path) -> None:
        path = root / "migrate"
        path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(path), map_size=1 << 34, max_dbs=2, subdir=True)
        self.db = self.env.open_db(b"studies")

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @staticmethod
    def _key(source: str, study: str) -> bytes:
        return f"{source}\0{study}".encode()

    def get(self, source: str, study: str) -> StudyRow | None:
        with self.env.begin(db=self.db) as txn:
            raw = txn.get(self._key(source, study))
        return StudyRow(**msgpack.unpackb(raw)) if raw is not None else None

    def enumerated(self, source: str, study: str, study_date: str, expected: int) -> StudyRow:
        """Records a study the source lists; a known one keeps its state and attempts."""
        row = self.get(source, study) or StudyRow(source, study)
        row.study_date, row.expected = study_date, expected
        self.put(row)
        return row

    def put(self, row: StudyRow) -> None:
        row.updated = time.time()
        with self.env.begin(write=True, db=self.db) as txn:
            txn.put(self._key(row.source, row.study), msgpack.packb(asdict(row)))

    @classmethod
    def rows_of(cls, root: Path, source: str) -> list[StudyRow]:
        with cls(root) as journal:
            return list(journal.rows(source))

    def rows(self, source: str) -> Iterator[StudyRow]:
        prefix = f"{source}\0".encode()
        with self.env.begin(db=self.db) as txn:
            cursor = txn.cursor()
            if cursor.set_range(prefix):
                for key, raw in cursor:
                    if not key.startswith(prefix):
                        break
                    yield StudyRow(**msgpack.unpackb(raw))
