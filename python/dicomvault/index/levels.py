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

# The plural nouns the CLI's ``ls`` and the REST API's resources name the levels by.
PLURALS: dict[str, Level] = {
    "patients": Level.PATIENT,
    "studies": Level.STUDY,
    "series": Level.SERIES,
    "instances": Level.IMAGE,
}
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
        "BitsAllocated",
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

# Tag and VR of every keyword above. The archive's import path reads it instead of pydicom's
# data dictionary, whose import alone costs a short import as much as the work itself; a test
# checks it against pydicom.
DICTIONARY: dict[str, tuple[int, str]] = {
    "PatientName": (0x00100010, "PN"),
    "PatientID": (0x00100020, "LO"),
    "IssuerOfPatientID": (0x00100021, "LO"),
    "PatientBirthDate": (0x00100030, "DA"),
    "PatientSex": (0x00100040, "CS"),
    "OtherPatientIDs": (0x00101000, "LO"),
    "StudyInstanceUID": (0x0020000D, "UI"),
    "StudyDate": (0x00080020, "DA"),
    "StudyTime": (0x00080030, "TM"),
    "AccessionNumber": (0x00080050, "SH"),
    "StudyID": (0x00200010, "SH"),
    "StudyDescription": (0x00081030, "LO"),
    "ReferringPhysicianName": (0x00080090, "PN"),
    "InstitutionName": (0x00080080, "LO"),
    "SeriesInstanceUID": (0x0020000E, "UI"),
    "Modality": (0x00080060, "CS"),
    "SeriesNumber": (0x00200011, "IS"),
    "SeriesDescription": (0x0008103E, "LO"),
    "BodyPartExamined": (0x00180015, "CS"),
    "SeriesDate": (0x00080021, "DA"),
    "SeriesTime": (0x00080031, "TM"),
    "ProtocolName": (0x00181030, "LO"),
    "SOPInstanceUID": (0x00080018, "UI"),
    "SOPClassUID": (0x00080016, "UI"),
    "InstanceNumber": (0x00200013, "IS"),
    "NumberOfFrames": (0x00280008, "IS"),
    "TransferSyntaxUID": (0x00020010, "UI"),
    "SpecificCharacterSet": (0x00080005, "CS"),
    "ContentDate": (0x00080023, "DA"),
    "ContentTime": (0x00080033, "TM"),
    "AcquisitionNumber": (0x00200012, "IS"),
    "Rows": (0x00280010, "US"),
    "Columns": (0x00280011, "US"),
    "BitsAllocated": (0x00280100, "US"),
    "MediaStorageSOPInstanceUID": (0x00020003, "UI"),
    "NumberOfPatientRelatedStudies": (0x00201200, "IS"),
    "NumberOfPatientRelatedSeries": (0x00201202, "IS"),
    "NumberOfPatientRelatedInstances": (0x00201204, "IS"),
    "NumberOfStudyRelatedSeries": (0x00201206, "IS"),
    "NumberOfStudyRelatedInstances": (0x00201208, "IS"),
    "NumberOfSeriesRelatedInstances": (0x00201209, "IS"),
    "ModalitiesInStudy": (0x00080061, "CS"),
}
KEYWORD_OF_TAG: dict[int, str] = {tag: keyword for keyword, (tag, _) in DICTIONARY.items()}

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
