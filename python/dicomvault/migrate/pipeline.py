"""The migration pipeline every source shares (a PACS over DIMSE, a DICOMweb server):

1. enumeration and listing (a thread): the source's studies, StudyDate window by window (a
   window the source caps is split in two until it is not, or is a single day, which is
   reported), each listed as it is found — the SOP Instance UIDs the source holds for it;
2. retrieval (``parallel`` threads, each with its own connection to the source); a large
   study is retrieved in parts on several connections at once, small ones listed together
   in one request, when the source can;
3. verification (a thread): the listing against the archive's index, no round trip to the
   source; a study not complete is retried with back-off, ``retries`` times at most.

Each stage runs ahead of the next (listing at most a few studies ahead), so no round trip
sits between two studies' retrievals; a connection is held only while it has work (a source
serves few at once: Orthanc 4 associations). The journal is written in batches
(``journal.Batcher``); a verified study is never fetched again, so a migration killed at any
point resumes where it stopped, and ``migrate report`` lists every study not verified, and
why.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from dicomvault.index import Level
from dicomvault.migrate.journal import SETTLED, Batcher, Journal, JournalRow
from dicomvault.migrate.live import Progress
from dicomvault.store import Archive

log = logging.getLogger("dicomvault.migrate")

FIRST_DAY = dt.date(1900, 1, 1)
GONE = "no longer on the source (it lists no instance)"
T = TypeVar("T")
# A connection idle this long is released (opening one again costs a few ms).
IDLE_S = 0.2
# Studies listed in one request at most, and the instances they may hold.
LIST_STUDIES = 64
LIST_INSTANCES = 1000


class MigrationError(RuntimeError):
    """The migration cannot go on (the source refuses what every study needs)."""


class SourceError(RuntimeError):
    """The source failed a request (unreachable, refused, malformed answer); the message
    says how."""


@dataclass
class Plan:
    method: str = "get"
    since: dt.date = FIRST_DAY
    until: dt.date = field(default_factory=dt.date.today)
    keys: dict[str, str] = field(default_factory=dict)
    find_limit: int = 500
    retries: int = 2
    backoff_s: float = 1.0
    parallel: int = 1
    # Studies started per minute at most (0: no limit), to spare the source.
    rate_limit: float = 0
    # Whether studies no date window finds (no StudyDate, or one past ``until``) are looked
    # for too: when no range was asked for.
    undated: bool = True


def dicom_date(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


def windowed(
    plan: Plan,
    query: Callable[[dt.date | None, dt.date | None], tuple[list[T], bool]],
    report: Callable[[str], None],
    date_of: Callable[[T], str],
) -> Iterator[T]:
    """What ``query(first day, last day) -> (matches, capped)`` finds in the plan's date
    range, window by window: a capped window (the source's limit reached, or its answer cut
    short) is split in two until it is not, or is a single day (then reported). Then, with
    ``plan.undated``, what ``query(None, None)`` (no date asked for, at most ``find_limit``
    matches) finds outside the range: no StudyDate, or an unreadable or later one, which no
    window matches (PS3.4 C.2.2.2.5); reported when the source has more than that."""
    windows = [(plan.since, plan.until)]
    while windows:
        low, high = windows.pop()
        matches, capped = query(low, high)
        capped = capped or len(matches) >= plan.find_limit
        if capped and low < high:
            middle = low + dt.timedelta(days=(high - low).days // 2)
            windows += [(middle + dt.timedelta(days=1), high), (low, middle)]
            continue
        if capped:
            report(
                f"{dicom_date(low)}: {len(matches)} studies, the source's limit: "
                "some may be missing from this day"
            )
        yield from matches
    if not plan.undated:
        return
    window = (dicom_date(plan.since), dicom_date(plan.until))
    matches, capped = query(None, None)
    outside = [m for m in matches if not _within(date_of(m), *window)]
    if capped or len(matches) >= plan.find_limit:
        report(
            f"asked without a date, the source lists more than {len(matches)} studies: any "
            f"without a StudyDate in {window[0]}-{window[1]} beyond those may be missing "
            "(migrate them by their keys: -k)"
        )
    yield from outside


def _within(date: str, first: str, last: str) -> bool:
    """Whether a StudyDate value is a date a window of ``first``-``last`` matched."""
    date = date.strip()
    return len(date) == 8 and date.isdigit() and first <= date <= last


@dataclass
class Study:
    """A study on its way through the pipeline: its journal row, what the source holds for it
    (SOP Instance UID -> Series Instance UID, "" when not said; None until listed), the parts
    of its retrieval still running and what went wrong with them."""

    row: JournalRow
    listed: dict[str, str] | None = None
    parts_left: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def error(self) -> str:
        return "; ".join(self.errors)


# Retrieve keys of a part of a study (a list of series, or of one series' instances).
Part = dict[str, str]
# What a retrieving thread takes: a study (whole, or one of its parts) or a group of studies
# retrieved together; whether it is the first request of their attempt.
Work = tuple[list[Study], Part | None, bool]


class Stop(Exception):
    """Raised in a stage to end the pipeline (the migration failed as a whole)."""


class Migration:
    """Moves a source's studies into ``archive``, keeping ``journal`` up to date; a source
    says how it enumerates (``studies``), lists (``source_instances``) and retrieves
    (``retrieve``) them. ``on_study(progress, row)`` hears of every study finished."""

    def __init__(
        self,
        archive: Archive,
        journal: Journal,
        name: str,
        report: Callable[[str], None] = log.info,
        on_study: Callable[[Progress, JournalRow], None] | None = None,
    ) -> None:
        self.archive, self.journal, self.name = archive, journal, name
        self.report, self.on_study = report, on_study

    # What a source implements ------------------------------------------------------------

    # What ``report`` calls the source.
    title = "the source"

    def studies(self, plan: Plan) -> Iterator[tuple[str, str, int]]:
        """(Study Instance UID, StudyDate, instances it says it has (0: unknown)) of every
        study in the plan's range."""
        raise NotImplementedError

    def source_instances(self, study: str) -> dict[str, str]:
        """SOP Instance UID -> Series Instance UID ("" when not said) of every instance the
        source holds for ``study``; SourceError when it cannot say."""
        raise NotImplementedError

    def list_many(self, studies: list[str]) -> dict[str, dict[str, str] | SourceError]:
        """``source_instances`` of several studies (a source may list them in one request),
        or why a study's cannot be said."""
        listed: dict[str, dict[str, str] | SourceError] = {}
        for study in studies:
            try:
                listed[study] = self.source_instances(study)
            except SourceError as e:
                listed[study] = e
        return listed

    def parts(self, study: Study, plan: Plan) -> list[Part]:
        """The parts a study is retrieved in, on as many connections at once ([]: whole)."""
        return []

    def retrieve(self, study: Study, plan: Plan, part: Part | None = None) -> str:
        """Retrieves a study (or a part of it) into the archive; an error message, or ""
        when it went well. MigrationError when no study can be."""
        raise NotImplementedError

    def together(self, studies: list[Study], plan: Plan) -> list[list[Study]]:
        """Studies listed together, in the groups they are retrieved in: each alone, unless
        the source takes several in one request (``retrieve_together``)."""
        return [[study] for study in studies]

    def retrieve_together(self, studies: list[Study], plan: Plan) -> str:
        """Retrieves a group ``together`` made in one request; as ``retrieve``."""
        raise NotImplementedError

    def release(self) -> None:
        """This thread is idle for a while: its connections to the source may go."""

    # Shared ---------------------------------------------------------------------------------

    def enumerate(self, plan: Plan) -> int:
        """Puts every study of the source in the plan's date range into the journal."""
        found = 0
        for uid, date, expected in self.studies(plan):
            self.journal.enumerated(self.name, uid, date, expected)
            found += 1
        return found

    def archive_instances(self, study: str) -> set[str]:
        matches = self.archive.matches(Level.IMAGE, {"StudyInstanceUID": study}, ["SOPInstanceUID"])
        return {m["SOPInstanceUID"] for m in matches}

    def check(self, study: Study) -> bool:
        """Compares the archive with the source's listing; records the outcome in the row
        (verified, or why not). True when nothing more can be done for it now."""
        row = study.row
        if study.listed is None:
            try:
                study.listed = self.source_instances(row.item)
            except SourceError as e:
                row.state, row.error = "failed", f"verify: {e}"
                return False
        held = self.archive_instances(row.item)
        listed = study.listed.keys()
        row.received = len(listed & held)
        if not listed:
            row.state, row.error = "failed", GONE
            return True
        missing = listed - held
        if missing:
            row.state = "failed"
            row.error = study.error or f"{len(missing)} of {len(listed)} instances missing"
            return False
        row.state, row.error = "verified", ""
        return True

    def compare(self, plan: Plan) -> list[JournalRow]:
        """Verification only: every study of the source (and of the journal) against the
        archive, nothing retrieved."""
        self.enumerate(plan)
        for row in list(self.journal.rows(self.name)):
            if row.state != "verified" and not self.check(Study(row)):
                row.state = "pending"
            self.journal.put(row)
        return self.journal.unsettled(self.name)

    def run(self, plan: Plan, progress: Progress | None = None) -> list[JournalRow]:
        """Migrates every study of the source and of the journal not yet verified; returns
        those still not."""
        return _Pipeline(self, plan, progress or Progress(self.name)).run()


