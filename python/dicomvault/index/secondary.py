"""The secondary indexes every backend keeps, the same way: which values of which records are
indexed under which field code, cut and folded alike, so that the query planner narrows
candidates identically whatever holds them (``planner``).

An index entry is (code, value, record key): exact and prefix matches and date ranges are
ranges of (code, value) in byte order. Values are cut to a bounded length (long ones are
re-checked by the matcher on the whole record) and never hold the separator byte."""

from __future__ import annotations

from collections.abc import Mapping

from dicomvault.index.levels import Level
from dicomvault.index.records import Record

SEP = b"\x00"
# LMDB keys are at most 511 bytes: long values are cut in index keys and re-checked.
MAX_VALUE = 160

# Field code -> (level, keyword, case-folded).
FIELDS: dict[bytes, tuple[Level, str, bool]] = {
    b"pid": (Level.PATIENT, "PatientID", False),
    b"pn": (Level.PATIENT, "PatientName", False),
    b"pnf": (Level.PATIENT, "PatientName", True),
    b"acc": (Level.STUDY, "AccessionNumber", False),
    b"sd": (Level.STUDY, "StudyDate", False),
    b"mod": (Level.SERIES, "Modality", False),
}
# A study's ModalitiesInStudy, computed from its series (not a tag of any data set).
MODALITIES_IN_STUDY = b"mis"
# The level each code's records are at.
CODE_LEVEL: dict[bytes, Level] = {code: lvl for code, (lvl, _, _) in FIELDS.items()} | {
    MODALITIES_IN_STUDY: Level.STUDY
}


def cut(value: str) -> bytes:
    raw = value.encode("utf-8")[:MAX_VALUE]
    return raw.decode("utf-8", "ignore").encode("utf-8").replace(SEP, b" ")


def ix_values(code: bytes, level: Level, tags: Mapping[str, str]) -> list[str]:
    _, keyword, fold = FIELDS[code]
    value = tags.get(keyword, "")
    if code == b"sd":
        value = value.replace(".", "")
    if keyword == "PatientName":
        # The whole name and each component group, since a query may match either.
        values = list(dict.fromkeys([value, *(g for g in value.split("=") if g)]))
    else:
        values = value.split("\\")
    return [v.casefold() if fold else v for v in values if v]


def entries(record: Record) -> list[tuple[bytes, bytes]]:
    """The (code, cut value) pairs a record is indexed under."""
    found = [
        (code, cut(value))
        for code, (level, _, _) in FIELDS.items()
        if level is record.level
        for value in ix_values(code, level, record.tags)
    ]
    if record.level is Level.STUDY:
        found += [
            (MODALITIES_IN_STUDY, cut(modality))
            for modality in record.tags.get("ModalitiesInStudy", "").split("\\")
            if modality
        ]
    return found
