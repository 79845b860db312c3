"""The query planner, the same for every backend: C-FIND matching over the index, the
candidates narrowed first by the most selective range of the secondary indexes (a unique key,
then exact values, then prefixes and date ranges), every candidate then matched in full by
``matching``, in record key order (byte order of the UTF-8 keys). Which candidates is decided
here (``plan``: a ``Source``), read by the backend's ``Reader`` (``Reader.pages``: LMDB reads
them as ``pages`` does, PostgreSQL in one statement a page), matched here: the answers are
identical on every backend by construction."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import NamedTuple, Protocol, TypeVar

from dicomvault.index.levels import COMPUTED, LEVEL_OF, TAGS, UNIQUE, Level
from dicomvault.index.matching import Matcher, literal_prefix, matcher
from dicomvault.index.records import Record
from dicomvault.index.secondary import CODE_LEVEL, FIELDS, MODALITIES_IN_STUDY, cut

T = TypeVar("T")

# Candidates are read this many at a time (a backend fetches them, and their ancestors, at
# once).
CHUNK = 100


class Range(NamedTuple):
    """The index values ``ix_range`` reads for one query value: equal to ``value`` (exact),
    starting with it, or (``upper`` given) in [value, upper + anything]."""

    value: bytes
    exact: bool
    upper: bytes | None = None

    def span(self) -> tuple[bytes, bytes]:
        """The same values as a closed interval: UTF-8 never holds 0xff, so "upper + 0xff"
        bounds every value that starts with upper."""
        if self.exact:
            return self.value, self.value
        return self.value, (self.value if self.upper is None else self.upper) + b"\xff"


@dataclass(frozen=True)
class Source:
    """Where a query's candidates come from: the records at ``level`` named by ``keys`` (the
    values of its unique key), else those indexed under ``code`` in one of ``ranges``; the
    candidates are these records' descendants at the query's level (themselves at it)."""

    level: Level
    keys: tuple[str, ...] = ()
    code: bytes = b""
    ranges: tuple[Range, ...] = ()


# A page of candidates: their records in key order, and (at least) their ancestors by
# (level, key).
Page = tuple[list[Record], Mapping[tuple[Level, str], Record]]


class Reader(Protocol):
    """What the planner reads of a backend, within whatever read scope the backend holds."""

    def records(self, level: Level, keys: Sequence[str]) -> dict[str, Record]:
        """The records at ``level`` with these keys (those that exist)."""
        ...

    def existing(self, level: Level, keys: Sequence[str]) -> list[str]:
        """Those of ``keys`` that are records at ``level``, in their order."""
        ...

    def child_keys(self, level: Level, parents: Iterable[str]) -> list[str]:
        """The keys of the children at ``level`` of every one of ``parents``."""
        ...

    def ix_range(
        self, code: bytes, value: bytes, *, exact: bool, upper: bytes | None = None
    ) -> Iterable[str]:
        """Record keys whose (cut) value indexed under ``code`` equals ``value`` (exact),
        starts with it, or (``upper`` given) lies in [value, upper + anything]."""
        ...

    def keys(self, level: Level) -> Iterable[str]:
        """Every record key at ``level``, in key order."""
        ...

    def pages(self, level: Level, source: Source | None) -> Iterable[Page]:
        """The candidates at ``level`` from ``source`` (every record at it for None), in key
        order, a page at a time as the consumer asks for them: ``pages`` below from the reads
        above, or the same in fewer requests."""
        ...


def plan(level: Level, matchers: list[Matcher]) -> Source | None:
    """Where the candidates at ``level`` come from: the most selective indexed matcher, or
    None (a scan)."""
    by_keyword = {m.keyword: m for m in matchers if not m.universal}
    for lvl in reversed(list(Level)[1:]):
        m = by_keyword.get(UNIQUE[lvl])
        if m is not None and lvl.depth <= level.depth and "*" not in m.query and "?" not in m.query:
            # Each item of a List of UID Matching (PS3.4 C.2.2.2.2) as the matcher reads it; an
            # empty one ("1.2.3\\") names no record.
            return Source(lvl, keys=tuple(v.strip(" ") for v in m.query.split("\\")))
    plans: list[tuple[bytes, Matcher]] = []
    for code, (lvl, keyword, fold) in FIELDS.items():
        m = by_keyword.get(keyword)
        if m is None or lvl.depth > level.depth:
            continue
        if keyword == "PatientName" and fold != m.case_insensitive:
            continue
        plans.append((code, m))
    if level.depth >= Level.STUDY.depth and "ModalitiesInStudy" in by_keyword:
        plans.append((MODALITIES_IN_STUDY, by_keyword["ModalitiesInStudy"]))
    for code, m in sorted(plans, key=lambda p: cost(p[1])):
        ranges = [value_range(code, v) for v in m.query.strip().split("\\")]
        if any(r is None for r in ranges):
            continue  # a value with a leading wildcard: no key range
        return Source(CODE_LEVEL[code], code=code, ranges=tuple(r for r in ranges if r))
    return None


def candidates(reader: Reader, level: Level, source: Source) -> list[str]:
    """The keys at ``level`` from ``source``, in key order."""
    if source.keys:
        current = set(reader.existing(source.level, source.keys))
    else:
        current = {
            k
            for r in source.ranges
            for k in reader.ix_range(source.code, r.value, exact=r.exact, upper=r.upper)
        }
    for child in list(Level)[source.level.depth + 1 : level.depth + 1]:
        current = set(reader.child_keys(child, current))
    return sorted(current)


def pages(reader: Reader, level: Level, source: Source | None) -> Iterator[Page]:
    """``Reader.pages`` from the reader's other reads: ``CHUNK`` candidates at a time, with
    their ancestors (kept from page to page)."""
    stream = iter(reader.keys(level) if source is None else candidates(reader, level, source))
    ancestors: dict[tuple[Level, str], Record] = {}
    while chunk := list(islice(stream, CHUNK)):
        records = reader.records(level, chunk)
        fetch_ancestors(reader, records.values(), ancestors)
        yield [records[k] for k in chunk if k in records], ancestors


def value_range(code: bytes, value: str) -> Range | None:
    """The index range of one query value, or None when no range applies."""
    fold = code == b"pnf"
    if code == b"sd" and "-" in value:
        low, _, high = value.replace(".", "").partition("-")
        return Range(cut(low), exact=False, upper=cut(high or "99999999"))
    if "*" in value or "?" in value:
        prefix = literal_prefix(value)
        if not prefix:
            return None
        return Range(cut(prefix.casefold() if fold else prefix), exact=False)
    value = value.replace(".", "") if code == b"sd" else value
    return Range(cut(value.casefold() if fold else value), exact=True)


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
    reader: Reader,
    level: Level,
    filters: Mapping[str, str],
    return_keys: Iterable[str] = (),
    *,
    case_insensitive_pn: bool = True,
    limit: int | None = None,
    offset: int = 0,
) -> Iterator[dict[str, str]]:
    """C-FIND matching at ``level``: one dict per match with the filter and return keys
    (empty when not held), the unique keys of the level and above, and "_key"; ``offset``
    matches skipped, at most ``limit`` returned."""
    matchers = [
        matcher(k, v, case_insensitive_pn=case_insensitive_pn)
        for k, v in filters.items()
        if LEVEL_OF.get(k, level).depth <= level.depth
    ]
    wanted = list(dict.fromkeys([*filters, *return_keys]))

    def matches() -> Iterator[dict[str, str]]:
        for records, ancestors in reader.pages(level, plan(level, matchers)):
            for record in records:
                chain = chain_of(record, ancestors)
                if all(m.matches(value(chain, m.keyword)) for m in matchers):
                    yield result(chain, level, wanted)

    yield from page(matches(), offset, limit)


def page(matches: Iterator[T], offset: int, limit: int | None) -> Iterator[T]:
    """The matches after the first ``offset``, at most ``limit`` of them (a query's paging:
    C-FIND's, QIDO-RS's ``offset``/``limit``); what lies beyond is never computed. Any whole
    number is a valid ``limit`` or ``offset`` (PS3.18 Table 8.3.4-1: uint): past
    ``sys.maxsize``, more than any archive holds, they are cut to it (islice takes no more)."""
    start = min(offset, sys.maxsize)
    return islice(matches, start, None if limit is None else min(start + limit, sys.maxsize))


def fetch_ancestors(
    reader: Reader, records: Iterable[Record], ancestors: dict[tuple[Level, str], Record]
) -> None:
    """Adds the ancestors of ``records`` that ``ancestors`` lacks, a level at a time."""
    current = list(records)
    while current:
        parent_level = current[0].level.parent
        if parent_level is None:
            return
        missing = sorted(
            {
                r.parent
                for r in current
                if r.parent is not None and (parent_level, r.parent) not in ancestors
            }
        )
        found = reader.records(parent_level, missing) if missing else {}
        for key, parent in found.items():
            ancestors[(parent_level, key)] = parent
        current = list(found.values())


def chain_of(record: Record, ancestors: Mapping[tuple[Level, str], Record]) -> dict[Level, Record]:
    chain = {record.level: record}
    while record.parent is not None and record.level.parent is not None:
        parent = ancestors.get((record.level.parent, record.parent))
        if parent is None:
            break
        chain[parent.level] = parent
        record = parent
    return chain


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


def result(chain: dict[Level, Record], level: Level, wanted: list[str]) -> dict[str, str]:
    out = {k: value(chain, k) or "" for k in wanted}
    for lvl, unique in UNIQUE.items():
        if lvl.depth <= level.depth and lvl in chain:
            out.setdefault(unique, chain[lvl].tags.get(unique, ""))
    out["_key"] = chain[level].key
    return out


def lookup(reader: Reader, value: str) -> list[Record]:
    """Records named by ``value`` as a PatientID, AccessionNumber, UID or record key, patients
    first, then in key order."""
    found: dict[tuple[Level, str], Record] = {}
    for level in Level:
        for key, r in reader.records(level, [value]).items():
            found[(level, key)] = r
    for code, level in ((b"pid", Level.PATIENT), (b"acc", Level.STUDY)):
        keys = list(reader.ix_range(code, cut(value), exact=True))
        for key, r in reader.records(level, keys).items():
            found[(level, key)] = r
    return sorted(found.values(), key=lambda r: (r.level.depth, r.key))


def children(reader: Reader, level: Level, key: str) -> list[Record]:
    """The records one level below the record, in key order."""
    child_level = level.child
    if child_level is None:
        return []
    keys = sorted(reader.child_keys(child_level, [key]))
    found = reader.records(child_level, keys)
    return [found[k] for k in keys if k in found]


def instances_under(reader: Reader, level: Level, key: str) -> Iterator[Record]:
    """Every instance under the record (the record itself for an instance), depth first in key
    order."""
    top = reader.records(level, [key]).get(key)
    if top is None:
        return
    stack = [top]
    while stack:
        record = stack.pop()
        if record.level.child is None:
            yield record
            continue
        stack.extend(reversed(children(reader, record.level, record.key)))
