"""The migration journal: one row per (source, item) with its state, expected and received
instance counts, attempts and last error (an item is a study of a PACS, or a file of another
archive's storage) — kept where the archive's index is: an LMDB environment under the archive
root, or a table of the PostgreSQL index (``pg_journal``), which every node sharing the
archive sees at once, so that a migration one node started can be followed, or resumed, from
another.

States: ``pending`` (enumerated), ``running`` (a retrieve started), ``done`` (retrieved, not yet
verified), ``verified`` (the archive holds every SOP Instance UID the source lists, or the
file's instance), ``failed`` (retries exhausted, gone from the source, or unreadable),
``skipped`` (a file that holds no DICOM instance). A change is committed before ``put``
returns, or, through a ``Batcher``, with the others of the last ~100 ms in one transaction; a
killed migration resumes from what the journal says (a study whose ``verified`` had not been
committed yet is fetched again, nothing is lost).
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lmdb
import msgpack

from dicomvault.config import Settings
from dicomvault.index.backends import index_on_postgresql, index_url

STATES = ("pending", "running", "done", "verified", "failed", "skipped")
# What needs nothing more done.
SETTLED = ("verified", "skipped")


@dataclass
class JournalRow:
    source: str
    item: str
    state: str = "pending"
    study_date: str = ""
    expected: int = 0
    received: int = 0
    attempts: int = 0
    error: str = ""
    updated: float = field(default_factory=time.time)


class Journal(ABC):
    """A migration journal; close it (or use ``with``)."""

    @abstractmethod
    def get(self, source: str, item: str) -> JournalRow:
        """The row of ``item``, a new (pending) one if it has none yet."""

    @abstractmethod
    def put_many(self, rows: Iterable[JournalRow]) -> None:
        """Commits rows in one transaction (each stamped ``updated`` now)."""

    @abstractmethod
    def rows(self, source: str) -> Iterator[JournalRow]:
        """The rows of ``source``, by item."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def enumerated(self, source: str, study: str, study_date: str, expected: int) -> JournalRow:
        """Records a study the source lists; a known one keeps its state and attempts."""
        row = self.get(source, study)
        row.study_date, row.expected = study_date, expected
        self.put(row)
        return row

    def put(self, row: JournalRow) -> None:
        self.put_many([row])

    def unsettled(self, source: str) -> list[JournalRow]:
        """The rows of ``source`` that still need something done (or failed)."""
        return [r for r in self.rows(source) if r.state not in SETTLED]


def open_journal(settings: Settings) -> Journal:
    """The journal of the archive ``settings`` configure, beside its index."""
    if index_on_postgresql(settings):
        from dicomvault.migrate.pg_journal import PgJournal

        return PgJournal(index_url(settings))
    return LmdbJournal(settings.root)


def rows_of(settings: Settings, source: str) -> list[JournalRow]:
    with open_journal(settings) as journal:
        return list(journal.rows(source))


def encode(row: JournalRow) -> bytes:
    return msgpack.packb(asdict(row))


def decode(raw: bytes) -> JournalRow:
    return JournalRow(**msgpack.unpackb(raw))


class LmdbJournal(Journal):
    """The journal of an archive whose index is on LMDB: ``<root>/migrate``."""

    def __init__(self, root: Path) -> None:
        path = root / "migrate"
        path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(path), map_size=1 << 34, max_dbs=2, subdir=True)
        self.db = self.env.open_db(b"studies")

    def close(self) -> None:
        self.env.close()

    @staticmethod
    def _key(source: str, item: str) -> bytes:
        return f"{source}\0{item}".encode()

    def get(self, source: str, item: str) -> JournalRow:
        with self.env.begin(db=self.db) as txn:
            raw = txn.get(self._key(source, item))
        return decode(raw) if raw is not None else JournalRow(source, item)

    def put_many(self, rows: Iterable[JournalRow]) -> None:
        now = time.time()
        with self.env.begin(write=True, db=self.db) as txn:
            for row in rows:
                row.updated = now
                txn.put(self._key(row.source, row.item), encode(row))

    def rows(self, source: str) -> Iterator[JournalRow]:
        prefix = f"{source}\0".encode()
        with self.env.begin(db=self.db) as txn:
            cursor = txn.cursor()
            if cursor.set_range(prefix):
                for key, raw in cursor:
                    if not key.startswith(prefix):
                        break
                    yield decode(raw)


class Batcher:
    """Commits rows to ``journal`` from a thread of its own, those that arrived in the last
    ``interval`` seconds in one transaction (one fsync), the latest version of each row."""

    def __init__(self, journal: Journal, interval: float = 0.1) -> None:
        self.journal, self.interval = journal, interval
        self._waiting: dict[tuple[str, str], JournalRow] = {}
        self._changed = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="journal", daemon=True)
        self._thread.start()

    def put(self, row: JournalRow) -> None:
        with self._changed:
            self._waiting[(row.source, row.item)] = JournalRow(**asdict(row))
            self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._waiting and not self._closing:
                    self._changed.wait()
                if not self._waiting:
                    return
                # Gathers what arrives meanwhile; closing commits at once.
                self._changed.wait_for(lambda: self._closing, timeout=self.interval)
                rows, self._waiting = list(self._waiting.values()), {}
            self.journal.put_many(rows)

    def close(self) -> None:
        """Commits what is waiting and stops."""
        with self._changed:
            self._closing = True
            self._changed.notify()
        self._thread.join()
