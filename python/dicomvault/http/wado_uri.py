"""WADO-URI at /wado (PS3.18 chapter 9): an instance as application/dicom (in the
``transferSyntax`` asked, else Explicit VR Little Endian, as WADO-RS negotiates it and made by
the one transcoder) or rendered as an image. ``anonymize`` is refused: the archive does not
de-identify."""

from __future__ import annotations

import asyncio
from itertools import chain

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomvault.dicom.transcode import CannotTranscode
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
from dicomvault.http.transfer import (
    AS_STORED,
    DICOM,
    MediaRange,
    NotAcceptable,
    dicom_syntax,
    instance_bytes,
    is_transfer_syntax,
)
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
        """WADO-URI (PS3.18 chapter 9): an instance as application/dicom (in the
        transferSyntax asked, else Explicit VR Little Endian) or rendered as an image."""
        query = request.query_params
        if query.get("requestType") != "WADO":
            return error(400, "requestType=WADO is required")
        if "anonymize" in query:
            # PS3.18 9.4.2.3: "yes" is its one value (else a 400); a server unable to
            # de-identify may answer an error, which beats sending the patient's data.
            if query["anonymize"] != "yes":
                return error(400, f"anonymize is yes when present: {query['anonymize']!r}")
            return error(501, "anonymize=yes: this archive does not de-identify instances")
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
        # PS3.18 9.4.2.4: a Transfer Syntax UID (else a 400), Explicit VR Little Endian when
        # absent, a 406 when it cannot be made; ``*`` is the stored syntax, as in WADO-RS.
        asked = query.get("transferSyntax")
        if asked not in (None, AS_STORED) and not is_transfer_syntax(asked):
            raise BadRequest(f"transferSyntax is a Transfer Syntax UID: {asked!r}")
        try:
            syntax, _ = dicom_syntax([MediaRange(DICOM, asked, 1.0, True)], [record], True)
        except NotAcceptable as e:
            return error(406, str(e))
        chunks = instance_bytes(self.archive, record, syntax)
        try:
            first = await asyncio.to_thread(next, chunks)  # made, or damage a 500, before a byte
        except CannotTranscode as e:
            return error(406, str(e))
        return StreamingResponse(iterate_in_thread(chain([first], chunks)), media_type=DICOM)
