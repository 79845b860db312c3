"""WADO-URI at /wado (PS3.18 chapter 9): an instance as application/dicom (as stored, or in
the ``transferSyntax`` asked, made by the one transcoder) or rendered as an image."""

from __future__ import annotations

import asyncio
from itertools import chain

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomvault.dicom.transcode import CannotTranscode, producible
from dicomvault.http import render
from dicomvault.http.resources import (
    BadRequest,
    error,
    instances,
    integer,
    iterate_in_thread,
    rendered_response,
    whole_number,
)
from dicomvault.http.transfer import AS_STORED, DICOM, instance_bytes, stored_syntax
from dicomvault.index import Level, Record
from dicomvault.store.finder import Finder
from dicomvault.store.parts import InstanceParts

_UIDS = {
    "studyUID": "StudyInstanceUID",
    "seriesUID": "SeriesInstanceUID",
    "objectUID": "SOPInstanceUID",
}
# Parameters that only apply to rendered images.
_IMAGE_PARAMETERS = (
    "annotation",
    "rows",
    "columns",
    "region",
    "windowCenter",
    "windowWidth",
    "frameNumber",
    "imageQuality",
)


def _rendering(query: QueryParams, media_type: str, record: Record) -> tuple[render.Rendering, int]:
    """What an image request asks, and of which frame."""
    center, width = query.get("windowCenter"), query.get("windowWidth")
    if (center is None) != (width is None):
        raise BadRequest("windowCenter and windowWidth go together")
    window = render.parse_window(f"{center},{width}") if center is not None else None
    rows, columns = (
        whole_number(query[name], name) if name in query else None for name in ("rows", "columns")
    )
    if max(rows or 0, columns or 0) > render.MAX_VIEWPORT:
        raise BadRequest(f"rows and columns are at most {render.MAX_VIEWPORT}")
    region = _region(query["region"], record) if "region" in query else None
    viewport = None
    if rows or columns or region:
        # One of rows and columns leaves the other free; neither renders the region as is.
        region_columns, region_rows = (region[2], region[3]) if region else (0, 0)
        viewport = render.Viewport(
            columns or (render.MAX_VIEWPORT if rows else region_columns),
            rows or (render.MAX_VIEWPORT if columns else region_rows),
            region,
        )
    quality = query.get("imageQuality")
    rendering = render.Rendering(
        media_type,
        window,
        viewport,
        render.parse_quality(quality) if quality is not None else render.DEFAULT_QUALITY,
    )
    return rendering, whole_number(query.get("frameNumber", "1"), "frameNumber")


def _region(value: str, record: Record) -> tuple[int, int, int, int]:
    """``region=xmin,ymin,xmax,ymax`` (fractions of the image) in pixels."""
    try:
        x0, y0, x1, y1 = (float(v) for v in value.split(","))
    except ValueError:
        raise BadRequest(f"region is xmin,ymin,xmax,ymax in 0.0..1.0: {value!r}") from None
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise BadRequest(f"region is xmin,ymin,xmax,ymax in 0.0..1.0: {value!r}")
    rows, columns = integer(record.tags.get("Rows")), integer(record.tags.get("Columns"))
    if not (rows and columns):
        raise BadRequest("region needs an image with Rows and Columns")
    x, y = round(x0 * columns), round(y0 * rows)
    return x, y, max(1, round(x1 * columns) - x), max(1, round(y1 * rows) - y)


class WadoUri:
    def __init__(self, finder: Finder) -> None:
        self.finder = finder
        self.archive = finder.archive

    async def endpoint(self, request: Request) -> Response:
        """WADO-URI (PS3.18 chapter 9): an instance as application/dicom (as stored, or
        transcoded to the transferSyntax asked) or rendered as an image."""
        query = request.query_params
        if query.get("requestType") != "WADO":
            return error(400, "requestType=WADO is required")
        uids = {key: query.get(name, "") for name, key in _UIDS.items()}
        missing = [name for name, key in _UIDS.items() if not uids[key]]
        if missing:
            return error(400, f"{', '.join(missing)} required")
        records = await asyncio.to_thread(instances, self.finder, Level.IMAGE, uids)
        if not records:
            return error(404, "not found")
        record = records[0]
        asked = [c.split(";")[0].strip().lower() for c in query.get("contentType", "").split(",")]
        asked = [c for c in asked if c]
        if not asked:
            has_pixels = await asyncio.to_thread(
                lambda: InstanceParts(self.archive, record).has_pixel_data()
            )
            asked = [render.JPEG if has_pixels else DICOM]
        offered = [c for c in asked if c == DICOM or c in render.RENDERED_MEDIA_TYPES]
        if not offered:
            return error(406, f"contentType {', '.join(asked)}: none is offered")
        try:
            if offered[0] == DICOM:
                return await self._dicom(record, query)
            rendering, number = _rendering(query, offered[0], record)
        except (BadRequest, render.BadRenderRequest) as e:
            return error(400, str(e))
        return await rendered_response(self.archive, record, number, rendering)

    async def _dicom(self, record: Record, query: QueryParams) -> Response:
        given = [name for name in _IMAGE_PARAMETERS if name in query]
        if given:
            raise BadRequest(f"{', '.join(given)} only apply to rendered images")
        # As stored unless a syntax is asked (PS3.18 9.1.2.1.7: the default is the stored one
        # when the client accepts it, and WADO-URI clients accept what they ask for).
        syntax = query.get("transferSyntax", AS_STORED)
        stored = stored_syntax(record)
        if syntax in (AS_STORED, stored):
            chunks = instance_bytes(self.archive, record, AS_STORED)
            first = await asyncio.to_thread(next, chunks)  # damage: a 500 before any byte
            return StreamingResponse(iterate_in_thread(chain([first], chunks)), media_type=DICOM)
        if not producible(stored, syntax, bool(record.tags.get("Rows"))):
            return error(
                406,
                f"the instance is stored as {stored}; the archive cannot make {syntax} "
                "from it without changing a pixel",
            )
        try:
            body = await asyncio.to_thread(
                lambda: b"".join(instance_bytes(self.archive, record, syntax))
            )
        except CannotTranscode as e:
            return error(406, str(e))
        return Response(body, media_type=DICOM)
