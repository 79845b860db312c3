"""Turns raw element values collected by the Rust scanner into text, as DICOM formats it.

The scanner returns each collected value as stored (binary numbers already formatted as text);
this module removes padding and decodes character-set dependent VRs with pydicom's codecs, so
a Greek or Japanese PatientName is indexed as the text it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache

from pydicom import charset
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

# VRs whose bytes depend on SpecificCharacterSet (PS3.5 6.1.2.3).
_CHARSET_VRS = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC"})
# VRs where leading spaces are insignificant too.
_TRIM_BOTH = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "SH", "TM", "UI"})
# Text VRs that cannot be multi-valued: a backslash in them is a character.
_SINGLE_VALUED = frozenset({"LT", "ST", "UT"})

# ISO 2022 escape sequences are reset at these characters (PS3.5 6.1.2.5.3).
_TEXT_DELIMITERS = frozenset({0x0D, 0x0A, 0x09, 0x0C})
_PN_DELIMITERS = frozenset({0x5E, 0x3D})

SPECIFIC_CHARACTER_SET = 0x00080005


@cache
def tag_and_vr(keyword: str) -> tuple[int, str]:
    """The tag and VR of a keyword (the first VR when the dictionary allows several)."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"unknown DICOM keyword {keyword!r}")
    vr = dictionary_VR(tag).split(" or ")[0]
    return tag, ("OB" if vr == "ox" else vr)


def wanted(keywords: Iterable[str]) -> list[tuple[int, str]]:
    """(tag, VR) pairs for the scanner, for data set (not File Meta) keywords."""
    return [tag_and_vr(k) for k in keywords if tag_and_vr(k)[0] >> 16 != 0x0002]


def character_sets(raw: bytes | None) -> list[str]:
    """Python codecs for a raw SpecificCharacterSet value (empty: the default repertoire)."""
    if not raw:
        return ["iso8859"]
    terms = [t.strip() for t in raw.decode("ascii", "replace").split("\\")]
    return charset.convert_encodings(terms or [""])


def decode_value(vr: str, raw: bytes, encodings: list[str]) -> str:
    """One element value as DICOM text, padding removed, multiple values joined by '\\'."""
    if vr in _CHARSET_VRS:
        delimiters = _PN_DELIMITERS if vr == "PN" else _TEXT_DELIMITERS
        if vr not in _SINGLE_VALUED:
            delimiters = delimiters | {0x5C}
        text = charset.decode_bytes(raw, encodings, delimiters)
    else:
        text = raw.decode("latin-1")
    text = text.rstrip(" \x00")
    if vr == "PN":
        # Empty trailing component groups carry nothing (PS3.5 6.2.1.1); drop them so that
        # "Wang^XiaoDong=王^小東=" and "Wang^XiaoDong=王^小東" index alike.
        text = "\\".join(v.rstrip("=") for v in text.split("\\"))
    if vr in _TRIM_BOTH:
        text = "\\".join(v.strip(" \x00") for v in text.split("\\"))
    return text


def decode_elements(elements: Mapping[int, tuple[str, bytes]]) -> dict[str, str]:
    """Collected elements keyed by keyword, decoded with the data set's character set."""
    charset_element = elements.get(SPECIFIC_CHARACTER_SET)
    encodings = character_sets(charset_element[1] if charset_element else None)
    decoded: dict[str, str] = {}
    for tag, (vr, raw) in elements.items():
        keyword = keyword_for_tag(tag)
        if keyword:
            decoded[keyword] = decode_value(vr, raw, encodings)
    return decoded
