"""The query planner: C-FIND matching over the index, the candidates narrowed first by the
most selective key range a secondary index offers (a unique key, then exact values, then
prefixes and date ranges), every candidate then matched in full."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import lmdb

from dicomvault.index.levels import COMPUTED, LEVEL_OF, TAGS, Level
from dicomvault.index.lmdb_layout import FIELDS, SEP, Layout, cut
from dicomvault.index.matching import Matcher, literal_prefix, matcher
from dicomvault.index.records import Record


class QueryPlanner:
    """Queries over one index, each within a read transaction the caller holds."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def ix_range(
        self,
        txn: lmdb.Transaction[bytes],
        code: bytes,
        value: str,
        *,
        exact: bool,
        upper: str | None = None,
    ) -> Iterator[str]:
        """Record keys whose indexed ``code`` value equals ``value`` (exact), starts with it,
        or (``upper`` given) lies in [value, upper]."""
        base = code + SEP
        start = base + cut(value) + (SEP if exact else b"")
        cursor = txn.cursor(db=self.layout.ix)
        if not cursor.set_range(start):
            return
        stop = base + cut(upper) + b"\xff" if upper is not None else None
        for k in cursor.iternext(values=False):
            if stop is not None:
                if k > stop or not k.startswith(base):
                    return
            elif not k.startswith(start):
                return
            # Index values never hold the separator, record keys may (patient keys do).
            yield k[len(base) :].partition(SEP)[2].decode("utf-8")

    def candidates(
        self, txn: lmdb.Transaction[bytes], level: Level, matchers: list[Matcher]
    ) -> Iterable[str] | None:
        """Keys at ``level`` from the most selective indexed matcher, or None (scan)."""
        by_keyword = {m.keyword: m for m in matchers if not m.universal}

        def lift(source: Level, keys: Iterable[str]) -> set[str]:
            current = set(keys)
            for child in list(Level)[source.depth + 1 : level.depth + 1]:
                current = {c for k in current for c in self.layout.child_keys(txn, child, k)}
            return current

        for lvl in reversed(list(Level)):
            unique = {
                Level.STUDY: "StudyInstanceUID",
                Level.SERIES: "SeriesInstanceUID",
                Level.IMAGE: "SOPInstanceUID",
            }.get(lvl)
            m = by_keyword.get(unique or "")
            if (
                m is not None
                and lvl.depth <= level.depth
                and "*" not in m.query
                and "?" not in m.query
            ):
                keys = [
                    k
                    for k in m.query.strip().split("\\")
                    if txn.get(k.encode("utf-8"), db=self.layout.dbs[lvl])
                ]
                return sorted(lift(lvl, keys))
        plans: list[tuple[bytes, Matcher]] = []
        for code, (lvl, keyword, fold) in FIELDS.items():
            m = by_keyword.get(keyword)
            if m is None or lvl.depth > level.depth:
                continue
            if keyword == "PatientName" and fold != m.case_insensitive:
                continue
            plans.append((code, m))
        if level.depth >= Level.STUDY.depth and "ModalitiesInStudy" in by_keyword:
            plans.append((b"mis", by_keyword["ModalitiesInStudy"]))
        for code, m in sorted(plans, key=lambda p: self.cost(p[1])):
            ranges = [self.value_range(txn, code, v) for v in m.query.strip().split("\\")]
            if any(r is None for r in ranges):
                continue  # a value with a leading wildcard: no key range
            source = FIELDS[code][0] if code in FIELDS else Level.STUDY
            return sorted(lift(source, (k for r in ranges if r is not None for k in r)))
        return None

    def value_range(
        self, txn: lmdb.Transaction[bytes], code: bytes, value: str
    ) -> Iterator[str] | None:
        """Record keys an index holds for one query value, or None when no range applies."""
        fold = code == b"pnf"
        if code == b"sd" and "-" in value:
            low, _, high = value.replace(".", "").partition("-")
            return self.ix_range(txn, code, low, exact=False, upper=high or "99999999")
        if "*" in value or "?" in value:
            prefix = literal_prefix(value)
            if not prefix:
                return None
            return self.ix_range(txn, code, prefix.casefold() if fold else prefix, exact=False)
        value = value.replace(".", "") if code == b"sd" else value
        return self.ix_range(txn, code, value.casefold() if fold else value, exact=True)

    @staticmethod
    def cost(m: Matcher) -> int:
        query = m.query
        if "*" in query or "?" in query:
            return 2
        if m.keyword == "StudyDate":
            return 3 if "-" in query else 1
        if m.keyword in ("Modality", "ModalitiesInStudy"):
            return 4
        return 0

    def find(
        self,
        txn: lmdb.Transaction[bytes],
        level: Level,
        filters: Mapping[str, str],
        return_keys: Iterable[str] = (),
        *,
        case_insensitive_pn: bool = True,
        limit: int | None = None,
        offset: int = 0,
    ) -> Iterator[dict[str, str]]:
        """C-FIND matching at ``level``: one dict per match with the filter and return keys
        (empty when not held), the unique keys of the level and above, and "_key"."""
        matchers = [
            matcher(k, v, case_insensitive_pn=case_insensitive_pn)
            for k, v in filters.items()
            if LEVEL_OF.get(k, level).depth <= level.depth
        ]
        wanted = list(dict.fromkeys([*filters, *return_keys]))
        candidates = self.candidates(txn, level, matchers)
        if candidates is None:
            candidates = (
                k.decode("utf-8")
                for k in txn.cursor(db=self.layout.dbs[level]).iternext(values=False)
            )
        skipped = returned = 0
        for key in candidates:
            record = self.layout.get(txn, level, key)
            if record is None:
                continue
            chain = self.chain(txn, record)
            if not all(m.matches(self.value(chain, m.keyword)) for m in matchers):
                continue
            if skipped < offset:
                skipped += 1
                continue
            if limit is not None and returned >= limit:
                return
            returned += 1
            yield self.result(chain, level, wanted)

    def chain(self, txn: lmdb.Transaction[bytes], record: Record) -> dict[Level, Record]:
        chain = {record.level: record}
        while record.parent is not None and record.level.parent is not None:
            parent = self.layout.get(txn, record.level.parent, record.parent)
            if parent is None:
                break
            chain[parent.level] = parent
            record = parent
        return chain

    @staticmethod
    def value(chain: dict[Level, Record], keyword: str) -> str | None:
        level = LEVEL_OF.get(keyword)
        if level is None or level not in chain:
            return None
        record = chain[level]
        if keyword in COMPUTED and keyword != "ModalitiesInStudy":
            name = keyword.removeprefix("Number").removeprefix("Of").split("Related")[1].lower()
            return str(record.counts.get(name, 0))
        if keyword in TAGS[level] or keyword == "ModalitiesInStudy":
            return record.tags.get(keyword)
        return None

    def result(self, chain: dict[Level, Record], level: Level, wanted: list[str]) -> dict[str, str]:
        out = {k: self.value(chain, k) or "" for k in wanted}
        for lvl, unique in (
            (Level.PATIENT, "PatientID"),
            (Level.STUDY, "StudyInstanceUID"),
            (Level.SERIES, "SeriesInstanceUID"),
            (Level.IMAGE, "SOPInstanceUID"),
        ):
            if lvl.depth <= level.depth and lvl in chain:
                out.setdefault(unique, chain[lvl].tags.get(unique, ""))
        out["_key"] = chain[level].key
        return out
