"""Attribute matching as C-FIND defines it (PS3.4 C.2.2.2): universal, single value,
wildcard, range and UID list matching of one query value against one record value.

Decisions where the standard leaves room: a multi-valued query value ("CT\\MR") matches any of
its values (as Orthanc does); a multi-valued record value matches when any value does; a
Person Name also matches when one of its component groups (alphabetic, ideographic,
phonetic, "=" separated) matches; a partial time names the whole period it covers, as a
single value ("0930" matches 09:30:15) and as a range bound ("-12" includes 12:59:59); the
ACR-NEMA date form "2020.01.31" is read as 20200131.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from dicomvault.index.levels import DICTIONARY

_NO_WILDCARD = frozenset({"DA", "TM", "DT", "UI", "US", "SS", "UL", "SL", "FL", "FD", "AT"})
_SINGLE_VALUED = frozenset({"LT", "ST", "UT", "UR"})


@cache
def vr_of(keyword: str) -> str:
    if keyword in DICTIONARY:
        return DICTIONARY[keyword][1]
    from pydicom.datadict import dictionary_VR

    try:
        return dictionary_VR(keyword).split(" or ")[0]
    except KeyError:
        return "UN"


def _normalize_date(value: str) -> str:
    return value.replace(".", "").strip()


def _normalize_time(value: str, fill: str) -> str:
    """HHMMSS.FFFFFF with the missing digits filled with ``fill`` ("0" or "9")."""
    value = value.replace(":", "").strip()
    whole, _, fraction = value.partition(".")
    if fill == "9":
        limits = "235959"
        whole = whole + limits[len(whole) :]
    else:
        whole = whole.ljust(6, "0")
    return whole[:6] + "." + fraction.ljust(6, fill)[:6]


def _normalize_datetime(value: str, fill: str) -> str:
    value = value.strip()
    # A UTC offset (+hhmm / -hhmm) is kept apart; comparisons are made on local values.
    match = re.match(r"^(\d{0,14}(?:\.\d{1,6})?)", value)
    value = match.group(1) if match else value
    date, time = value[:8], value[8:]
    date = date + "99991231"[len(date) :] if fill == "9" else date.ljust(8, "0")
    return date + _normalize_time(time, fill)


def _bounds(vr: str, low: str, high: str) -> tuple[str | None, str | None]:
    if vr == "DA":
        return (_normalize_date(low) or None, _normalize_date(high) or None)
    if vr == "TM":
        return (
            _normalize_time(low, "0") if low else None,
            _normalize_time(high, "9") if high else None,
        )
    return (
        _normalize_datetime(low, "0") if low else None,
        _normalize_datetime(high, "9") if high else None,
    )


def _point(vr: str, value: str) -> tuple[str, str]:
    """The earliest and latest instant a (possibly partial) record value stands for."""
    if vr == "DA":
        v = _normalize_date(value)
        return v, v
    if vr == "TM":
        return _normalize_time(value, "0"), _normalize_time(value, "9")
    return _normalize_datetime(value, "0"), _normalize_datetime(value, "9")


def _equal_at(piece: str, value: str, at: int) -> bool:
    """Whether ``piece`` (``?`` matching any one character) matches ``value`` from ``at``."""
    return all(p in ("?", value[at + i]) for i, p in enumerate(piece))


def _find(piece: str, value: str, start: int, end: int) -> int:
    """The first place in ``value[start:end]`` that ``piece`` matches, or -1."""
    if "?" not in piece:
        return value.find(piece, start, end)
    for at in range(start, end - len(piece) + 1):
        if _equal_at(piece, value, at):
            return at
    return -1


def wildcard_match(pattern: str, value: str) -> bool:
    """Whether ``value`` matches ``pattern`` whole, ``*`` matching any run of characters and
    ``?`` any one. No backtracking: the pieces between stars are matched left to right, each
    at its first place after the previous one (a later place never leaves more room), so the
    cost is at most the pattern's length times the value's, whatever the pattern; a value
    found by ``str.find`` (pieces without ``?``) costs time linear in the value's length."""
    first, *middle = pattern.split("*")
    if not middle:
        return len(first) == len(value) and _equal_at(first, value, 0)
    last = middle.pop()
    end = len(value) - len(last)
    if end < len(first) or not (_equal_at(first, value, 0) and _equal_at(last, value, end)):
        return False
    at = len(first)
    for piece in middle:
        if piece:
            found = _find(piece, value, at, end)
            if found < 0:
                return False
            at = found + len(piece)
    return True


@dataclass(frozen=True)
class Matcher:
    """A compiled matching key: ``matches(record_value)`` per PS3.4 C.2.2.2."""

    keyword: str
    vr: str
    query: str
    case_insensitive: bool

    @property
    def universal(self) -> bool:
        q = self.query.strip(" ")
        return q == "" or (q == "*" and self.vr not in _NO_WILDCARD)

    def _values(self, text: str) -> list[str]:
        if self.vr in _SINGLE_VALUED:
            return [text]
        return text.split("\\")

    def _one(self, query: str, value: str) -> bool:
        vr = self.vr
        value = value.rstrip(" \x00")
        if vr in ("DA", "TM", "DT"):
            if "-" in query and not (vr == "DT" and re.match(r"^\d+[+-]\d{4}$", query)):
                low, _, high = query.partition("-")
                if not value:
                    return False  # an empty value never matches a range (C.2.2.2.5)
                lo, hi = _bounds(vr, low, high)
                first, last = _point(vr, value)
                return (lo is None or last >= lo) and (hi is None or first <= hi)
            if not value:
                return False
            # A single (possibly partial) value names a period: "0930" is 09:30:00-09:30:59.
            q_first, q_last = _point(vr, query)
            first, last = _point(vr, value)
            return q_first <= first and last <= q_last
        if vr == "UI":
            # An empty item of a UID list ("1.2.3\\") is no UID: it matches nothing (C.2.2.2.2).
            return query != "" and value == query
        fold = self.case_insensitive and vr == "PN"
        candidates = [value]
        if vr == "PN" and "=" in value:
            candidates += [g for g in value.split("=") if g]
        if ("*" in query or "?" in query) and vr not in _NO_WILDCARD:
            if fold:
                query, candidates = query.casefold(), [c.casefold() for c in candidates]
            return any(wildcard_match(query, c) for c in candidates)
        if fold:
            q = query.casefold()
            return any(c.casefold() == q for c in candidates)
        return any(c == query for c in candidates)

    def matches(self, record_value: str | None) -> bool:
        if self.universal:
            return True
        record_values = self._values(record_value or "")
        # Each value loses its padding below, as the VR says (str.strip() here took a no-break
        # space or a tab, and a Person Name's leading spaces, off the query that the record
        # value keeps, and the value did not find itself).
        for query in self._values(self.query):
            query = query.strip(" ") if self.vr != "PN" else query.rstrip(" ")
            if any(self._one(query, v) for v in record_values):
                return True
        return False


def matcher(keyword: str, query: str, *, case_insensitive_pn: bool = True) -> Matcher:
    return Matcher(keyword, vr_of(keyword), query, case_insensitive_pn)


def literal_prefix(query: str) -> str:
    """The part of a wildcard query before its first wildcard (an index key range)."""
    cut = min((i for i in (query.find("*"), query.find("?")) if i >= 0), default=len(query))
    return query[:cut]
