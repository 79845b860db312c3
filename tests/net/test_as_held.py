"""How a C-GET is asked for each instance to come as held (``net/as_held.py``): the
presentation contexts it proposes, and the requests a retrieve is cut into."""

from __future__ import annotations

from dicomvault.index import Level
from dicomvault.net import vocabulary
from dicomvault.net.as_held import (
    MAX_CLASSES_IN_EACH_SYNTAX,
    MAX_CONTEXTS,
    GetRequest,
    fits,
    get_contexts,
    get_requests,
    syntaxes_of,
)


def test_a_get_proposes_the_classes_it_brings_in_each_syntax_within_128_contexts():
    """PS3.8 7.1.1.13: one transfer syntax is accepted per context, so a class is proposed in
    a context per syntax for its instances to come as the source holds them; context IDs are
    the odd numbers 1-255 (PS3.8 9.3.2.2), 128 at most, two of them for the Get models."""
    room = MAX_CONTEXTS - 2
    usual = get_contexts(frozenset(), room)
    assert [uid for uid, _ in usual] == list(vocabulary.STORAGE_SOP_CLASSES)
    rare = vocabulary.RARER_STORAGE_SOP_CLASSES[0]  # not among the usual ones
    ct, mr = vocabulary.STORAGE_SOP_CLASSES[10], vocabulary.STORAGE_SOP_CLASSES[40]
    proposed = get_contexts(frozenset({ct, mr, rare}), room)
    assert len(proposed) == room
    for uid in (ct, mr, rare):
        assert [syntaxes for u, syntaxes in proposed if u == uid] == [
            [syntax] for syntax in vocabulary.GET_SYNTAXES
        ]
    # The rest of the room: the usual classes, one context each with every syntax.
    rest = proposed[3 * len(vocabulary.GET_SYNTAXES) :]
    assert all(syntaxes == vocabulary.GET_SYNTAXES for _, syntaxes in rest)
    assert [uid for uid, _ in rest] == [
        uid for uid in vocabulary.STORAGE_SOP_CLASSES if uid not in (ct, mr)
    ][: len(rest)]
    # More classes than fit in each syntax: those that do not come first, in one context.
    many = frozenset(vocabulary.STORAGE_SOP_CLASSES[:20])
    proposed = get_contexts(many, room)
    assert len(proposed) == room
    single = {uid for uid, syntaxes in proposed if len(syntaxes) == 1}
    assert len(single) == MAX_CLASSES_IN_EACH_SYNTAX
    assert many <= {uid for uid, _ in proposed}


def _listing(classes: list[str]) -> list[dict[str, str]]:
    """Two instances a series, a class a series, in study 1.2."""
    return [
        {
            "StudyInstanceUID": "1.2",
            "SeriesInstanceUID": f"1.2.{n}",
            "SOPInstanceUID": f"1.2.{n}.{i}",
            "SOPClassUID": uid,
        }
        for n, uid in enumerate(classes)
        for i in (1, 2)
    ]


def test_a_retrieve_of_more_classes_than_one_get_proposes_so_is_cut_by_series():
    """Up to MAX_CLASSES_IN_EACH_SYNTAX classes: the request as asked; more: one
    SERIES-level request per series (at IMAGE level, the instances asked for in each); a
    listing that names no class: as asked, none known."""
    classes = list(vocabulary.STORAGE_SOP_CLASSES)
    asked = {"StudyInstanceUID": "1.2"}
    few = MAX_CLASSES_IN_EACH_SYNTAX
    assert get_requests(Level.STUDY, asked, _listing(classes[:few])) == [
        GetRequest(Level.STUDY, asked, frozenset(classes[:few]))
    ]
    many = get_requests(Level.STUDY, asked, _listing(classes[: few + 1]))
    assert sorted((r.level, r.keys["SeriesInstanceUID"], r.classes) for r in many) == sorted(
        (Level.SERIES, f"1.2.{n}", frozenset({classes[n]})) for n in range(few + 1)
    )
    assert all(r.keys["StudyInstanceUID"] == "1.2" for r in many)
    # At IMAGE level, no instance that was not asked for: one of each series.
    listed = [m for m in _listing(classes[: few + 1]) if m["SOPInstanceUID"].endswith(".1")]
    wanted = {**asked, "SOPInstanceUID": "\\".join(m["SOPInstanceUID"] for m in listed)}
    images = get_requests(Level.IMAGE, wanted, listed)
    assert sorted((r.level, r.keys["SOPInstanceUID"]) for r in images) == sorted(
        (Level.IMAGE, f"1.2.{n}.1") for n in range(few + 1)
    )
    unnamed = [{**m, "SOPClassUID": ""} for m in _listing(classes[: few + 1])]
    for unknown in (None, [], unnamed):
        assert get_requests(Level.STUDY, asked, unknown) == [
            GetRequest(Level.STUDY, asked, frozenset())
        ]


def test_a_video_class_is_proposed_in_each_video_syntax_too():
    """PS3.5 8.2.5-8.2.12: MPEG-2, H.264 and HEVC hold video classes' instances; the other
    classes are not proposed in them (the room would hold fewer classes each syntax)."""
    [video, *_] = sorted(vocabulary.VIDEO_SOP_CLASSES)
    ct = vocabulary.STORAGE_SOP_CLASSES[10]
    proposed = get_contexts(frozenset({video, ct}), MAX_CONTEXTS - 2)
    alone = [(uid, syntaxes[0]) for uid, syntaxes in proposed if len(syntaxes) == 1]
    assert [s for uid, s in alone if uid == video] == [
        *vocabulary.GET_SYNTAXES,
        *vocabulary.VIDEO_SYNTAXES,
    ]
    assert [s for uid, s in alone if uid == ct] == vocabulary.GET_SYNTAXES
    assert "1.2.840.10008.1.2.4.102" in vocabulary.VIDEO_SYNTAXES  # H.264 High Profile 4.1


def test_classes_are_counted_by_the_contexts_they_take():
    """A video class takes 37 contexts: three of them and a CT do not fit one association,
    so their series are asked for apart; a class is in all its syntaxes' contexts or in
    none (else an instance held in a syntax left out could come converted to another)."""
    videos = sorted(vocabulary.VIDEO_SOP_CLASSES)
    ct = vocabulary.STORAGE_SOP_CLASSES[10]
    assert fits([ct, *videos[:2]]) and not fits([ct, *videos])
    apart = get_requests(Level.STUDY, {"StudyInstanceUID": "1.2"}, _listing([ct, *videos]))
    assert sorted(r.classes for r in apart) == sorted(frozenset({c}) for c in [ct, *videos])
    proposed = get_contexts(frozenset([ct, *videos]), MAX_CONTEXTS - 2)
    for uid in [ct, *videos]:
        alone = [s[0] for u, s in proposed if u == uid and len(s) == 1]
        assert alone in ([], syntaxes_of(uid)), uid