class Batch:
    """Studies listed together: a few at first, so that retrieval starts at once, then more,
    up to ``LIST_STUDIES`` studies or ``LIST_INSTANCES`` instances (as the source counts them)."""

    def __init__(self) -> None:
        self.rows: list[JournalRow] = []
        self.limit = 2

    def add(self, row: JournalRow) -> bool:
        """Adds a study; whether the batch is full."""
        self.rows.append(row)
        instances = sum(max(1, r.expected) for r in self.rows)
        return len(self.rows) >= self.limit or instances >= LIST_INSTANCES

    def take(self) -> list[JournalRow]:
        rows, self.rows = self.rows, []
        self.limit = min(2 * self.limit, LIST_STUDIES)
        return rows


class _Pipeline:
    """One run of the pipeline: its queues, threads and counts."""

    def __init__(self, migration: Migration, plan: Plan, progress: Progress) -> None:
        self.m, self.plan, self.progress = migration, plan, progress
        self.batcher = Batcher(migration.journal)
        # Listing runs this far ahead of retrieval, no further.
        self.to_retrieve: queue.Queue[Work | None] = queue.Queue(maxsize=4 * plan.parallel + 4)
        self.to_verify: queue.Queue[Study | None] = queue.Queue()
        self.lock = threading.Lock()
        self.outstanding = 0
        self.enumerated = False
        self.finished = threading.Event()
        self.failure: BaseException | None = None
        self.next_start = time.monotonic()
        # The rows of studies queued and not yet settled, by Study Instance UID.
        self.active: dict[str, JournalRow] = {}

    def run(self) -> list[JournalRow]:
        m, plan = self.m, self.plan
        stages = [("migrate-query", self.query), ("migrate-verify", self.verify)]
        stages += [(f"migrate-retrieve-{n}", self.retrieve) for n in range(plan.parallel)]
        threads = [threading.Thread(target=self.guard, args=(s,), name=n) for n, s in stages]
        for t in threads:
            t.start()
        self.finished.wait()
        for q, count in ((self.to_verify, 1), (self.to_retrieve, plan.parallel)):
            _drain(q)
            for _ in range(count):
                q.put(None)
        for t in threads:
            t.join()
        if self.failure is not None:
            # The migration ended with their retrieval unfinished: not running any more.
            with self.lock:
                active = list(self.active.values())
            for row in active:
                if row.state == "running":
                    row.state, row.error = "failed", f"stopped: {self.failure}"
                    self.batcher.put(row)
        self.batcher.close()
        self.progress.finish()
        if self.failure is not None:
            raise self.failure
        return m.journal.unsettled(m.name)

    def guard(self, stage: Callable[[], None]) -> None:
        """Runs a stage; its failure ends the pipeline and is raised by ``run``."""
        try:
            stage()
        except Stop:
            pass
        except BaseException as e:
            with self.lock:
                self.failure = self.failure or e
            self.finished.set()

    def submit(self, rows: list[JournalRow]) -> None:
        """Lists studies the source has (or had) and hands them on; blocks while retrieval is
        far enough behind."""
        if self.finished.is_set():
            raise Stop
        with self.lock:
            self.outstanding += len(rows)
            self.progress.total += len(rows)
        listed = self.m.list_many([row.item for row in rows])
        wanted = []
        for row in rows:
            study = Study(row)
            listing = listed[row.item]
            if isinstance(listing, SourceError):
                log.warning("listing %s: %s (listed again once retrieved)", row.item, listing)
            else:
                study.listed = listing
            if study.listed == {} or row.state == "done":
                # Gone from the source, or retrieved by an earlier run: only to verify.
                self.to_verify.put(study)
            else:
                wanted.append(study)
        for group in self.m.together(wanted, self.plan):
            self.queue(group)

    def queue(self, studies: list[Study]) -> None:
        """Starts an attempt at retrieving a study (its parts go to the retrieving threads),
        or a group of studies in one request."""
        if self.finished.is_set():
            return  # a retry's timer, after the migration ended
        for study in studies:
            study.row.state, study.row.attempts = "running", study.row.attempts + 1
            self.batcher.put(study.row)
        with self.lock:
            self.active.update((study.row.item, study.row) for study in studies)
        parts: list[Part | None] = [None]
        if len(studies) == 1:
            parts = list(self.m.parts(studies[0], self.plan)) or parts
        with self.lock:
            for study in studies:
                study.parts_left, study.errors = len(parts), []
        for n, part in enumerate(parts):
            item = (studies, part, n == 0)
            try:
                self.to_retrieve.put(item, timeout=IDLE_S)
            except queue.Full:
                # Retrieval is behind: no association is needed here until it catches up.
                self.m.release()
                self.to_retrieve.put(item)

    def settled(self, study: Study) -> None:
        """A study is done with (verified, or given up on)."""
        row = study.row
        self.batcher.put(row)
        size = 0
        if row.state == "verified":
            record = self.m.archive.record(Level.STUDY, row.item)
            size = record.size if record else 0
        with self.lock:
            self.active.pop(row.item, None)
            self.outstanding -= 1
            self.progress.study_done(row.state == "verified", row.received, size)
            done = self.enumerated and self.outstanding == 0
        if self.m.on_study is not None:
            self.m.on_study(self.progress, row)
        if done:
            self.finished.set()

    def query(self) -> None:
        """Enumerates the source window by window, listing each study as it is found: one
        association, ahead of retrieval."""
        m = self.m
        known = {r.item: r for r in m.journal.rows(m.name)}
        listed = 0
        batch = Batch()
        for uid, date, expected in m.studies(self.plan):
            row = known.pop(uid, None) or JournalRow(m.name, uid)
            row.study_date, row.expected = date, expected
            listed += 1
            self.batcher.put(row)
            if row.state not in SETTLED and batch.add(row):
                self.submit(batch.take())
        # Studies of an earlier run the source no longer lists: the listing says so.
        for row in known.values():
            if row.state not in SETTLED and batch.add(row):
                self.submit(batch.take())
        if batch.rows:
            self.submit(batch.take())
        m.release()
        m.report(f"{m.title} lists {listed} studies")
        with self.lock:
            self.enumerated = True
            self.progress.enumerated = True
            done = self.outstanding == 0
        if done:
            self.finished.set()

    def retrieve(self) -> None:
        plan = self.plan
        while (item := self._next()) is not None:
            studies, part, first = item
            if plan.rate_limit and first:
                with self.lock:
                    start = max(self.next_start, time.monotonic())
                    self.next_start = start + len(studies) * 60 / plan.rate_limit
                time.sleep(max(0.0, start - time.monotonic()))
            if len(studies) == 1:
                error = self.m.retrieve(studies[0], plan, part)
            else:
                error = self.m.retrieve_together(studies, plan)
            with self.lock:
                whole = []
                for study in studies:
                    if error:
                        study.errors.append(error)
                    study.parts_left -= 1
                    if study.parts_left == 0:
                        whole.append(study)
            for study in whole:
                if not study.errors:
                    study.row.state = "done"
                self.to_verify.put(study)

    def _next(self) -> Work | None:
        """The next part to retrieve; this thread's association is released while there is
        none (the source may serve few at once, and the query thread needs one)."""
        try:
            return self.to_retrieve.get(timeout=IDLE_S)
        except queue.Empty:
            self.m.release()
            return self.to_retrieve.get()

    def verify(self) -> None:
        plan = self.plan
        while (study := self.to_verify.get()) is not None:
            relisted = study.listed is None
            final = self.m.check(study)
            if relisted:
                self.m.release()
            row = study.row
            if final or row.attempts > plan.retries:
                self.settled(study)
                continue
            self.batcher.put(row)
            delay = plan.backoff_s * 2 ** max(0, row.attempts - 1)
            retry = threading.Timer(delay, self.queue, ([study],))
            retry.daemon = True
            retry.start()


def _drain(q: queue.Queue) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return
