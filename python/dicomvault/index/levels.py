"""The index's levels and the tags it holds at each: the one list that ingest, C-FIND,
QIDO-RS and the CLI take their keywords from."""

from __future__ import annotations

from enum import Enum


class Level(str, Enum):
    """A level of the hierarchy, named by its DICOM QueryRetrieveLevel."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    @property
    def parent(self) -> Level | None:
        return _PARENT[self]

    @property
    def child(self) -> Level | None:
        return _CHILD[self]

    @property
    def depth(self) -> int:
        return _ORDER.index(self)


_ORDER = [Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE]
_PARENT = {lvl: (_ORDER[i - 1] if i else None) for i, lvl in enumerate(_ORDER)}
_CHILD = {lvl: (_ORDER[i + 1] if i + 1 < len(_ORDER) else None) for i, lvl in enumerate(_ORDER)}

TAGS: dict[Level, tuple[str, ...]] = {
    Level.PATIENT: (
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "PatientSex",
        "OtherPatientIDs",
    ),
    Level.STUDY: (
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyID",
        "StudyDescription",
        "ReferringPhysicianName",
        "InstitutionName",
    ),
    Level.SERIES: (
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "BodyPartExamined",
        "SeriesDate",
        "SeriesTime",
        "ProtocolName",
    ),
    Level.IMAGE: (
        "SOPInstanceUID",
        "SOPClassUID",
        "InstanceNumber",
        "NumberOfFrames",
        "TransferSyntaxUID",
        "SpecificCharacterSet",
        "ContentDate",
        "ContentTime",
        "AcquisitionNumber",
        "Rows",
        "Columns",
        "MediaStorageSOPInstanceUID",
    ),
}

# Keys computed from the hierarchy rather than stored in any data set.
COMPUTED: dict[str, Level] = {
    "NumberOfPatientRelatedStudies": Level.PATIENT,
    "NumberOfPatientRelatedSeries": Level.PATIENT,
    "NumberOfPatientRelatedInstances": Level.PATIENT,
    "NumberOfStudyRelatedSeries": Level.STUDY,
    "NumberOfStudyRelatedInstances": Level.STUDY,
    "NumberOfSeriesRelatedInstances": Level.SERIES,
    "ModalitiesInStudy": Level.STUDY,
}

LEVEL_OF: dict[str, Level] = {k: lvl for lvl, keys in TAGS.items() for k in keys} | COMPUTED

# What the scanner collects from each data set (File Meta and derived keys excluded).
INDEXED_KEYWORDS: tuple[str, ...] = tuple(
    k
    for keys in TAGS.values()
    for k in keys
    if k not in ("TransferSyntaxUID", "MediaStorageSOPInstanceUID")
)

# The record keys: unique per level (see ``keys.py`` for how missing ones are made).
UNIQUE: dict[Level, str] = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}
