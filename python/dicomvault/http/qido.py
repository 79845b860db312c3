"""QIDO-RS (PS3.18 8.3, 10.6): search for studies, series and instances on the C-FIND engine
(any attribute: what the index does not keep is matched and returned from the stored
headers). Each result has the attributes PS3.18 Table 10.6.3-3/4/5 require at its level,
those of the levels above when the resource is not scoped to them, the ``includefield``
attributes (``all``: every attribute the archive keeps at those levels, and for instances
the whole header) and its RetrieveURL; never QueryRetrieveLevel. A parameter that is not an
attribute or a known control is a 400 saying so; ``fuzzymatching=true`` searches literally and
says so in a Warning header (PS3.18 8.3.4.2)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from pydicom.datadict import keyword_for_tag, tag_for_keyword
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
from dicomvault.net.query import response_identifier
from dicomvault.store.finder import Finder, Match
from dicomvault.store.parts import InstanceParts

# Parameters that steer the search rather than match anything (PS3.18 8.3.4).
CONTROL = frozenset({"limit", "offset", "includefield", "fuzzymatching", "accept", "charset"})
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
WARNING_FUZZY = (
    '299 dicomvault: "The fuzzymatching parameter is not supported. '
    'Only literal matching has been performed."'
)


def _keyword(name: str) -> str:
    """A query parameter's attribute: a keyword, or a tag as 8 hex digits (or a dotted path
    of them, whose first attribute is the one matched); BadRequest when it is neither."""
    first = name.split(".")[0]
    if re.fullmatch(r"[0-9A-Fa-f]{8}", first):
        keyword = keyword_for_tag(int(first, 16))
    else:
        keyword = first if tag_for_keyword(first) is not None else ""
    if not keyword:
        raise BadRequest(f"{name!r} is neither an attribute keyword nor a tag (ggggeeee)")
    return keyword


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


class Search:
    """One QIDO-RS request: its filters, return keys, paging and warnings."""

    def __init__(self, request: Request, level: Level) -> None:
        params = request.query_params
        path = request.path_params
        self.level = level
        self.filters: dict[str, str] = {}
        for name, value in params.multi_items():
            if name not in CONTROL:
                self.filters[_keyword(name)] = value
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
        for field in params.getlist("includefield"):
            for name in filter(None, field.split(",")):
                if name == "all":
                    self.everything = True
                    requested += [k for lvl in levels for k in TAGS.get(lvl, ())]
                    requested += [k for k, lvl in COMPUTED.items() if lvl in levels]
                else:
                    requested.append(_keyword(name))
        self.requested = list(dict.fromkeys([*requested, *self.filters]))
        try:
            self.limit = int(params["limit"]) if "limit" in params else None
            self.offset = int(params.get("offset", 0))
        except ValueError as e:
            raise BadRequest(f"limit and offset are whole numbers: {e}") from e
        if (self.limit is not None and self.limit < 0) or self.offset < 0:
            raise BadRequest("limit and offset are whole numbers")
        self.headers = {}
        if params.get("fuzzymatching", "false").lower() == "true":
            self.headers["Warning"] = WARNING_FUZZY
        elif params.get("fuzzymatching", "false").lower() != "false":
            raise BadRequest("fuzzymatching is true or false")


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
        if query.everything and query.level is Level.IMAGE:
            record = self.finder.archive.record(Level.IMAGE, match["_key"])
            if record is not None and record.manifest is not None:
                header = InstanceParts(self.finder.archive, record).header()
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
