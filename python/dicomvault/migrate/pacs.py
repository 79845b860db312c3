"""Migration from a PACS over query/retrieve (``migrate pacs``): the shared pipeline
(``migrate/pipeline.py``) with the source enumerated by STUDY-level C-FIND, each study listed
by one IMAGE-level C-FIND naming only the study (or, from a source that answers no such query,
a SERIES-level query and an IMAGE-level one per series), and retrieved by C-GET into the
archive or C-MOVE to our own listener — all over associations the Rust SCU
(``net/bulk.py``) requests and serves.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from dicomvault.index import Level
from dicomvault.migrate.journal import Journal, JournalRow
from dicomvault.migrate.live import Progress
from dicomvault.migrate.pipeline import (
    Migration,
    MigrationError,
    Part,
    Plan,
    SourceError,
    Study,
    dicom_date,
    log,
    windowed,
)
from dicomvault.net.as_held import classes_by_series, fitting, series_groups
from dicomvault.net.bulk import BulkScu, Found
from dicomvault.net.policy import Modality
from dicomvault.net.status import CANNOT_UNDERSTAND, MOVE_DESTINATION_UNKNOWN, describe
from dicomvault.net.vocabulary import RetrieveResult, ScuError
from dicomvault.store import Archive

# A study is retrieved in parts of this many instances at least, at most in as many parts as
# there are associations. A part is a list of UIDs the source looks up one by one: smaller ones
# cost it more than sending at once gains (Orthanc, 10 studies of 200 on 4 associations: in
# parts of 50, 1.7-2.3 s; whole studies at once, 0.9-1.2 s; one at a time, 1.2-1.5 s).
MIN_PART = 250
# UIDs in one list (a UI value holds 64 KiB: 1000 UIDs of 64 characters fit).
MAX_LIST = 500
_IMAGES, _SERIES = "SOPInstanceUID", "SeriesInstanceUID"


class PacsMigration(Migration):
    """Moves ``source``'s studies into ``archive`` over ``scu``; C-MOVE sends them to
    ``our_aet``."""

    def __init__(
        self,
        archive: Archive,
        scu: BulkScu,
        source: Modality,
        journal: Journal,
        our_aet: str,
        report: Callable[[str], None] = log.info,
        on_study: Callable[[Progress, JournalRow], None] | None = None,
    ) -> None:
        super().__init__(archive, journal, source.name, report, on_study)
        self.scu, self.source, self.our_aet = scu, source, our_aet
        self.title = source.aet
        # Whether the source answers an IMAGE-level query naming only the study (None: not
        # tried yet).
        self._study_wide_listing: bool | None = None
        # Whether it answered a query naming several studies (a list of UIDs) for each.
        self._study_lists = False
        # The SOP Classes met (sampled at the first listing, sent on a context of several
        # syntaxes, listed again), how often: a C-GET proposes the commonest in a context per
        # transfer syntax.
        self._classes: Counter[str] = Counter()
        self._lock = threading.Lock()
        # Whether a C-MOVE brought anything yet (then the source knows us).
        self._moved = False
        # For a C-GET (``_get``), whether a listing asked the SOP Classes yet.
        self._get = False
        self._seeded = False

    def _find(self, level: Level, keys: dict[str, str], limit: int | None = None) -> Found:
        try:
            found = self.scu.find(level, keys, limit)
        except ScuError as e:
            raise SourceError(str(e)) from e
        if "SOPClassUID" in keys:
            with self._lock:
                self._classes.update(
                    m["SOPClassUID"] for m in found.matches if m.get("SOPClassUID")
                )
        return found

    def _seed(self, listed: dict[str, dict[str, str] | SourceError]) -> None:
        """For a C-GET, the SOP Class of an instance of each series first listed, asked in
        one query (a series mostly holds one class): the first retrieves propose the
        source's usual classes in each transfer syntax. Asked of those only: Orthanc reads
        an instance's file for it (every instance's would cost the listing 4x)."""
        with self._lock:
            seeded, self._seeded = self._seeded, True
        if seeded or not self._get:
            return
        first = {
            series: instance
            for listing in listed.values()
            if not isinstance(listing, SourceError)
            for instance, series in listing.items()
        }
        samples = list(first.values())[:MAX_LIST]
        keys = {
            "StudyInstanceUID": "\\".join(listed),
            "SeriesInstanceUID": "",
            _IMAGES: "\\".join(samples),
            "SOPClassUID": "",
        }
        if samples:
            try:
                self._find(Level.IMAGE, keys)
            except SourceError as e:
                log.info("the SOP Classes of %s's first studies: %s", self.source.aet, e)

    def studies(self, plan: Plan) -> Iterator[tuple[str, str, int]]:
        self._get = plan.method == "get"

        def query(low: dt.date | None, high: dt.date | None) -> tuple[list[dict[str, str]], bool]:
            dates = "" if low is None or high is None else f"{dicom_date(low)}-{dicom_date(high)}"
            keys = {
                **plan.keys,
                "StudyDate": dates,
                "StudyInstanceUID": "",
                "NumberOfStudyRelatedInstances": "",
            }
            found = self._find(Level.STUDY, keys, None if dates else plan.find_limit)
            return found.matches, found.cancelled

        def date_of(study: dict[str, str]) -> str:
            return study.get("StudyDate", "")

        for study in windowed(plan, query, self.report, date_of):
            uid = study.get("StudyInstanceUID", "")
            if uid:
                expected = study.get("NumberOfStudyRelatedInstances", "")
                count = int(expected) if expected.isdigit() else 0
                yield uid, study.get("StudyDate", ""), count

    def source_instances(self, study: str) -> dict[str, str]:
        keys = {"StudyInstanceUID": study, "SOPInstanceUID": ""}
        if self._study_wide_listing is not False:
            try:
                found: Found | None = self._find(Level.IMAGE, {**keys, "SeriesInstanceUID": ""})
            except SourceError:
                if self._study_wide_listing:
                    raise
                found = None  # a hierarchical source refuses it: one query per series
            if found is not None and not found.cancelled and found.matches:
                self._study_wide_listing = True
                return _instances(found)
            if found is None:
                self._study_wide_listing = False
        series = self._find(Level.SERIES, {"StudyInstanceUID": study, "SeriesInstanceUID": ""})
        listed: dict[str, str] = {}
        for s in series.matches:
            uid = s.get("SeriesInstanceUID", "")
            found = self._find(Level.IMAGE, {**keys, "SeriesInstanceUID": uid})
            if found.cancelled:
                raise SourceError(
                    f"the source caps its answers below the size of series {uid}: its "
                    "instances cannot be listed"
                )
            listed |= _instances(found)
        return listed

    def list_many(self, studies: list[str]) -> dict[str, dict[str, str] | SourceError]:
        """One IMAGE-level C-FIND for all ``studies`` (a list of Study Instance UIDs) where
        the source answers it whole; the studies it says nothing of, one by one."""
        together: dict[str, dict[str, str]] = {}
        if len(studies) > 1 and self._study_wide_listing is not False:
            keys = {
                "StudyInstanceUID": "\\".join(studies),
                "SeriesInstanceUID": "",
                "SOPInstanceUID": "",
            }
            try:
                found: Found | None = self._find(Level.IMAGE, keys)
            except SourceError:
                found = None
            if found is not None and not found.cancelled:
                for m in found.matches:
                    if m.get("SOPInstanceUID"):
                        instances = together.setdefault(m.get("StudyInstanceUID", ""), {})
                        instances[m["SOPInstanceUID"]] = m.get("SeriesInstanceUID", "")
                self._study_lists = self._study_lists or len(together) > 1
        listed = super().list_many([s for s in studies if not together.get(s)])
        listings = {s: together.get(s) or listed[s] for s in studies}
        self._seed(listings)
        return listings

    def parts(self, study: Study, plan: Plan) -> list[Part]:
        """A study of many instances in as many parts as there are associations (a list of
        series, or some of one large series' instances, each): the source sends them at once,
        and their instances share group commits."""
        listed = study.listed or {}
        count = min(plan.parallel, len(listed) // MIN_PART)
        # Parts are lists of UIDs: only from a source that answered one, and a study retried
        # goes whole (a source may take lists in queries but not in retrieves).
        listable = self._study_lists and study.row.attempts == 1
        if count < 2 or not all(listed.values()) or not listable:
            return []
        return parts_of(study.row.item, listed, count)

    def together(self, studies: list[Study], plan: Plan) -> list[list[Study]]:
        """Small studies in groups of about as many as there are associations to share them,
        of ``MIN_PART`` instances at most: one request each (a list of Study Instance UIDs,
        PS3.4 C.4.2.2.1) rather than one per study, whose round trip would take longer than
        sending a few instances. Only from a source that answered such a list when listing."""
        if not self._study_lists:
            return super().together(studies, plan)
        size = -(-len(studies) // plan.parallel)
        groups: list[list[Study]] = []
        group: list[Study] = []
        held = 0
        for study in studies:
            count = len(study.listed or {})
            if study.listed is None or count >= MIN_PART:
                groups.append([study])
                continue
            if group and (len(group) >= size or held + count > MIN_PART):
                groups.append(group)
                group, held = [], 0
            group.append(study)
            held += count
        return [*groups, group] if group else groups

    def retrieve(self, study: Study, plan: Plan, part: Part | None = None) -> str:
        level = Level.STUDY if part is None else Level.IMAGE if _IMAGES in part else Level.SERIES
        return self._retrieve([study], plan, level, part)

    def retrieve_together(self, studies: list[Study], plan: Plan) -> str:
        return self._retrieve(studies, plan, Level.STUDY)

    def _retrieve(
        self, studies: list[Study], plan: Plan, level: Level, part: Part | None = None
    ) -> str:
        """Retrieves ``studies`` (or a part of the one); an error message or ""."""
        uids = [study.row.item for study in studies]
        keys = part or {"StudyInstanceUID": "\\".join(uids)}
        try:
            result: RetrieveResult
            if plan.method == "move":
                result = self.scu.move(self.our_aet, level, keys)
            else:
                result = self.scu.get(level, keys, uids, self._proposed(), as_held=True)
                with self._lock:
                    self._classes.update(sop_class for _, sop_class in result.unproposed)
                if result.unproposed or result.failed > len(result.refused):
                    # Instances of classes not proposed in each syntax: refused, or failed
                    # at the source (converting them to the one syntax a context took;
                    # Orthanc cannot re-encode JPEG 2000, and gives up the rest).
                    return self._again(level, keys, uids, result)
        except ScuError as e:
            return str(e)
        for instance, why in result.refused:
            log.warning("C-GET of %s: %s refused: %s", ", ".join(uids), instance, why)
        # Orthanc answers a C-MOVE to an AE it does not know with a failure and nothing
        # done; one that failed with nothing done after others came is the study's.
        refused = result.status >= CANNOT_UNDERSTAND and not (result.completed or result.failed)
        if result.completed:
            self._moved = True
        if result.status == MOVE_DESTINATION_UNKNOWN or (
            plan.method == "move" and refused and not self._moved
        ):
            raise MigrationError(
                f"{self.source.aet} refused to move to {self.our_aet}: "
                f"{describe(result.status)}, nothing sent; add {self.our_aet} to its known "
                "AEs, or migrate with --method get (if it knows us, it could send none of the "
                "first study's instances: of private SOP Classes? [dicom] "
                "accept_private_sop_classes = true takes them)"
            )
        return "" if result.ok else _failure(result)

    def _proposed(self, first: Iterable[str] = ()) -> frozenset[str]:
        """The SOP Classes a C-GET proposes in a context per transfer syntax: ``first``,
        then the commonest of those met, as many as fit."""
        with self._lock:
            common = [uid for uid, _ in self._classes.most_common()]
        return fitting([*first, *common])

    def _again(self, level: Level, keys: Part, uids: list[str], first: RetrieveResult) -> str:
        """After a C-GET of ``keys`` that brought instances of classes it did not propose in
        each transfer syntax: their series again, a few at a time, each request proposing
        the classes an IMAGE-level query names for them (PS3.8 7.1.1.13: a context per
        syntax); from a source that names none, the request again with the classes it sent
        proposed so. An error message or ""."""
        wanted = {**keys, _SERIES: keys.get(_SERIES, ""), _IMAGES: "", "SOPClassUID": ""}
        # A retrieving thread rarely queries: it holds no other association meanwhile, nor
        # this one after, not to hold several of the few the source serves at once.
        self.scu.release_mine("get")
        try:
            found = self._find(Level.IMAGE, wanted)
        except SourceError as e:
            return f"listing the SOP Classes of what came converted or failed: {e}"
        finally:
            self.scu.release_mine("find")
        if found.cancelled:
            return "listing the SOP Classes of what came converted or failed: cut short"
        classes = classes_by_series(found.matches)
        requests: list[tuple[Level, Part, list[str], set[str]]]
        if classes:
            requests = [
                (Level.SERIES, {"StudyInstanceUID": study, _SERIES: "\\".join(series)}, [study], c)
                for study, series, c in series_groups(classes, self._study_lists)
            ]
        else:
            # The source lists no classes (DCMTK's dcmqrscp): those it sent, as it holds them
            # if it sends on the context of their syntax.
            requests = [(level, keys, uids, {sop_class for _, sop_class in first.unproposed})]
        errors = []
        for at, request, studies, together in requests:
            result = self.scu.get(at, request, studies, self._proposed(sorted(together)), True)
            if not result.ok:
                errors.append(_failure(result))
        return "; ".join(errors)

    def release(self) -> None:
        self.scu.release_mine()


def _failure(result: RetrieveResult) -> str:
    """What went wrong with a retrieve, for the journal."""
    failed = f"retrieve: {describe(result.status)}, {result.failed} sub-operations failed"
    if result.unproposed:
        failed += f" ({len(result.unproposed)} of classes not proposed in each transfer syntax)"
    return failed


def _instances(found: Found) -> dict[str, str]:
    return {
        m["SOPInstanceUID"]: m.get("SeriesInstanceUID", "")
        for m in found.matches
        if m.get("SOPInstanceUID")
    }


def parts_of(study: str, listed: dict[str, str], count: int) -> list[Part]:
    """``count`` parts of about as many instances each: series whole (a SERIES-level list of
    UIDs), a series larger than a part in pieces (an IMAGE-level list of its instances')."""
    size = min(-(-len(listed) // count), MAX_LIST)
    by_series: dict[str, list[str]] = {}
    for instance, series in sorted(listed.items()):
        by_series.setdefault(series, []).append(instance)
    parts: list[Part] = []
    group: list[str] = []
    held = 0
    for series, instances in sorted(by_series.items(), key=lambda s: -len(s[1])):
        if len(instances) >= size:
            for i in range(0, len(instances), size):
                pieces = "\\".join(instances[i : i + size])
                parts.append(
                    {"StudyInstanceUID": study, "SeriesInstanceUID": series, _IMAGES: pieces}
                )
            continue
        group.append(series)
        held += len(instances)
        if held >= size or len(group) == MAX_LIST:
            parts.append({"StudyInstanceUID": study, "SeriesInstanceUID": "\\".join(group)})
            group, held = [], 0
    if group:
        parts.append({"StudyInstanceUID": study, "SeriesInstanceUID": "\\".join(group)})
    return parts
