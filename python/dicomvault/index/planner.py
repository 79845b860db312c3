"""The query planner, the same for every backend: C-FIND matching over the index, the
candidates narrowed first by the most selective range of the secondary indexes (a unique key,
then exact values, then prefixes and date ranges), every candidate then matched in full by
``matching``, in record key order (byte order of the UTF-8 keys). A backend provides the
``Reader``; the answers are identical on every backend by construction."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Protocol, TypeVar

from dicomvault.index.levels import COMPUTED, LEVEL_OF, TAGS, UNIQUE, Level
from dicomvault.index.matching import Matcher, literal_prefix, matcher
from dicomvault.index.records import Record
from dicomvault.index.secondary import CODE_LEVEL, FIELDS, MODALITIES_IN_STUDY, cut

T = TypeVar("T")

# Candidates are read this many at a time (a backend fetches them, and their ancestors, at
# once).
CHUNK = 100


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


def candidates(reader: Reader, level: Level, matchers: list[Matcher]) -> Iterable[str] | None:
    """Keys at ``level`` from the most selective indexed matcher, in key order, or None (a
    scan)."""
    by_keyword = {m.keyword: m for m in matchers if not m.universal}

    def lift(source: Level, keys: Iterable[str]) -> set[str]:
        current = set(keys)
        for child in list(Level)[source.depth + 1 : level.depth + 1]:
            current = set(reader.child_keys(child, current))
        return current

    for lvl in reversed(list(Level)[1:]):
        m = by_keyword.get(UNIQUE[lvl])
        if m is not None and lvl.depth <= level.depth and "*" not in m.query and "?" not in m.query:
            keys = reader.existing(lvl, m.query.strip().split("\\"))
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
        plans.append((MODALITIES_IN_STUDY, by_keyword["ModalitiesInStudy"]))
    for code, m in sorted(plans, key=lambda p: cost(p[1])):
        ranges = [value_range(reader, code, v) for v in m.query.strip().split("\\")]
        if any(r is None for r in ranges):
            continue  # a value with a leading wildcard: no key range
        return sorted(lift(CODE_LEVEL[code], (k for r in ranges if r is not None for k in r)))
    return None


def value_range(reader: Reader, code: bytes, value: str) -> Iterable[str] | None:
    """Record keys an index holds for one query value, or None when no range applies."""
    fold = code == b"pnf"
    if code == b"sd" and "-" in value:
        low, _, high = value.replace(".", "").partition("-")
        return reader.ix_range(code, cut(low), exact=False, upper=cut(high or "99999999"))
    if "*" in value or "?" in value:
        prefix = literal_prefix(value)
        if not prefix:
            return None
        return reader.ix_range(code, cut(prefix.casefold() if fold else prefix), exact=False)
    value = value.replace(".", "") if code == b"sd" else value
    return reader.ix_range(code, cut(value.casefold() if fold else value), exact=True)


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
    keys = candidates(reader, level, matchers)
    stream = iter(reader.keys(level) if keys is None else keys)
    ancestors: dict[tuple[Level, str], Record] = {}

    def matches() -> Iterator[dict[str, str]]:
        while chunk := list(islice(stream, CHUNK)):
            records = reader.records(level, chunk)
            fetch_ancestors(reader, records.values(), ancestors)
            for key in chunk:
                record = records.get(key)
                if record is None:
                    continue
                chain = chain_of(record, ancestors)
                if all(m.matches(value(chain, m.keyword)) for m in matchers):
                    yield result(chain, level, wanted)

    yield from page(matches(), offset, limit)


def page(matches: Iterator[T], offset: int, limit: int | None) -> Iterator[T]:
    """The matches after the first ``offset``, at most ``limit`` of them (a query's paging:
    C-FIND's, QIDO-RS's ``offset``/``limit``); what lies beyond is never computed."""
    return islice(matches, offset, None if limit is None else offset + limit)


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
