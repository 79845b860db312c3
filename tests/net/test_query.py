"""Response identifiers written directly match what pydicom writes for the same elements."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom.dsutils import encode

from dicomvault.index import Level
from dicomvault.net.query import encode_identifier

MATCHES = [
    # keys of every level, a multi-valued string, odd and even lengths
    {
        "PatientID": "PID1",
        "PatientName": "Doe^John",
        "StudyInstanceUID": "1.2.3",
        "StudyDate": "20240101",
        "ModalitiesInStudy": "CT\\MR",
        "NumberOfStudyRelatedInstances": "12",
    },
    # non-ASCII: UTF-8 with its Specific Character Set
    {"PatientID": "P2", "PatientName": "Διονυσιος", "StudyInstanceUID": "1.2.30"},
    # a binary VR, a sequence, a key not held
    {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.4", "SOPInstanceUID": "1.2.4.5"},
]
REQUESTED = {
    Level.STUDY: ["PatientName", "StudyDate", "ModalitiesInStudy", "NumberOfStudyRelatedInstances"],
    Level.IMAGE: ["Rows", "ReferencedSeriesSequence", "InstanceNumber", "SOPInstanceUID"],
}
BINARY = {"Rows": 512}


def pydicom_identifier(match: dict[str, str], level: Level, requested: list[str]) -> Dataset:
    ds = Dataset()
    values = {k: match.get(k, "") for k in requested}
    ds.RetrieveAETitle = "ARCHIVE"
    unique = {
        Level.STUDY: ("PatientID", "StudyInstanceUID"),
        Level.IMAGE: ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"),
    }[level]
    for keyword in unique:
        values[keyword] = match.get(keyword, "")
    if any(not v.isascii() for v in values.values()):
        ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = level.value
    ds.RetrieveAETitle = "ARCHIVE"
    for keyword, text in values.items():
        if keyword == "ReferencedSeriesSequence":
            setattr(ds, keyword, Sequence())
        elif keyword in BINARY:
            setattr(ds, keyword, int(text) if text else None)
        elif "\\" in text:
            setattr(ds, keyword, text.split("\\"))
        else:
            setattr(ds, keyword, text or None)
    return ds


@pytest.mark.parametrize("implicit_vr", [False, True])
@pytest.mark.parametrize("level", [Level.STUDY, Level.IMAGE])
@pytest.mark.parametrize("match", MATCHES)
def test_identifier_bytes_match_pydicom(match, level, implicit_vr):
    match = {**match, "Rows": "512"} if level is Level.IMAGE else match
    ours = encode_identifier(match, level, REQUESTED[level], "ARCHIVE", implicit_vr)
    expected = pydicom_identifier(match, level, REQUESTED[level])
    assert ours == encode(expected, implicit_vr, True)
