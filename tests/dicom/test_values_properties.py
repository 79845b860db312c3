"""Property-based tests of identifier decoding: any bytes in any character set decode to text
without an exception, padding removed as the VR says, and keys parse back to what they name."""

from hypothesis import given, settings
from hypothesis import strategies as st

from dicomvault.dicom.keys import parse_key
from dicomvault.dicom.values import character_sets, decode_elements, decode_value
from dicomvault.index.levels import DICTIONARY, KEYWORD_OF_TAG

CHARSET_TERMS = [
    "",
    "ISO_IR 100",
    "ISO_IR 192",
    "ISO_IR 13",
    "ISO 2022 IR 6",
    "ISO 2022 IR 87",
    "ISO 2022 IR 13",
    "ISO 2022 IR 149",
    "ISO 2022 IR 100",
    "GB18030",
    "NOT A CHARSET",
]
VRS = ["PN", "LO", "SH", "LT", "ST", "UT", "UC", "CS", "UI", "DA", "TM", "IS", "DS", "AE"]
# Values as peers send them: any bytes, weighted towards padding, delimiters and escapes.
RAW = st.binary(max_size=64) | st.lists(
    st.sampled_from([b" ", b"\0", b"\\", b"^", b"=", b"\x1b$B", b"\x1b(B", b"A", b"\xe9", b"\xff"]),
    max_size=16,
).map(b"".join)
CHARSET = st.lists(st.sampled_from(CHARSET_TERMS), min_size=1, max_size=3).map(
    lambda terms: "\\".join(terms).encode()
) | st.binary(max_size=24)


@settings(max_examples=150, deadline=None)
@given(vr=st.sampled_from(VRS), raw=RAW, charset=CHARSET)
def test_any_value_in_any_character_set_decodes(vr, raw, charset):
    text = decode_value(vr, raw, character_sets(charset))
    assert isinstance(text, str)
    assert not text.endswith((" ", "\0"))
    if vr in ("CS", "UI", "DA", "TM", "IS", "DS", "AE", "LO", "SH"):
        assert all(v == v.strip(" \0") for v in text.split("\\"))


@settings(max_examples=100, deadline=None)
@given(
    elements=st.dictionaries(
        st.sampled_from(sorted(KEYWORD_OF_TAG)), st.tuples(st.sampled_from(VRS), RAW), max_size=8
    ),
    charset=CHARSET,
)
def test_a_data_set_decodes_to_its_keywords(elements, charset):
    elements[0x00080005] = ("CS", charset)
    decoded = decode_elements(elements)
    assert set(decoded) == {KEYWORD_OF_TAG[t] for t in elements if t in KEYWORD_OF_TAG}


@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet=st.characters(codec="ascii", exclude_characters="\\"), max_size=32))
def test_ascii_text_without_padding_decodes_to_itself(text):
    text = text.strip(" \0")
    for vr in ("LO", "PN", "CS"):
        assert decode_value(vr, text.encode(), character_sets(b"")) == (
            text.rstrip("=") if vr == "PN" else text
        )


@settings(max_examples=50, deadline=None)
@given(keyword=st.sampled_from(sorted(DICTIONARY)), value=st.text(max_size=24))
def test_keys_parse_back_by_keyword_and_by_tag(keyword, value):
    tag = DICTIONARY[keyword][0]
    assert parse_key(f"{keyword}={value}") == (keyword, value)
    assert parse_key(f"({tag >> 16:04X},{tag & 0xFFFF:04X})={value}") == (keyword, value)
    assert parse_key(keyword) == (keyword, "")


@settings(max_examples=200, deadline=None)
@given(argument=st.text(max_size=40))
def test_any_key_argument_parses_or_is_a_value_error(argument):
    try:
        keyword, _ = parse_key(argument)
    except ValueError:
        return
    assert keyword
