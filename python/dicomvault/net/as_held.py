"""How a C-GET is asked so that each instance comes as the source holds it: its SOP Class
proposed in a presentation context of its own for each transfer syntax (an acceptor takes one
syntax per context, PS3.8 7.1.1.13, and a source sends an instance unconverted only on a
context of its syntax), and a retrieve cut by series when its instances are of more classes
than one association proposes so. Both C-GET SCUs (``net/bulk.py`` into the archive,
``net/scu.py`` into files) and the migration use it."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from dicomvault.index import Level
from dicomvault.net.vocabulary import (
    GET_SYNTAXES,
    STORAGE_SOP_CLASSES,
    VIDEO_SOP_CLASSES,
    VIDEO_SYNTAXES,
    RetrieveResult,
)

# Presentation context IDs are the odd numbers 1-255 (PS3.8 9.3.2.2): 128 contexts at most.
MAX_CONTEXTS = 128
# SOP Classes a C-GET proposes in every transfer syntax at once: 6 of 18 contexts each (a
# video class takes more, ``syntaxes_of``), leaving room beside the Get models for the usual
# classes, one context each.
MAX_CLASSES_IN_EACH_SYNTAX = 6
EACH_SYNTAX_ROOM = MAX_CLASSES_IN_EACH_SYNTAX * len(GET_SYNTAXES)

# What an IMAGE-level C-FIND is asked, beside a retrieve's keys, to plan it.
LISTING_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def syntaxes_of(sop_class: str) -> list[str]:
    """The transfer syntaxes an instance of ``sop_class`` may be held in, of those the
    listener takes: the video ones too for a video class."""
    if sop_class in VIDEO_SOP_CLASSES:
        return [*GET_SYNTAXES, *VIDEO_SYNTAXES]
    return GET_SYNTAXES


def fits(classes: Collection[str], room: int = EACH_SYNTAX_ROOM) -> bool:
    """Whether ``classes`` fit in ``room`` contexts, each class in each of its syntaxes."""
    return sum(len(syntaxes_of(uid)) for uid in classes) <= room


def fitting(
    classes: Iterable[str], start: Collection[str] = (), room: int = EACH_SYNTAX_ROOM
) -> frozenset[str]:
    """``start`` and, in their order, as many of ``classes`` as fit beside them."""
    taken = list(dict.fromkeys(start))
    for uid in classes:
        if uid not in taken and fits([*taken, uid], room):
            taken.append(uid)
    return frozenset(taken)


def get_contexts(classes: Collection[str], room: int) -> list[tuple[str, list[str]]]:
    """What a C-GET proposes to receive in ``room`` presentation contexts: each of
    ``classes`` (the SOP Classes the instances asked for are of) that fit (``fits``) in a
    context of its own for each syntax it may be held in — a class in all of them or in
    none; then, one context each, the other classes those did not include, and the usual
    ones."""
    each = sorted(fitting(sorted(classes), room=min(room, EACH_SYNTAX_ROOM)))
    proposed = [(uid, [syntax]) for uid in each for syntax in syntaxes_of(uid)]
    others = dict.fromkeys([*sorted(classes), *STORAGE_SOP_CLASSES])
    proposed += [(uid, GET_SYNTAXES) for uid in others if uid not in each]
    return proposed[:room]


def classes_by_series(
    matches: Sequence[Mapping[str, str]],
) -> dict[tuple[str, str], set[str]] | None:
    """(Study, Series Instance UID) -> the SOP Classes of its instances, from an IMAGE-level
    listing; None when the listing does not name them all (DCMTK's dcmqrscp names none)."""
    classes: dict[tuple[str, str], set[str]] = {}
    for m in matches:
        where = (m.get("StudyInstanceUID", ""), m.get("SeriesInstanceUID", ""))
        sop_class = m.get("SOPClassUID", "")
        if "" in where or not sop_class:
            return None
        classes.setdefault(where, set()).add(sop_class)
    return classes


def series_groups(
    classes: dict[tuple[str, str], set[str]], lists: bool
) -> list[tuple[str, list[str], set[str]]]:
    """The series of ``classes`` ((study, series) -> SOP Classes) in groups of one study
    holding no more classes together than a C-GET proposes in each transfer syntax (a
    series each, unless the source takes ``lists`` of UIDs): (study, series, classes)."""
    groups: list[tuple[str, list[str], set[str]]] = []
    for (study, series), held in sorted(classes.items(), key=lambda c: (c[0][0], sorted(c[1]))):
        last = groups[-1] if groups else None
        if last is None or not lists or last[0] != study or not fits(last[2] | held):
            groups.append((study, [series], set(held)))
        else:
            last[1].append(series)
            last[2].update(held)
    return groups


@dataclass(frozen=True)
class GetRequest:
    """One C-GET: its level and keys, and the classes it proposes in each transfer syntax."""

    level: Level
    keys: Mapping[str, str]
    classes: frozenset[str]


def get_requests(
    level: Level, keys: Mapping[str, str], matches: Sequence[Mapping[str, str]] | None
) -> list[GetRequest]:
    """The C-GETs that bring what ``keys`` select at ``level``, each instance as held, given
    the IMAGE-level listing of it (``LISTING_KEYS``; None if the source could not list):
    the request as asked when its classes fit one association (or are unknown), else one
    for each series — SERIES-level, or at IMAGE level the instances asked for in it."""
    classes = classes_by_series(matches) if matches else None
    if not classes or matches is None:
        return [GetRequest(level, keys, frozenset())]
    every = frozenset().union(*classes.values())
    if fits(every):
        return [GetRequest(level, keys, every)]
    requests = []
    for study, [series], held in series_groups(classes, lists=False):
        where = {"StudyInstanceUID": study, "SeriesInstanceUID": series}
        if level is Level.IMAGE:
            instances = [
                m.get("SOPInstanceUID", "")
                for m in matches
                if (m["StudyInstanceUID"], m["SeriesInstanceUID"]) == (study, series)
            ]
            requests.append(
                GetRequest(
                    Level.IMAGE, {**where, "SOPInstanceUID": "\\".join(instances)}, frozenset(held)
                )
            )
        else:
            requests.append(GetRequest(Level.SERIES, where, frozenset(held)))
    return requests


def fetch_as_held(
    requests: Sequence[GetRequest], fetch: Callable[[GetRequest], RetrieveResult]
) -> RetrieveResult:
    """``requests`` fetched in turn, as one result. A request that brought instances of
    classes it did not propose in each syntax (refused as such: the listing did not name
    them) is repeated with those proposed so too, while they fit; what it brought before is
    brought again, and counts once."""
    results = []
    for request in requests:
        result = fetch(request)
        while True:
            refused = sorted({sop_class for _, sop_class in result.unproposed})
            wider = fitting(refused, start=request.classes)
            if wider == request.classes:
                break
            request = replace(request, classes=wider)
            result = fetch(request)
        results.append(result)
    return RetrieveResult.combined(results)
