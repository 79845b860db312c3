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
    scanner = _native.Scanner(wanted(["PatientName", "SpecificCharacterSet"]))
    result = scanner.scan_file(str(CHARSETS / name))
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


def test_the_index_dictionary_agrees_with_pydicom():
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    from dicomvault.index.levels import DICTIONARY

    for keyword, (tag, vr) in DICTIONARY.items():
        assert tag_for_keyword(keyword) == tag, keyword
        assert dictionary_VR(tag) == vr, keyword


@pytest.mark.parametrize(
    ("charset", "raw", "text"),
    [
        (b"ISO_IR 100", "Buc^Jérôme".encode("latin-1"), "Buc^Jérôme"),
        (b"ISO_IR 192", "Wang^XiaoDong=王^小东".encode(), "Wang^XiaoDong=王^小东"),
        (b"ISO_IR 144", "Люкceмбypг".encode("iso8859_5"), "Люкceмбypг"),
        (b"", b"Doe^John", "Doe^John"),
    ],
)
def test_single_byte_and_utf8_sets_decode_without_code_extensions(charset, raw, text):
    elements = {0x00080005: ("CS", charset), 0x00100010: ("PN", raw)}
    assert decode_elements(elements)["PatientName"] == text
