"""Migration from a PACS over query/retrieve (``migrate pacs``): the shared pipeline
(``migrate/pipeline.py``) with the source enumerated by STUDY-level C-FIND, each study listed
by one IMAGE-level C-FIND naming only the study (or, from a source that answers no such query,
a SERIES-level query and an IMAGE-level one per series), and retrieved by C-GET into the
archive or C-MOVE to our own listener — all over associations the Rust SCU
(``net/bulk.py``) requests and serves.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator

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
from dicomvault.net.bulk import MAX_CLASSES_IN_EACH_SYNTAX, BulkScu, Found
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
        # For a C-GET, the SOP Classes of each study listed and not yet verified: it proposes
        # them in each transfer syntax, so that the source sends each instance as it holds it.
        self._get = False
        self._classes: dict[str, frozenset[str]] = {}
        self._interned: dict[frozenset[str], frozenset[str]] = {}
        # Those of each series, for a study of more classes than one C-GET proposes in each
        # syntax: it is retrieved in parts of fewer.
        self._series_classes: dict[str, dict[str, frozenset[str]]] = {}
        # Whether a C-MOVE brought anything yet (then the source knows us).
        self._moved = False
        # Whether we said that the source lists no SOP Classes.
        self._warned = False

    def _find(self, level: Level, keys: dict[str, str], limit: int | None = None) -> Found:
        try:
            return self.scu.find(level, keys, limit)
        except ScuError as e:
            raise SourceError(str(e)) from e

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
        keys = {"StudyInstanceUID": study, "SOPInstanceUID": "", **self._class_key()}
        if self._study_wide_listing is not False:
            try:
                found: Found | None = self._find(Level.IMAGE, {**keys, "SeriesInstanceUID": ""})
            except SourceError:
                if self._study_wide_listing:
                    raise
                found = None  # a hierarchical source refuses it: one query per series
            if found is not None and not found.cancelled and found.matches:
                self._study_wide_listing = True
                return self._instances(study, found.matches)
            if found is None:
                self._study_wide_listing = False
        series = self._find(Level.SERIES, {"StudyInstanceUID": study, "SeriesInstanceUID": ""})
        matches: list[dict[str, str]] = []
        for s in series.matches:
            uid = s.get("SeriesInstanceUID", "")
            found = self._find(Level.IMAGE, {**keys, "SeriesInstanceUID": uid})
            if found.cancelled:
                raise SourceError(
                    f"the source caps its answers below the size of series {uid}: its "
                    "instances cannot be listed"
                )
            matches += found.matches
        return self._instances(study, matches)

    def _instances(self, study: str, matches: list[dict[str, str]]) -> dict[str, str]:
        """SOP Instance UID -> Series Instance UID of ``matches``; notes the SOP Classes
        they name, when they all name one."""
        listed: dict[str, str] = {}
        of_series: dict[str, set[str]] = {}
        for m in matches:
            if m.get("SOPInstanceUID"):
                series = m.get("SeriesInstanceUID", "")
                listed[m["SOPInstanceUID"]] = series
                of_series.setdefault(series, set()).add(m.get("SOPClassUID", ""))
        classes = set().union(*of_series.values())
        if listed and "" not in classes:
            self._classes[study] = self._intern(classes)
            if len(classes) > MAX_CLASSES_IN_EACH_SYNTAX and "" not in of_series:
                self._series_classes[study] = {s: self._intern(c) for s, c in of_series.items()}
        return listed

    def _intern(self, classes: set[str]) -> frozenset[str]:
        named = frozenset(classes)
        return self._interned.setdefault(named, named)

    def _class_key(self) -> dict[str, str]:
        """The IMAGE-level key listing each instance's SOP Class, for a C-GET (Orthanc takes
        four times as long to list a study with it: it reads each instance's file, but its
        SOP Classes in Study, PS3.4 C.6.2.1.2, cost it more still)."""
        return {"SOPClassUID": ""} if self._get else {}

    def list_many(self, studies: list[str]) -> dict[str, dict[str, str] | SourceError]:
        """One IMAGE-level C-FIND for all ``studies`` (a list of Study Instance UIDs) where
        the source answers it whole; the studies it says nothing of, one by one."""
        together: dict[str, dict[str, str]] = {}
        if len(studies) > 1 and self._study_wide_listing is not False:
            keys = {
                "StudyInstanceUID": "\\".join(studies),
                "SeriesInstanceUID": "",
                "SOPInstanceUID": "",
                **self._class_key(),
            }
            try:
                found: Found | None = self._find(Level.IMAGE, keys)
            except SourceError:
                found = None
            if found is not None and not found.cancelled:
                of_study: dict[str, list[dict[str, str]]] = {}
                for m in found.matches:
                    of_study.setdefault(m.get("StudyInstanceUID", ""), []).append(m)
                for study, matches in of_study.items():
                    if instances := self._instances(study, matches):
                        together[study] = instances
                self._study_lists = self._study_lists or len(together) > 1
        listed = super().list_many([s for s in studies if not together.get(s)])
        return {s: together.get(s) or listed[s] for s in studies}

    def parts(self, study: Study, plan: Plan) -> list[Part]:
        """A study of many instances in as many parts as there are associations (a list of
        series, or some of one large series' instances, each): the source sends them at once,
        and their instances share group commits."""
        listed = study.listed or {}
        count = min(plan.parallel, len(listed) // MIN_PART)
        # Parts are lists of UIDs: only from a source that answered one, and a study retried
        # goes whole (a source may take lists in queries but not in retrieves).
        listable = self._study_lists and study.row.attempts == 1
        of_series = self._series_classes.get(study.row.item)
        if plan.method == "get" and of_series is not None:
            return class_parts(study.row.item, of_series, listable)
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
        # A C-GET's group holds no more classes than it proposes in each transfer syntax.
        most = MAX_CLASSES_IN_EACH_SYNTAX if plan.method == "get" else None
        classes: frozenset[str] = frozenset()
        for study in studies:
            count = len(study.listed or {})
            theirs = self._classes.get(study.row.item, frozenset())
            if study.listed is None or count >= MIN_PART or (most and len(theirs) > most):
                groups.append([study])
                continue
            if group and (
                len(group) >= size
                or held + count > MIN_PART
                or (most and len(classes | theirs) > most)
            ):
                groups.append(group)
                group, held, classes = [], 0, frozenset()
            group.append(study)
            held += count
            classes |= theirs
        return [*groups, group] if group else groups

    def retrieve(self, study: Study, plan: Plan, part: Part | None = None) -> str:
        level = Level.STUDY if part is None else Level.IMAGE if _IMAGES in part else Level.SERIES
        return self._retrieve([study.row.item], plan, level, part)

    def retrieve_together(self, studies: list[Study], plan: Plan) -> str:
        return self._retrieve([study.row.item for study in studies], plan, Level.STUDY)

    def _retrieve(self, uids: list[str], plan: Plan, level: Level, part: Part | None = None) -> str:
        """Retrieves the studies ``uids`` (or a part of the one); an error message or ""."""
        keys = part or {"StudyInstanceUID": "\\".join(uids)}
        try:
            result: RetrieveResult
            if plan.method == "move":
                result = self.scu.move(self.our_aet, level, keys)
            else:
                classes = self._get_classes(uids, part)
                result = self.scu.get(level, keys, studies=uids, classes=classes)
        except ScuError as e:
            return str(e)
        for instance, why in result.refused:
            log.warning("C-GET of %s: %s refused: %s", ", ".join(uids), instance, why)
        # Orthanc answers a C-MOVE to an AE it does not know with a failure and nothing
        # done; one that failed its sub-operations, or after others came, is the study's.
        refused = result.status >= CANNOT_UNDERSTAND and not (result.completed or result.failed)
        self._moved = self._moved or bool(result.completed)
        if result.status == MOVE_DESTINATION_UNKNOWN or (
            plan.method == "move" and refused and not self._moved
        ):
            raise MigrationError(
                f"{self.source.aet} refused to move to {self.our_aet}: "
                f"{describe(result.status)}; add {self.our_aet} to its known AEs, or migrate "
                "with --method get"
            )
        if not result.ok:
            return f"retrieve: {describe(result.status)}, {result.failed} sub-operations failed"
        return ""

    def _get_classes(self, uids: list[str], part: Part | None) -> frozenset[str]:
        """The SOP Classes a C-GET of ``uids`` (a part of the one) brings, as listed; none
        when a study's listing named none (then the usual ones are proposed, in one context
        each). Says so when some may come in another transfer syntax than held in."""
        of_series = self._series_classes.get(uids[0]) if part else None
        if of_series is not None and part is not None:
            named = [of_series.get(s, frozenset()) for s in part[_SERIES].split("\\")]
        else:
            named = [self._classes.get(uid, frozenset()) for uid in uids]
        classes = frozenset().union(*named) if all(named) else frozenset()
        if not classes and not self._warned:
            self._warned = True
            log.warning(
                "%s names no SOP Class of the instances it lists: its C-GETs propose the "
                "usual classes in one presentation context each, and it may send instances "
                "in another transfer syntax than it holds them in (--method move keeps them "
                "as it sends them)",
                self.source.aet,
            )
        elif len(classes) > MAX_CLASSES_IN_EACH_SYNTAX:
            log.warning(
                "C-GET of %s: %d SOP Classes, more than it proposes in each transfer syntax "
                "(%d): instances of the others may come in another syntax than held in",
                ", ".join(uids),
                len(classes),
                MAX_CLASSES_IN_EACH_SYNTAX,
            )
        return classes

    def forget(self, study: str) -> None:
        self._classes.pop(study, None)
        self._series_classes.pop(study, None)

    def release(self) -> None:
        self.scu.release_mine()


def class_parts(study: str, of_series: dict[str, frozenset[str]], lists: bool) -> list[Part]:
    """Parts of a study of many SOP Classes: lists of its series (one each, unless ``lists``)
    of no more classes together than a C-GET proposes in each transfer syntax."""
    parts: list[Part] = []
    group: list[str] = []
    held: frozenset[str] = frozenset()
    for series, classes in sorted(of_series.items(), key=lambda s: sorted(s[1])):
        if group and (not lists or len(held | classes) > MAX_CLASSES_IN_EACH_SYNTAX):
            parts.append({"StudyInstanceUID": study, _SERIES: "\\".join(group)})
            group, held = [], frozenset()
        group.append(series)
        held |= classes
    if group:
        parts.append({"StudyInstanceUID": study, _SERIES: "\\".join(group)})
    return parts


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
