"""Property-based tests of C-FIND matching: any query against any value answers a bool, and a
value the index holds, made a query, finds itself (as a single value, a range, a prefix)."""

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dicomvault.dicom.values import decode_value
from dicomvault.index.levels import DICTIONARY
from dicomvault.index.matching import literal_prefix, matcher

KEYWORDS = sorted(DICTIONARY)
# Query and value text weighted towards what matching treats specially.
TEXT = st.text(alphabet=st.sampled_from("0123456789.:-+*?\\=^ \0aZé山"), max_size=20) | st.text(
    max_size=20
)
WILDCARDS = "*?\\"


@settings(max_examples=500, deadline=None)
@given(keyword=st.sampled_from(KEYWORDS), query=TEXT, value=st.none() | TEXT, fold=st.booleans())
def test_any_query_against_any_value_is_a_bool(keyword, query, value, fold):
    assert matcher(keyword, query, case_insensitive_pn=fold).matches(value) in (True, False)


# Values in DICOM's repertoires (no control characters), as stored: padded or not.
PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_categories=["Cc"])
STORED = st.tuples(st.text(alphabet=PRINTABLE, max_size=20), st.sampled_from(["", " ", "\0"]))


@settings(max_examples=300, deadline=None)
@given(keyword=st.sampled_from(KEYWORDS), stored=STORED, fold=st.booleans())
def test_an_indexed_value_matches_itself(keyword, stored, fold):
    vr = DICTIONARY[keyword][1]
    value = decode_value(vr, "".join(stored).encode("latin-1"), ("latin_1",))
    assume(value.strip(" ") and not any(c in value for c in WILDCARDS))
    assume(vr not in ("DA", "TM") or ("-" not in value and value.strip(" ") == value))
    assert matcher(keyword, value, case_insensitive_pn=fold).matches(value)


DATES = st.dates().map(lambda d: d.strftime("%Y%m%d"))
TIMES = st.times().map(lambda t: t.strftime("%H%M%S.%f"))


@settings(max_examples=200, deadline=None)
@given(date=DATES, time=TIMES, digits=st.integers(min_value=2, max_value=13))
def test_dates_and_times_fall_in_the_ranges_they_bound(date, time, digits):
    for keyword, value in (("StudyDate", date), ("StudyTime", time)):
        for query in (value, f"{value}-{value}", f"{value}-", f"-{value}"):
            assert matcher(keyword, query).matches(value), (query, value)
    partial = time[: min(digits, 6) // 2 * 2]
    assert matcher("StudyTime", partial).matches(time)
    assert matcher("StudyTime", f"{partial}-{partial}").matches(time)


@settings(max_examples=300, deadline=None)
@given(
    keyword=st.sampled_from([k for k in KEYWORDS if DICTIONARY[k][1] in ("LO", "SH", "PN", "CS")]),
    value=st.text(
        alphabet=st.characters(exclude_characters=WILDCARDS + "=", exclude_categories=["Cc"]),
        max_size=16,
    ),
    cut=st.integers(min_value=0, max_value=16),
)
def test_a_prefix_and_a_star_match_the_value(keyword, value, cut):
    value = value.strip(" \0")
    assume(value)
    query = value[:cut] + "*"
    assert literal_prefix(query) == value[:cut]
    assert matcher(keyword, query).matches(value)
    assert matcher(keyword, "*").matches(None)
    assert matcher(keyword, "").matches(None)
