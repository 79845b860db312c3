"""Property-based tests of C-FIND identifiers: any identifier reads as (level, keys) or is an
IdentifierError, and a response identifier reads back to the values it was written from."""

import io

from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pynetdicom.dsutils import decode

from dicomvault.index import Level
from dicomvault.index.levels import DICTIONARY
from dicomvault.net.query import (
    FIND_MODELS,
    GET_MODELS,
    MOVE_MODELS,
    IdentifierError,
    encode_identifier,
    read_identifier,
)

# Keys that match records (the control keys steer the query instead).
CONTROL = {"QueryRetrieveLevel", "SpecificCharacterSet"}
KEYWORDS = sorted(k for k, (tag, _) in DICTIONARY.items() if k not in CONTROL and tag >> 16 != 2)
MODELS = st.sampled_from([*FIND_MODELS, *MOVE_MODELS, *GET_MODELS, "1.2.3"])
VALUE = st.text(alphabet=st.characters(exclude_categories=["Cs", "Cc"]), max_size=16)
# Values a peer may send, as the bytes pynetdicom leaves undecoded until read.
RAW = st.binary(max_size=16) | VALUE.map(lambda v: v.encode("utf-8"))


@settings(max_examples=200, deadline=None)
@given(
    level=st.sampled_from([*(lvl.value for lvl in Level), "", "FRAME", " STUDY "]) | VALUE,
    keys=st.dictionaries(st.sampled_from(KEYWORDS), RAW, max_size=6),
    model=MODELS,
)
def test_any_identifier_reads_or_is_an_identifier_error(level, keys, model):
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword, raw in keys.items():
        tag, vr = DICTIONARY[keyword]
        identifier[tag] = RawDataElement(Tag(tag), vr, len(raw), raw, 0, False, True)
    try:
        read_level, filters, requested = read_identifier(identifier, model)
    except IdentifierError:
        return
    assert read_level.value == level.strip()
    assert set(filters) == set(requested) == set(keys)


# Text in each VR's repertoire: CS is upper case letters, digits, space and underscore.
TEXT_VALUES = {
    "CS": st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _", max_size=16),
    "LO": VALUE.filter(lambda v: "\\" not in v),
    "SH": VALUE.filter(lambda v: "\\" not in v),
    "PN": VALUE.filter(lambda v: "\\" not in v),
}
MATCHES = st.lists(
    st.sampled_from([k for k in KEYWORDS if DICTIONARY[k][1] in TEXT_VALUES]),
    unique=True,
    max_size=6,
).flatmap(lambda keys: st.fixed_dictionaries({k: TEXT_VALUES[DICTIONARY[k][1]] for k in keys}))


@settings(max_examples=200, deadline=None)
@given(
    level=st.sampled_from(list(Level)),
    match=MATCHES,
    implicit_vr=st.booleans(),
)
def test_a_response_identifier_reads_back(level, match, implicit_vr):
    match = {k: v.strip(" ") for k, v in match.items()}
    encoded = encode_identifier(match, level, sorted(match), "ARCHIVE", implicit_vr)
    back = decode(io.BytesIO(encoded), is_implicit_vr=implicit_vr, is_little_endian=True)
    # The values as written (pydicom would render a Person Name its own way): padded to an
    # even length, in UTF-8 when the Specific Character Set says so.
    encoding = "utf-8" if back.get("SpecificCharacterSet") == "ISO_IR 192" else "ascii"
    assert back.QueryRetrieveLevel == level.value
    for keyword, value in match.items():
        raw = back.get_item(DICTIONARY[keyword][0]).value or b""
        assert raw.decode(encoding).rstrip(" ") == value, keyword
