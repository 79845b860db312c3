"""C-FIND/C-MOVE/C-GET identifiers and the index's query engine: reading a request's
identifier into (level, filters) and writing a match back as a response identifier."""

from __future__ import annotations

import functools
import io
import struct
from collections.abc import Mapping
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pynetdicom.dsutils import decode

from dicomvault.dicom.recode import LONG_LENGTH
from dicomvault.index import Level
from dicomvault.net.status import DATA_SET_DOES_NOT_MATCH, UNABLE_TO_PROCESS
from dicomvault.net.vocabulary import PATIENT_ROOT, PATIENT_STUDY_ONLY, STUDY_ROOT

# The C-FIND, C-MOVE and C-GET SOP classes of each model.
FIND_MODELS = (PATIENT_ROOT[0], STUDY_ROOT[0], PATIENT_STUDY_ONLY[0])
MOVE_MODELS = (PATIENT_ROOT[1], STUDY_ROOT[1], PATIENT_STUDY_ONLY[1])
GET_MODELS = (PATIENT_ROOT[2], STUDY_ROOT[2], PATIENT_STUDY_ONLY[2])

LEVELS_OF_MODEL: dict[str, frozenset[Level]] = {}
for _uid in PATIENT_ROOT:
    LEVELS_OF_MODEL[_uid] = frozenset(Level)
for _uid in STUDY_ROOT:
    LEVELS_OF_MODEL[_uid] = frozenset({Level.STUDY, Level.SERIES, Level.IMAGE})
for _uid in PATIENT_STUDY_ONLY:
    LEVELS_OF_MODEL[_uid] = frozenset({Level.PATIENT, Level.STUDY})

# Keys every response carries: the unique keys of the level and the levels above it.
UNIQUE_KEYS: dict[Level, tuple[str, ...]] = {
    Level.PATIENT: ("PatientID",),
    Level.STUDY: ("PatientID", "StudyInstanceUID"),
    Level.SERIES: ("StudyInstanceUID", "SeriesInstanceUID"),
    Level.IMAGE: ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"),
}

# Elements of an identifier that steer the query rather than match anything. Not Timezone
# Offset From UTC: it steers only when Timezone query adjustment is negotiated, which this SCP
# does not accept; otherwise it is matched and returned like any attribute (PS3.4 C.2.2.2).
_CONTROL = frozenset(
    {
        "QueryRetrieveLevel",
        "SpecificCharacterSet",
        "RetrieveAETitle",
        "QueryRetrieveView",
        "InstanceAvailability",
    }
)


class IdentifierError(ValueError):
    """An identifier the SCP cannot act on; ``status`` is the DIMSE status to answer."""

    # A900 in a query is "Identifier does not match SOP Class" (PS3.4 C.4.1.1.4).
    def __init__(self, message: str, status: int = DATA_SET_DOES_NOT_MATCH) -> None:
        super().__init__(message)
        self.status = status


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(_text(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def read_identifier(identifier: Dataset, model: str) -> tuple[Level, dict[str, str], list[str]]:
    """The query level, the matching keys (keyword -> value as text, "" for universal) and the
    requested keys, in the order the peer sent them."""
    raw_level = str(identifier.get("QueryRetrieveLevel", "")).strip()
    try:
        level = Level(raw_level)
    except ValueError as e:
        raise IdentifierError(f"invalid QueryRetrieveLevel {raw_level!r}") from e
    if level not in LEVELS_OF_MODEL.get(model, frozenset(Level)):
        raise IdentifierError(f"level {level.value} is not part of information model {model}")
    try:
        # A received identifier's values are converted as they are read: one that pydicom
        # cannot convert (a US of 3 bytes, found by the property tests) raises here.
        elements = list(identifier)
    except Exception as e:  # pydicom's conversion errors have many types
        raise IdentifierError(f"unreadable identifier value: {e}", UNABLE_TO_PROCESS) from e
    filters: dict[str, str] = {}
    requested: list[str] = []
    for element in elements:
        keyword = element.keyword
        if not keyword or keyword in _CONTROL or element.tag.group == 0x0002:
            continue
        requested.append(keyword)
        if element.VR != "SQ":
            filters[keyword] = _text(element.value)
    return level, filters, requested


_NUMBER_FORMAT = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}
_NUMBER_FORMAT |= {"SV": "q", "UV": "Q"}


@functools.cache
def _tag_and_vr(keyword: str) -> tuple[int, str] | None:
    tag = tag_for_keyword(keyword)
    if tag is None:
        return None
    vr = dictionary_VR(tag).split(" or ")[0]
    return tag, "OB" if vr == "ox" else vr


def _value_bytes(vr: str, text: str, encoding: str) -> bytes:
    if vr == "SQ" or text == "":
        return b""
    if vr in _NUMBER_FORMAT:
        kind = _NUMBER_FORMAT[vr]
        numbers = [float(v) if kind in "fd" else int(v) for v in text.split("\\")]
        return struct.pack(f"<{len(numbers)}{kind}", *numbers)
    value = text.encode(encoding)
    if len(value) % 2:
        value += b"\0" if vr == "UI" else b" "
    return value


def _encoded_element(element: DataElement, implicit_vr: bool) -> bytes:
    """A whole element (a sequence read from a stored header) encoded by pydicom."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit_vr
    write_data_element(fp, element)
    return fp.getvalue()


def encode_identifier(
    match: Mapping[str, Any],
    level: Level,
    requested: list[str],
    retrieve_aet: str,
    implicit_vr: bool = False,
) -> bytes:
    """A C-FIND response identifier, encoded (Little Endian, implicit or explicit VR): the
    requested keys (empty when not held) and the unique keys of the level and above, in UTF-8
    when any value needs more than ASCII; a sequence comes as its element. Written directly:
    pydicom's Dataset and writer cost more than the query."""
    keys = [k for k in requested if k not in UNIQUE_KEYS[level]] + list(UNIQUE_KEYS[level])
    values = {k: match.get(k, "") for k in keys}
    values |= {"QueryRetrieveLevel": level.value, "RetrieveAETitle": retrieve_aet}
    encoding = "ascii"
    if any(isinstance(v, str) and not v.isascii() for v in values.values()):
        values["SpecificCharacterSet"] = "ISO_IR 192"
        encoding = "utf-8"
    elements: list[tuple[int, str | None, bytes]] = []
    for keyword, value in values.items():
        found = _tag_and_vr(keyword)
        if found is None:
            continue
        tag, vr = found
        if isinstance(value, DataElement):
            elements.append((tag, None, _encoded_element(value, implicit_vr)))
        else:
            elements.append((tag, vr, _value_bytes(vr, value, encoding)))
    out = bytearray()
    for tag, element_vr, value in sorted(elements, key=lambda e: e[0]):
        if element_vr is None:
            out += value
            continue
        out += struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        if implicit_vr:
            out += struct.pack("<I", len(value))
        elif element_vr in LONG_LENGTH:
            out += element_vr.encode() + struct.pack("<HI", 0, len(value))
        else:
            out += element_vr.encode() + struct.pack("<H", len(value))
        out += value
    return bytes(out)


def response_identifier(
    match: Mapping[str, Any], level: Level, requested: list[str], retrieve_aet: str
) -> Dataset:
    """``encode_identifier``'s identifier as a pydicom Dataset."""
    encoded = encode_identifier(match, level, requested, retrieve_aet)
    return decode(io.BytesIO(encoded), is_implicit_vr=False, is_little_endian=True)
