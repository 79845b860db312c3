"""Migration from a PACS over query/retrieve.

The source's studies are enumerated with STUDY-level C-FIND in StudyDate windows; a window
that returns as many studies as the source's result limit, or that the source cuts short
with status Cancel (as Orthanc does past its limit), is split in two until it is not (or is a
single day, which is reported). Each study goes into the
journal, then is retrieved (C-GET into the archive, or C-MOVE to our own listener) and
verified: the SOP Instance UIDs the source lists at IMAGE level must all be in the archive.
Failures are retried with back-off; a study that is verified is never fetched again, so a
migration killed at any point resumes where it stopped.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from dicomvault.index import Level
from dicomvault.migrate.journal import Journal, JournalRow
from dicomvault.net.policy import Modality
from dicomvault.net.scu import MatchingCancelled, RetrieveResult, Scu, ScuError
from dicomvault.net.status import MOVE_DESTINATION_UNKNOWN, describe
from dicomvault.store import Archive

log = logging.getLogger("dicomvault.migrate")

FIRST_DAY = dt.date(1900, 1, 1)


class MigrationError(RuntimeError):
    """The migration cannot go on (the source refuses what every study needs)."""


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


def _dicom_date(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


class PacsMigration:
    """Moves ``source``'s studies into ``archive``, keeping ``journal`` up to date."""

    def __init__(
        self,
        archive: Archive,
        scu: Scu,
        source: Modality,
        journal: Journal,
        our_aet: str,
        report: Callable[[str], None] = log.info,
    ) -> None:
        self.archive, self.scu, self.source = archive, scu, source
        self.journal, self.our_aet, self.report = journal, our_aet, report

    # Enumeration --------------------------------------------------------------------------

    def enumerate(self, plan: Plan) -> int:
        """Puts every study of the source in the plan's date range into the journal."""
        found = 0
        windows = [(plan.since, plan.until)]
        while windows:
            low, high = windows.pop()
            keys = {
                **plan.keys,
                "StudyDate": f"{_dicom_date(low)}-{_dicom_date(high)}",
                "StudyInstanceUID": "",
                "NumberOfStudyRelatedInstances": "",
            }
            studies: list[Dataset] = []
            capped = False
            try:
                studies.extend(self.scu.find(self.source, Level.STUDY, keys))
            except MatchingCancelled:
                capped = True
            capped = capped or len(studies) >= plan.find_limit
            if capped and low < high:
                middle = low + dt.timedelta(days=(high - low).days // 2)
                windows += [(middle + dt.timedelta(days=1), high), (low, middle)]
                continue
            if capped:
                self.report(
                    f"{_dicom_date(low)}: {len(studies)} studies, the source's limit: "
                    "some may be missing from this day"
                )
            for study in studies:
                uid = str(study.get("StudyInstanceUID", "")).strip()
                if not uid:
                    continue
                expected = int(study.get("NumberOfStudyRelatedInstances", 0) or 0)
                date = str(study.get("StudyDate", ""))
                self.journal.enumerated(self.source.name, uid, date, expected)
                found += 1
        return found

    # Retrieval and verification ------------------------------------------------------------

    def run(self, plan: Plan) -> list[JournalRow]:
        """Migrates every study of the journal not yet verified; returns those still not."""
        rows = self.journal.unsettled(self.source.name)
        started = time.monotonic()
        lock = threading.Lock()
        progress = {"done": 0, "next_start": started, "instances": 0, "bytes": 0}

        def one(row: JournalRow) -> None:
            if plan.rate_limit:
                with lock:
                    wait = progress["next_start"] - time.monotonic()
                    progress["next_start"] = max(progress["next_start"], time.monotonic())
                    progress["next_start"] += 60 / plan.rate_limit
                time.sleep(max(0.0, wait))
            self.migrate(row, plan)
            study = self.archive.index.get(Level.STUDY, row.item)
            with lock:
                progress["done"] += 1
                progress["instances"] += row.received
                progress["bytes"] += study.size if study else 0
                done, instances, size = progress["done"], progress["instances"], progress["bytes"]
            elapsed = max(time.monotonic() - started, 1e-6)
            eta = (len(rows) - done) * elapsed / done
            outcome = row.state if row.state == "verified" else f"{row.state}: {row.error}"
            self.report(
                f"[{done}/{len(rows)} studies, {instances} instances, {size / 1e6:.1f} MB, "
                f"{done / elapsed:.1f} studies/s, {size / 1e6 / elapsed:.1f} MB/s, "
                f"ETA {eta:.0f} s] {row.item}: {outcome}"
            )

        with ThreadPoolExecutor(max_workers=max(1, plan.parallel)) as pool:
            for finished in [pool.submit(one, row) for row in rows]:
                finished.result()
        return self.journal.unsettled(self.source.name)

    def migrate(self, row: JournalRow, plan: Plan) -> None:
        for attempt in range(plan.retries + 1):
            if attempt:
                time.sleep(plan.backoff_s * 2 ** (attempt - 1))
            if row.state != "done":
                row.state, row.attempts = "running", row.attempts + 1
                self.journal.put(row)
                error = self._retrieve(row.item, plan)
                if error:
                    # A study gone from the source fails its retrieve too: say so, once.
                    if self.verify(row):
                        return
                    row.state = "failed"
                    if not row.error.startswith("no longer"):
                        row.error = error
                    self.journal.put(row)
                    if row.error.startswith("no longer"):
                        return
                    continue
                row.state = "done"
                self.journal.put(row)
            if self.verify(row):
                return
            row.state = "failed"
            self.journal.put(row)
            if row.error.startswith("no longer"):
                return

    def _retrieve(self, study: str, plan: Plan) -> str:
        """Retrieves a study into the archive; an error message, or "" when it went well."""
        keys = {"StudyInstanceUID": study}
        try:
            result: RetrieveResult
            if plan.method == "move":
                result = self.scu.move(self.source, self.our_aet, Level.STUDY, keys)
            else:
                result = self.scu.get(self.source, Level.STUDY, keys, archive=self.archive)
        except ScuError as e:
            return str(e)
        if result.status == MOVE_DESTINATION_UNKNOWN or (
            plan.method == "move" and result.status >= 0xC000 and not result.completed
        ):
            raise MigrationError(
                f"{self.source.aet} refused to move to {self.our_aet}: "
                f"{describe(result.status)}; add {self.our_aet} to its known AEs, or migrate "
                "with --method get"
            )
        if not result.ok:
            return f"retrieve: {describe(result.status)}, {result.failed} sub-operations failed"
        return ""

    def verify(self, row: JournalRow) -> bool:
        """Compares the archive with the source's instance list; records the outcome."""
        try:
            listed = self.source_instances(row.item)
        except ScuError as e:
            row.error = f"verify: {e}"
            return False
        held = self.archive_instances(row.item)
        row.received = len(listed & held)
        if not listed:
            row.error = "no longer on the source (it lists no instance)"
            return False
        missing = listed - held
        if missing:
            row.error = f"{len(missing)} of {len(listed)} instances missing"
            return False
        row.state, row.error = "verified", ""
        self.journal.put(row)
        return True

    def source_instances(self, study: str) -> set[str]:
        series = self.scu.find(
            self.source, Level.SERIES, {"StudyInstanceUID": study, "SeriesInstanceUID": ""}
        )
        found: set[str] = set()
        for s in list(series):
            keys = {
                "StudyInstanceUID": study,
                "SeriesInstanceUID": str(s.SeriesInstanceUID),
                "SOPInstanceUID": "",
            }
            found |= {str(i.SOPInstanceUID) for i in self.scu.find(self.source, Level.IMAGE, keys)}
        return found

    def archive_instances(self, study: str) -> set[str]:
        matches = self.archive.index.find(
            Level.IMAGE, {"StudyInstanceUID": study}, ["SOPInstanceUID"]
        )
        return {m["SOPInstanceUID"] for m in matches}

    def compare(self) -> list[JournalRow]:
        """Verification only: every journal study against the source, nothing retrieved."""
        for row in list(self.journal.rows(self.source.name)):
            if row.state != "verified" and not self.verify(row):
                row.state = "failed" if row.error.startswith("no longer") else "pending"
                self.journal.put(row)
        return self.journal.unsettled(self.source.name)
