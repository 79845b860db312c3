"""QIDO-RS (PS3.18 8.3, 10.6): search for studies, series and instances on the C-FIND engine
(any attribute: what the index does not keep is matched and returned from the stored
headers). Each result has the attributes PS3.18 Table 10.6.3-3/4/5 require at its level,
those of the levels above when the resource is not scoped to them, the ``includefield``
attributes (``all``: every attribute the archive keeps at those levels, and for instances
the whole header; a tag no keyword names, a private one, from the stored header) and its
RetrieveURL; never QueryRetrieveLevel. A UID attribute's value may be a comma-separated list
(PS3.18 8.3.4.1 uid-list-match) as well as a backslash-separated one. A parameter this
archive does not support (neither an attribute keyword or tag nor a control; matching on a
tag no keyword names) is ignored, and so is a ``true`` ``fuzzymatching``,
``emptyvaluematching`` or ``multiplevaluematching``: the search is made without it and a
``Warning: 299`` says so (PS3.18 8.3, 8.3.4.2, 8.3.4.5, 8.3.4.6). A supported parameter with
an invalid value (a date that is no date, a ``limit`` that is no whole number) is a 400
saying which (PS3.18 8.3)."""

from __future__ import annotations

import asyncio
import re
from datetime import date
from typing import Any

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dicomvault.http.resources import (
    BINARY_VRS,
    BULK_DATA_THRESHOLD,
    DICOM_JSON,
    DICOM_WEB,
    BadRequest,
    error,
)
from dicomvault.index import Level
from dicomvault.index.levels import COMPUTED, TAGS
from dicomvault.index.matching import vr_of
from dicomvault.net.query import response_identifier
from dicomvault.store.finder import Finder, Match

