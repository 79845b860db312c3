"""C-FIND matching on any attribute, as Orthanc does from its files: the index narrows by the
keys it keeps, then the stored header of each candidate (the instance itself, or the first
instance of a patient, study or series) matches the keys it does not keep and fills such
return keys (sequences included). One engine for C-FIND, the retrieves' selection, QIDO-RS and
the REST API, with one case sensitivity for person names.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from dicomvault.index import Level
from dicomvault.index.levels import LEVEL_OF
from dicomvault.index.matching import matcher
from dicomvault.index.planner import page
from dicomvault.store.archive import Archive
from dicomvault.store.parts import InstanceParts

# A match: keyword -> text (DICOM formatting, values joined by "\\"), or the element itself
# for a sequence read from a header; "_key" is the record's key.
Match = dict[str, Any]


def element_text(element: DataElement) -> str:
    """An element's value as the index keeps values: text, multiple values joined by '\\'."""
    value = element.value
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1").rstrip("\x00 ")
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join("" if v is None else str(v) for v in value)
    return str(value)


def _header_value(header: Dataset, keyword: str) -> Any:
    """A sequence as its element, any other value as text ("" when absent)."""
    if keyword not in header:
        return ""
    element = header[keyword]
    return element if element.VR == "SQ" else element_text(element)


class Finder:
    """Queries over an archive's index and, for what the index does not keep, its headers."""

    def __init__(self, archive: Archive, case_insensitive_pn: bool) -> None:
        self.archive = archive
        self.case_insensitive_pn = case_insensitive_pn

    def header(self, level: Level, key: str) -> Dataset | None:
        """The stored header that answers for the record: an instance's own, the first
        instance's of a patient, study or series; None when there is none."""
        index = self.archive.index
        record = index.get(level, key)
        if record is None:
            return None
        if level is not Level.IMAGE:
            record = next(iter(index.instances_under(level, key)), None)
        if record is None or record.manifest is None:
            return None
        return InstanceParts(self.archive, record).header()

    def find(
        self,
        level: Level,
        filters: Mapping[str, str],
        return_keys: Iterable[str] = (),
        *,
        limit: int | None = None,
        offset: int = 0,
    ) -> Iterator[Match]:
        """Matches at ``level``: each with the filter and return keys (empty when the
        instance does not hold them), the unique keys of the level and above, and "_key"."""
        return_keys = list(return_keys)
        kept = {k: v for k, v in filters.items() if k in LEVEL_OF}
        extra = [
            matcher(k, v, case_insensitive_pn=self.case_insensitive_pn)
            for k, v in filters.items()
            if k not in LEVEL_OF
        ]
        extra_matchers = [m for m in extra if not m.universal]
        extra_returns = list(
            dict.fromkeys(
                [m.keyword for m in extra] + [k for k in return_keys if k not in LEVEL_OF]
            )
        )
        indexed_returns = [k for k in return_keys if k in LEVEL_OF]
        index = self.archive.index
        if not extra_returns:
            yield from index.find(
                level,
                kept,
                indexed_returns,
                case_insensitive_pn=self.case_insensitive_pn,
                limit=limit,
                offset=offset,
            )
            return

        def matches() -> Iterator[Match]:
            indexed = index.find(
                level, kept, indexed_returns, case_insensitive_pn=self.case_insensitive_pn
            )
            for match in indexed:
                header = self.header(level, match["_key"])
                values = {
                    k: _header_value(header, k) if header is not None else "" for k in extra_returns
                }
                if all(
                    m.matches(values[m.keyword] if isinstance(values[m.keyword], str) else "")
                    for m in extra_matchers
                ):
                    yield {**match, **values}

        yield from page(matches(), offset, limit)
