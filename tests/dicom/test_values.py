"""Decoding collected values: padding, character sets, DCMTK-style key arguments."""

from pathlib import Path

import pydicom
import pytest

from dicomvault import _native
from dicomvault.dicom.keys import parse_key
from dicomvault.dicom.values import decode_elements, decode_value, wanted

CHARSETS = Path(pydicom.__file__).parent / "data" / "charset_files"


@pytest.mark.parametrize(
    "name", sorted(p.name for p in CHARSETS.glob("chr*.dcm") if "SQ" not in p.name)
)
def test_person_names_decode_as_pydicom_does(name):
    result = _native.scan_file(
        str(CHARSETS / name), wanted(["PatientName", "SpecificCharacterSet"])
    )
    ours = decode_elements(result["elements"])["PatientName"]
    theirs = str(pydicom.dcmread(CHARSETS / name).PatientName)
    assert ours == theirs.rstrip("=")


def test_padding_is_removed_per_vr():
    assert decode_value("UI", b"1.2.3\x00", ["iso8859"]) == "1.2.3"
    assert decode_value("CS", b" CT \\MR ", ["iso8859"]) == "CT\\MR"
    assert decode_value("LT", b"line one\\two  ", ["iso8859"]) == "line one\\two"
    assert decode_value("PN", b"Doe^John=", ["iso8859"]) == "Doe^John"


def test_key_arguments_take_keywords_and_tags():
    assert parse_key("PatientName=SMITH*") == ("PatientName", "SMITH*")
    assert parse_key("(0010,0020)=123") == ("PatientID", "123")
    assert parse_key("0008,0052=STUDY") == ("QueryRetrieveLevel", "STUDY")
    assert parse_key("StudyDate") == ("StudyDate", "")
    with pytest.raises(ValueError, match="unknown"):
        parse_key("NoSuchKeyword=1")