# Parameters that steer the search rather than match anything (PS3.18 Table 8.3.4-1), and
# "accept" and "charset" (PS3.18 8.3.3).
CONTROL = frozenset(
    {
        "limit",
        "offset",
        "includefield",
        "fuzzymatching",
        "emptyvaluematching",
        "multiplevaluematching",
        "accept",
        "charset",
    }
)
# The kinds of matching PS3.18 8.3.4.2, 8.3.4.5 and 8.3.4.6 let an origin server leave out,
# which this archive does: what its Warning says was done instead.
NOT_PERFORMED = {
    "fuzzymatching": "Only literal matching has been performed.",
    "emptyvaluematching": "Empty Value Matching has not been performed.",
    "multiplevaluematching": "Multiple Value Matching has not been performed.",
}
RETRIEVE_URL = "00081190"
INSTANCE_AVAILABILITY = "00080056"
# What each level returns besides its unique keys (PS3.18 Tables 10.6.3-3, -4 and -5).
REQUIRED: dict[Level, list[str]] = {
    Level.STUDY: [
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyID",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ],
    Level.SERIES: [
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "RequestAttributesSequence",
        "NumberOfSeriesRelatedInstances",
    ],
    Level.IMAGE: [
        "SOPClassUID",
        "InstanceNumber",
        "Rows",
        "Columns",
        "BitsAllocated",
        "NumberOfFrames",
    ],
}


def _warning(text: str) -> str:
    """A Warning header value (RFC 7234 5.5, as PS3.18 8.3.4 words them)."""
    return f'299 dicomvault: "{text}"'


def _attribute(name: str) -> str | int | None:
    """A query parameter's attribute: its keyword, else its tag when no keyword names it (a
    private one), as 8 hex digits (of a dotted path of them, the first: the one matched);
    None when it is neither a keyword nor a tag."""
    first = name.split(".")[0]
    if re.fullmatch(r"[0-9A-Fa-f]{8}", first):
        tag = int(first, 16)
        return keyword_for_tag(tag) or tag
    return first if tag_for_keyword(first) is not None else None


def _whole_number(params: QueryParams, name: str) -> int | None:
    """``limit`` or ``offset``: a uint (PS3.18 Table 8.3.4-1), however large (the paging cuts
    what no archive reaches); BadRequest for anything else."""
    if name not in params:
        return None
    # int() takes up to 4300 digits: a number longer than 4000 is no question to an archive.
    if not re.fullmatch(r"[0-9]{1,4000}", params[name]):
        raise BadRequest(f"{name} is a whole number, not {params[name]!r}")
    return int(params[name])


def _flag(params: QueryParams, name: str) -> bool:
    """A true/false parameter, false when absent; BadRequest for another value."""
    value = params.get(name, "false").lower()
    if value not in ("true", "false"):
        raise BadRequest(f"{name} is true or false, not {params[name]!r}")
    return value == "true"


def _is_date(text: str) -> bool:
    if not re.fullmatch(r"[0-9]{8}", text):
        return False
    try:
        date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return False
    return True


def _check_dates(keyword: str, value: str) -> None:
    """BadRequest unless every value of a DA matching key is a date (YYYYMMDD, PS3.5 6.2) or a
    range of them (PS3.4 C.2.2.2.5): "2004-01-19" or "20041301" matched nothing, silently."""
    for item in value.split("\\"):
        low, dash, high = item.strip(" ").partition("-")
        bounds = [b for b in (low, high) if b] if dash else [low]
        if item.strip(" ") and not (bounds and all(_is_date(b) for b in bounds)):
            raise BadRequest(
                f"{keyword}={value!r}: not a date (YYYYMMDD) nor a range of dates "
                "(YYYYMMDD-YYYYMMDD)"
            )


def _levels(level: Level, scoped: set[Level]) -> list[Level]:
    """The levels whose attributes a result carries: its own, and those above it that the
    resource is not scoped to (PS3.18 10.6.3.3.1)."""
    levels = [level]
    above = level.parent
    while above is not None and above is not Level.PATIENT:
        if above not in scoped:
            levels.append(above)
        above = above.parent
    return levels


def _elements(header: Dataset, tags: list[int]) -> Dataset:
    """Those of ``header``'s elements with these tags, a private one with its Private Creator
    (without it the element cannot be read: PS3.5 7.8.1)."""
    chosen = Dataset()
    for tag in tags:
        group, element = tag >> 16, tag & 0xFFFF
        private = group % 2 == 1 and element >= 0x1000
        for wanted in ((group << 16) | (element >> 8), tag) if private else (tag,):
            if wanted in header:
                chosen.add(header[wanted])
    return chosen


class Search:
    """One QIDO-RS request: its filters, return keys, paging and warnings."""

    def __init__(self, request: Request, level: Level) -> None:
        params = request.query_params
        path = request.path_params
        self.level = level
        self.filters: dict[str, str] = {}
        warnings: list[str] = []
        for name, value in params.multi_items():
            if name in CONTROL:
                continue
            attribute = _attribute(name)
            if attribute is None:
                # PS3.18 8.3: an unsupported parameter is ignored, and may be warned of.
                warnings.append(_warning(f"The {name} parameter is not supported and was ignored."))
                continue
            if isinstance(attribute, int):
                warnings.append(
                    _warning(
                        f"Matching on {name}, a tag no keyword names, is not supported "
                        "and was not performed."
                    )
                )
                continue
            if vr_of(attribute) == "UI":
                value = value.replace(",", "\\")  # uid-list-match: 1#value (PS3.18 8.3.4.1)
            elif vr_of(attribute) == "DA":
                _check_dates(name, value)
            self.filters[attribute] = value
        scoped = set()
        if "study" in path:
            self.filters["StudyInstanceUID"] = path["study"]
            scoped.add(Level.STUDY)
        if "series" in path:
            self.filters["SeriesInstanceUID"] = path["series"]
            scoped.add(Level.SERIES)
        levels = _levels(level, scoped)
        requested = [k for lvl in levels for k in REQUIRED[lvl]]
        self.everything = False
        # Tags no keyword names (private ones), returned from the stored header.
        self.tags: list[int] = []
        for field in params.getlist("includefield"):
            for name in filter(None, field.split(",")):
                attribute = "all" if name == "all" else _attribute(name)
                if attribute == "all":
                    self.everything = True
                    requested += [k for lvl in levels for k in TAGS.get(lvl, ())]
                    requested += [k for k, lvl in COMPUTED.items() if lvl in levels]
                elif isinstance(attribute, str):
                    requested.append(attribute)
                elif attribute is not None:
                    self.tags.append(attribute)
                else:
                    raise BadRequest(
                        f"includefield {name!r} is neither an attribute keyword nor a tag "
                        "(ggggeeee)"
                    )
        self.requested = list(dict.fromkeys([*requested, *self.filters]))
        self.limit = _whole_number(params, "limit")
        self.offset = _whole_number(params, "offset") or 0
        for name, done in NOT_PERFORMED.items():
            if _flag(params, name):
                warnings.append(_warning(f"The {name} parameter is not supported. {done}"))
        self.headers = {"Warning": ", ".join(warnings)} if warnings else {}


class Qido:
    def __init__(self, finder: Finder) -> None:
        self.finder = finder

    def endpoint(self, level: Level) -> Any:
        async def search(request: Request) -> Response:
            try:
                query = Search(request, level)
            except BadRequest as e:
                return error(400, str(e))
            root = str(request.base_url).rstrip("/") + DICOM_WEB
            found = await asyncio.to_thread(self._results, query, root)
            return JSONResponse(found, media_type=DICOM_JSON, headers=query.headers)

        return search

    def _results(self, query: Search, root: str) -> list[dict]:
        matches = self.finder.find(
            query.level,
            query.filters,
            query.requested,
            limit=query.limit,
            offset=query.offset,
        )
        return [self._result(query, match, root) for match in matches]

    def _result(self, query: Search, match: Match, root: str) -> dict:
        ds = response_identifier(match, query.level, query.requested, "")
        del ds.RetrieveAETitle, ds.QueryRetrieveLevel
        found = ds.to_json_dict()
        whole = query.everything and query.level is Level.IMAGE
        header = self.finder.header(query.level, match["_key"]) if whole or query.tags else None
        if header is not None:
            if not whole:
                header = _elements(header, query.tags)
            for element in list(header):
                if element.VR in BINARY_VRS and len(element.value or b"") > BULK_DATA_THRESHOLD:
                    del header[element.tag]  # bulk data: WADO-RS metadata names it
            found = {**header.to_json_dict(), **found}
        url = f"{root}/studies/{match.get('StudyInstanceUID', '')}"
        if query.level in (Level.SERIES, Level.IMAGE):
            url += f"/series/{match.get('SeriesInstanceUID', '')}"
        if query.level is Level.IMAGE:
            url += f"/instances/{match.get('SOPInstanceUID', '')}"
        found[RETRIEVE_URL] = {"vr": "UR", "Value": [url]}
        found[INSTANCE_AVAILABILITY] = {"vr": "CS", "Value": ["ONLINE"]}
        return dict(sorted(found.items()))
