"""Turns raw element values collected by the Rust scanner into text, as DICOM formats it.

The scanner returns each collected value as stored (binary numbers already formatted as text);
this module removes padding and decodes character-set dependent VRs, so that a Greek or
Japanese PatientName is indexed as the text it is. Single-byte character sets and UTF-8 are
decoded here; ISO 2022 code extensions (escape sequences, Japanese and Korean multi-byte sets)
go through pydicom's decoder, imported only when a data set needs it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import cache

from dicomvault.index.levels import DICTIONARY, KEYWORD_OF_TAG

# VRs whose bytes depend on SpecificCharacterSet (PS3.5 6.1.2.3).
_CHARSET_VRS = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC"})
# VRs where leading spaces are insignificant too.
_TRIM_BOTH = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "SH", "TM", "UI"})
# Text VRs that cannot be multi-valued: a backslash in them is a character.
_SINGLE_VALUED = frozenset({"LT", "ST", "UT"})
# ISO 2022 escape sequences are reset at these characters (PS3.5 6.1.2.5.3).
_TEXT_DELIMITERS = frozenset({0x0D, 0x0A, 0x09, 0x0C})
_PN_DELIMITERS = frozenset({0x5E, 0x3D})

# Character sets without code extensions (PS3.3 C.12.1.1.2), as Python codecs.
_SINGLE_BYTE = {
    "": "iso8859",
    "ISO_IR 6": "iso8859",
    "ISO_IR 100": "latin_1",
    "ISO_IR 101": "iso8859_2",
    "ISO_IR 109": "iso8859_3",
    "ISO_IR 110": "iso8859_4",
    "ISO_IR 144": "iso_ir_144",
    "ISO_IR 127": "iso_ir_127",
    "ISO_IR 126": "iso_ir_126",
    "ISO_IR 138": "iso_ir_138",
    "ISO_IR 148": "iso_ir_148",
    "ISO_IR 203": "iso8859_15",
    "ISO_IR 13": "shift_jis",
    "ISO_IR 166": "iso_ir_166",
    "ISO_IR 192": "UTF8",
    "GB18030": "GB18030",
    "GBK": "GBK",
}
# Python codec names pydicom uses that the standard library does not know.
_CODEC_ALIASES = {
    "iso8859": "latin_1",
    "iso_ir_144": "iso8859_5",
    "iso_ir_127": "iso8859_6",
    "iso_ir_126": "iso8859_7",
    "iso_ir_138": "iso8859_8",
    "iso_ir_148": "iso8859_9",
    "iso_ir_166": "tis_620",
    "UTF8": "utf_8",
}

SPECIFIC_CHARACTER_SET = 0x00080005


@cache
def tag_and_vr(keyword: str) -> tuple[int, str]:
    """The tag and VR of a keyword (the first VR when the dictionary allows several)."""
    if keyword in DICTIONARY:
        return DICTIONARY[keyword]
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    # pydicom's dictionary has entries without a keyword: "" would name one of them.
    tag = tag_for_keyword(keyword) if keyword else None
    if tag is None:
        raise ValueError(f"unknown DICOM keyword {keyword!r}")
    vr = dictionary_VR(tag).split(" or ")[0]
    return tag, ("OB" if vr == "ox" else vr)


def keyword_of(tag: int) -> str:
    """The keyword of any tag (the index's own without importing pydicom)."""
    if tag in KEYWORD_OF_TAG:
        return KEYWORD_OF_TAG[tag]
    from pydicom.datadict import keyword_for_tag

    return keyword_for_tag(tag)


def wanted(keywords: Iterable[str]) -> list[tuple[int, str]]:
    """(tag, VR) pairs for the scanner, for data set (not File Meta) keywords."""
    return [tag_and_vr(k) for k in keywords if tag_and_vr(k)[0] >> 16 != 0x0002]


@cache
def character_sets(raw: bytes | None) -> tuple[str, ...]:
    """The codecs for a raw SpecificCharacterSet value: one Python codec for a single-byte
    set or UTF-8; pydicom's encodings when code extensions (ISO 2022) are in use."""
    # Some writers pad CS values with NULs rather than spaces.
    terms = [t.strip(" \0") for t in (raw or b"").decode("ascii", "replace").split("\\")]
    if len(terms) == 1 and terms[0] in _SINGLE_BYTE:
        return (_CODEC_ALIASES.get(_SINGLE_BYTE[terms[0]], _SINGLE_BYTE[terms[0]]),)
    from pydicom import charset

    try:
        return tuple(charset.convert_encodings(terms))
    except ValueError:
        # pydicom warns about an unknown term and uses the default repertoire, but raises
        # for some (one with a NUL inside, found by the property tests): do as for unknown.
        return (_CODEC_ALIASES[_SINGLE_BYTE[""]],)


def decode_value(vr: str, raw: bytes, encodings: tuple[str, ...]) -> str:
    """One element value as DICOM text, padding removed, multiple values joined by '\\'."""
    if vr in _CHARSET_VRS:
        if len(encodings) == 1:
            text = raw.decode(encodings[0], "replace")
        else:
            from pydicom import charset

            delimiters = _PN_DELIMITERS if vr == "PN" else _TEXT_DELIMITERS
            if vr not in _SINGLE_VALUED:
                delimiters = delimiters | {0x5C}
            text = charset.decode_bytes(raw, list(encodings), set(delimiters))
    else:
        text = raw.decode("latin-1")
    text = text.rstrip(" \x00")
    if vr == "PN":
        # Empty trailing component groups carry nothing (PS3.5 6.2.1.1); drop them so that
        # "Wang^XiaoDong=王^小東=" and "Wang^XiaoDong=王^小東" index alike; what they leave is
        # padding too ("Doe =").
        text = "\\".join(v.rstrip("=").rstrip(" \x00") for v in text.split("\\"))
    if vr in _TRIM_BOTH:
        text = "\\".join(v.strip(" \x00") for v in text.split("\\"))
    return text


def decode_elements(elements: Mapping[int, tuple[str, bytes]]) -> dict[str, str]:
    """The index's elements among those collected, keyed by keyword and decoded with the
    data set's character set (the scanner also collects what it needs for itself)."""
    charset_element = elements.get(SPECIFIC_CHARACTER_SET)
    encodings = character_sets(charset_element[1] if charset_element else None)
    decoded: dict[str, str] = {}
    for tag, (vr, raw) in elements.items():
        keyword = KEYWORD_OF_TAG.get(tag)
        if keyword:
            decoded[keyword] = decode_value(vr, raw, encodings)
    return decoded


_UID = re.compile(r"[0-9.]+")


def is_uid(value: str) -> bool:
    """Whether ``value`` can name an instance, series or study the archive holds: UI's
    characters, digits and dots (PS3.5 6.2), of any length and components. PS3.5 9.1's rules
    (64 characters at most, no empty component, no leading zero) are what equipment should
    write, not what it always does: the listener, STOW-RS and import store such instances,
    as Orthanc and dcm4chee do, so their UIDs must reach them (to read and delete them) over
    HTTP too. None of these characters means anything to matching (no wildcard, range or
    list), so a UID in a path selects one record."""
    return _UID.fullmatch(value) is not None
