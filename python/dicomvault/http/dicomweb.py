"""DICOMweb under /dicom-web: QIDO-RS search on the C-FIND query engine, WADO-RS retrieve of
studies, series and instances as multipart/related (streamed from the packs, byte-identical),
their metadata (with bulk data URIs), bulk data and frames (from the frame blobs), rendered
frames and thumbnails, and STOW-RS store through the same ingest path as C-STORE; and WADO-URI
at /wado.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from dicomvault import _native
from dicomvault.http import render
from dicomvault.http.auth import request_source
from dicomvault.http.stored import check, checked_chunks
from dicomvault.index import Level, Record
from dicomvault.net.outbound import NATIVE_SYNTAXES, outbound, selected
from dicomvault.net.query import response_identifier
from dicomvault.store import Archive
from dicomvault.store.parts import InstanceParts

log = logging.getLogger("dicomvault.http")

DICOM_WEB = "/dicom-web"
DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
# QIDO-RS parameters that steer the search rather than match anything.
_CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}
# What each level returns by default besides the unique keys (PS3.18 Table 10.6.3-3).
DEFAULT_FIELDS = {
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
        "NumberOfSeriesRelatedInstances",
    ],
    Level.IMAGE: ["SOPClassUID", "InstanceNumber", "NumberOfFrames"],
}


class BadRequest(ValueError):
    pass


def _keyword(name: str) -> str:
    """A query parameter's attribute: a keyword, or a tag as 8 hex digits."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        keyword = keyword_for_tag(int(name, 16))
        if not keyword:
            raise BadRequest(f"unknown tag {name}")
        return keyword
    return name


def search_parameters(
    request: Request, level: Level
) -> tuple[dict[str, str], list[str], int | None, int]:
    """QIDO-RS query parameters: filters, return keys, limit and offset."""
    params = request.query_params
    if params.get("fuzzymatching", "false").lower() == "true":
        raise BadRequest("fuzzymatching is not supported")
    filters = {_keyword(k): v for k, v in params.items() if k not in _CONTROL}
    requested = list(DEFAULT_FIELDS[level])
    for field in params.getlist("includefield"):
        for name in field.split(","):
            if name and name != "all":
                requested.append(_keyword(name))
    try:
        limit = int(params["limit"]) if "limit" in params else None
        offset = int(params.get("offset", 0))
    except ValueError as e:
        raise BadRequest(f"limit and offset must be integers: {e}") from e
    return filters, list(dict.fromkeys([*requested, *filters])), limit, offset


_PATH_KEYS = {
    "study": "StudyInstanceUID",
    "series": "SeriesInstanceUID",
    "instance": "SOPInstanceUID",
}


def _filters(request: Request) -> dict[str, str]:
    """The UIDs a retrieve URL names."""
    return {_PATH_KEYS[k]: v for k, v in request.path_params.items() if k in _PATH_KEYS}


def _multipart(parts: Iterator[Iterator[bytes]], boundary: str) -> Iterator[bytes]:
    for part in parts:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        yield from part
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


async def iterate_in_thread(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Reads the packs in a worker thread, a chunk at a time: nothing is buffered whole."""
    done = object()
    while (chunk := await asyncio.to_thread(next, chunks, done)) is not done:
        yield chunk  # type: ignore[misc]


def _split_multipart(body: bytes, content_type: str) -> list[bytes]:
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise BadRequest("multipart/related without a boundary")
    delimiter = b"--" + match[1].encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        _, _, payload = chunk.partition(b"\r\n\r\n")
        parts.append(payload[:-2] if payload.endswith(b"\r\n") else payload)
    return parts


PIXEL_DATA = "7FE00010"
OCTET_STREAM = "application/octet-stream"
# Binary values longer than this are left out of metadata, behind a BulkDataURI.
BULK_DATA_THRESHOLD = 1024
_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
# WADO-URI parameters that only apply to rendered images.
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


def dicom_json(ds: Dataset, bulk_data_uri: str) -> dict[str, Any]:
    """``ds`` in the DICOM JSON model, with binary values over BULK_DATA_THRESHOLD bytes as
    BulkDataURIs: ``bulk_data_uri``/tag, and within sequences tag/item/tag (items from 0)."""
    found: dict[str, Any] = {}
    for tag in sorted(ds.keys()):
        key = f"{tag:08X}"
        uri = f"{bulk_data_uri}/{key}"
        try:
            elem = ds[tag]
            if elem.VR == "SQ":
                items = [dicom_json(item, f"{uri}/{i}") for i, item in enumerate(elem.value)]
                found[key] = {"vr": "SQ", "Value": items}
            elif elem.VR in _BINARY_VRS and len(elem.value or b"") > BULK_DATA_THRESHOLD:
                found[key] = {"vr": elem.VR, "BulkDataURI": uri}
            else:
                found[key] = elem.to_json_dict(None, 0)
        except Exception as e:  # pydicom raises many types on malformed values
            log.warning("metadata leaves out %s: %s", key, e)
    return found


def _element_at(ds: Dataset, path: str) -> bytes | None:
    """The binary value at a bulk data path (tag, or tag/item/tag...), None if there is none."""
    steps = path.strip("/").split("/")
    if len(steps) % 2 == 0 or not all(re.fullmatch(r"[0-9A-Fa-f]{8}", t) for t in steps[::2]):
        raise BadRequest(f"a bulk data path is tag[/item/tag...], tags in 8 hex digits: {path}")
    if not all(i.isdigit() for i in steps[1::2]):
        raise BadRequest(f"sequence items are numbered from 0: {path}")
    tags, items = steps[::2], [int(i) for i in steps[1::2]]
    for tag, item in zip(tags[:-1], items, strict=True):
        elem = ds.get(int(tag, 16))
        if elem is None or elem.VR != "SQ" or item >= len(elem.value):
            return None
        ds = elem.value[item]
    elem = ds.get(int(tags[-1], 16))
    return elem.value if elem is not None and isinstance(elem.value, bytes) else None


def _integer(value: str | None) -> int:
    """An IS value as a number to sort by (0 when absent or malformed)."""
    return int(value) if value and re.fullmatch(r"\s*[+-]?\d{1,12}\s*", value) else 0


def _rendering(query: QueryParams, accept: str | None, thumbnail: bool) -> render.Rendering:
    """What a WADO-RS rendered or thumbnail request asks: the media type (the ``accept``
    query parameter, else the Accept header) and the window, viewport and quality."""
    viewport = render.THUMBNAIL if thumbnail else None
    if "viewport" in query:
        viewport = render.parse_viewport(query["viewport"])
    return render.Rendering(
        media_type=render.negotiate(query.get("accept") or accept or "*/*"),
        window=render.parse_window(query["window"]) if "window" in query else None,
        viewport=viewport,
        quality=(
            render.parse_quality(query["quality"]) if "quality" in query else render.DEFAULT_QUALITY
        ),
    )


_WADO_URI_UIDS = {
    "studyUID": "StudyInstanceUID",
    "seriesUID": "SeriesInstanceUID",
    "objectUID": "SOPInstanceUID",
}


def _wado_rendering(
    query: QueryParams, media_type: str, record: Record
) -> tuple[render.Rendering, int]:
    """What a WADO-URI image request asks, and of which frame."""
    center, width = query.get("windowCenter"), query.get("windowWidth")
    if (center is None) != (width is None):
        raise BadRequest("windowCenter and windowWidth go together")
    window = render.parse_window(f"{center},{width}") if center is not None else None
    rows, columns = (
        _whole_number(query[name], name) if name in query else None for name in ("rows", "columns")
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
    return rendering, _whole_number(query.get("frameNumber", "1"), "frameNumber")


def _region(value: str, record: Record) -> tuple[int, int, int, int]:
    """WADO-URI ``region=xmin,ymin,xmax,ymax`` (fractions of the image) in pixels."""
    try:
        x0, y0, x1, y1 = (float(v) for v in value.split(","))
    except ValueError:
        raise BadRequest(f"region is xmin,ymin,xmax,ymax in 0.0..1.0: {value!r}") from None
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise BadRequest(f"region is xmin,ymin,xmax,ymax in 0.0..1.0: {value!r}")
    rows, columns = _integer(record.tags.get("Rows")), _integer(record.tags.get("Columns"))
    if not (rows and columns):
        raise BadRequest("region needs an image with Rows and Columns")
    x, y = round(x0 * columns), round(y0 * rows)
    return x, y, max(1, round(x1 * columns) - x), max(1, round(y1 * rows) - y)


def _octet_stream_parts(parts: list[bytes], media: str = OCTET_STREAM) -> Response:
    boundary = uuid.uuid4().hex
    body = b"".join(
        f"--{boundary}\r\nContent-Type: {media}\r\n\r\n".encode() + part + b"\r\n" for part in parts
    )
    return Response(
        body + f"--{boundary}--\r\n".encode(),
        media_type=f'multipart/related; type="{OCTET_STREAM}"; boundary={boundary}',
    )


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _whole_number(value: str, name: str) -> int:
    if not re.fullmatch(r"\d{1,9}", value) or int(value) < 1:
        raise BadRequest(f"{name} is a number from 1: {value!r}")
    return int(value)


class DicomWeb:
    """The /dicom-web routes over an open archive."""

    def __init__(self, archive: Archive, case_insensitive_pn: bool = True) -> None:
        self.archive = archive
        self.case_insensitive_pn = case_insensitive_pn

    def routes(self) -> list[Route]:
        base = DICOM_WEB
        study, series = "{study}", "{series}"
        instance = f"{base}/studies/{study}/series/{series}/instances/{{instance}}"
        return [
            Route(f"{base}/studies", self.search(Level.STUDY), methods=["GET"]),
            Route(f"{base}/studies", self.store, methods=["POST"]),
            Route(f"{base}/series", self.search(Level.SERIES), methods=["GET"]),
            Route(f"{base}/instances", self.search(Level.IMAGE), methods=["GET"]),
            Route(f"{base}/studies/{study}", self.retrieve(Level.STUDY), methods=["GET"]),
            Route(f"{base}/studies/{study}/series", self.search(Level.SERIES), methods=["GET"]),
            Route(f"{base}/studies/{study}/instances", self.search(Level.IMAGE), methods=["GET"]),
            Route(
                f"{base}/studies/{study}/series/{series}",
                self.retrieve(Level.SERIES),
                methods=["GET"],
            ),
            Route(
                f"{base}/studies/{study}/series/{series}/instances",
                self.search(Level.IMAGE),
                methods=["GET"],
            ),
            Route(instance, self.retrieve(Level.IMAGE), methods=["GET"]),
            Route(f"{base}/studies/{study}/metadata", self.metadata(Level.STUDY)),
            Route(f"{base}/studies/{study}/series/{series}/metadata", self.metadata(Level.SERIES)),
            Route(f"{instance}/metadata", self.metadata(Level.IMAGE)),
            Route(f"{instance}/bulkdata/{{path:path}}", self.bulk_data),
            Route(f"{instance}/frames/{{frames}}", self.frames),
            Route(f"{instance}/rendered", self.rendered(Level.IMAGE)),
            Route(f"{instance}/frames/{{frames}}/rendered", self.rendered(Level.IMAGE)),
            Route(f"{instance}/thumbnail", self.rendered(Level.IMAGE, thumbnail=True)),
            Route(
                f"{instance}/frames/{{frames}}/thumbnail",
                self.rendered(Level.IMAGE, thumbnail=True),
            ),
            Route(
                f"{base}/studies/{study}/series/{series}/thumbnail",
                self.rendered(Level.SERIES, thumbnail=True),
            ),
            Route(f"{base}/studies/{study}/thumbnail", self.rendered(Level.STUDY, thumbnail=True)),
            Route("/wado", self.wado_uri),
        ]

    # QIDO-RS ------------------------------------------------------------------------------

    def search(self, level: Level) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                filters, requested, limit, offset = search_parameters(request, level)
            except BadRequest as e:
                return JSONResponse({"error": str(e)}, status_code=400)
            path = request.path_params
            if "study" in path:
                filters["StudyInstanceUID"] = path["study"]
            if "series" in path:
                filters["SeriesInstanceUID"] = path["series"]
            found = await asyncio.to_thread(self._search, level, filters, requested, limit, offset)
            return JSONResponse(found, media_type=DICOM_JSON)

        return endpoint

    def _search(
        self,
        level: Level,
        filters: dict[str, str],
        requested: list[str],
        limit: int | None,
        offset: int,
    ) -> list[dict]:
        matches = self.archive.index.find(
            level,
            filters,
            requested,
            case_insensitive_pn=self.case_insensitive_pn,
            limit=limit,
            offset=offset,
        )
        found = []
        for match in matches:
            ds = response_identifier(match, level, requested, "")
            del ds.RetrieveAETitle
            found.append(ds.to_json_dict())
        return found

    # WADO-RS ------------------------------------------------------------------------------

    def retrieve(self, level: Level) -> Any:
        async def endpoint(request: Request) -> Response:
            records = await asyncio.to_thread(self._records, level, _filters(request))
            if not records:
                return JSONResponse({"error": "not found"}, status_code=404)
            await check(self.archive, records[0].manifest)  # the common case of one: a 500
            boundary = uuid.uuid4().hex
            parts = (checked_chunks(self.archive, r.manifest, r.key) for r in records)
            return StreamingResponse(
                iterate_in_thread(_multipart(parts, boundary)),
                media_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
            )

        return endpoint

    def metadata(self, level: Level) -> Any:
        """The instances' data sets in the DICOM JSON model, Pixel Data and binary values
        over BULK_DATA_THRESHOLD as BulkDataURIs (elements after Pixel Data are left out)."""

        async def endpoint(request: Request) -> Response:
            records = await asyncio.to_thread(self._records, level, _filters(request))
            if not records:
                return _error(404, "not found")
            root = str(request.base_url).rstrip("/") + DICOM_WEB
            found = await asyncio.to_thread(lambda: [self._header(r, root) for r in records])
            return JSONResponse(found, media_type=DICOM_JSON)

        return endpoint

    def _header(self, record: Record, root: str) -> dict:
        parts = InstanceParts(self.archive, record)
        header = parts.header()
        series = self.archive.index.get(Level.SERIES, record.parent or "")
        uri = (
            f"{root}/studies/{series.parent if series else ''}/series/{record.parent}"
            f"/instances/{record.key}/bulkdata"
        )
        found = dicom_json(header, uri)
        if parts.has_pixel_data():
            vr = parts.pixel_data_vr(header)
            found[PIXEL_DATA] = {"vr": vr, "BulkDataURI": f"{uri}/{PIXEL_DATA}"}
        return found

    async def bulk_data(self, request: Request) -> Response:
        """A BulkDataURI of the metadata: Pixel Data as its frames (native: one part, the
        whole value; encapsulated: a part per frame), any other value as one part."""
        records = await asyncio.to_thread(self._records, Level.IMAGE, _filters(request))
        if not records:
            return _error(404, "not found")
        parts = InstanceParts(self.archive, records[0])
        try:
            return await asyncio.to_thread(self._bulk_data, parts, request.path_params["path"])
        except BadRequest as e:
            return _error(400, str(e))
        except FileNotFoundError as e:
            return _error(404, str(e))

    def _bulk_data(self, parts: InstanceParts, path: str) -> Response:
        if path.strip("/").upper() == PIXEL_DATA:
            count = parts.number_of_frames()
            if count == 0:
                raise FileNotFoundError("the instance has no Pixel Data")
            frames = parts.frames(list(range(1, count + 1)))
            if parts.encapsulated:
                return _octet_stream_parts(
                    frames, f"{OCTET_STREAM}; transfer-syntax={parts.syntax}"
                )
            return _octet_stream_parts([b"".join(frames)])
        value = _element_at(parts.header(), path)
        if value is None:
            raise FileNotFoundError(f"no bulk data at {path}")
        return _octet_stream_parts([value])

    async def frames(self, request: Request) -> Response:
        """Frames straight from the pack's frame blobs: the instance is never read whole
        (unless its frames cannot be told apart in the packs)."""
        try:
            numbers = [int(n) for n in request.path_params["frames"].split(",")]
        except ValueError:
            return _error(400, "frames are 1-based numbers: 1,2,3")
        if not numbers or min(numbers) < 1:
            return _error(400, "frames are numbered from 1")
        records = await asyncio.to_thread(self._records, Level.IMAGE, _filters(request))
        if not records:
            return _error(404, "not found")
        parts = InstanceParts(self.archive, records[0])
        try:
            frames = await asyncio.to_thread(parts.frames, numbers)
        except FileNotFoundError as e:
            return _error(404, str(e))
        except _native.DamagedError:
            raise  # a 500, logged
        except OSError as e:
            return _error(406, str(e))
        media = OCTET_STREAM
        if parts.encapsulated:
            media += f"; transfer-syntax={parts.syntax}"
        return _octet_stream_parts(frames, media)

    # Rendered -----------------------------------------------------------------------------

    def rendered(self, level: Level, thumbnail: bool = False) -> Any:
        """A frame rendered (PS3.18 rendered and thumbnail resources): the frame named, else
        the first; for a series or study thumbnail, that of a representative instance."""

        async def endpoint(request: Request) -> Response:
            try:
                rendering = _rendering(
                    request.query_params, request.headers.get("accept"), thumbnail
                )
                frames = request.path_params.get("frames", "1")
                if "," in frames:
                    raise BadRequest("a rendered frame is one frame: frames/N/rendered")
                number = _whole_number(frames, "frame")
            except (BadRequest, render.BadRenderRequest) as e:
                return _error(400, str(e))
            except render.NotAcceptable as e:
                return _error(406, str(e))
            record = await asyncio.to_thread(self._representative, level, _filters(request))
            if record is None:
                return _error(404, "not found")
            return await self._rendered(record, number, rendering)

        return endpoint

    async def _rendered(self, record: Record, number: int, rendering: render.Rendering) -> Response:
        try:
            image = await asyncio.to_thread(
                render.rendered_frame, self.archive, record, number, rendering
            )
        except FileNotFoundError as e:
            return _error(404, str(e))
        except render.CannotRender as e:
            return _error(415, str(e))
        return Response(image, media_type=rendering.media_type)

    def _representative(self, level: Level, filters: dict[str, str]) -> Record | None:
        """The instance a resource is rendered by: the instance itself; for a series its
        middle image by Instance Number; for a study, that of its first series by Series
        Number (images first: instances without Rows only when there are no others)."""
        records = self._records(level, filters)
        images = [r for r in records if r.tags.get("Rows")] or records
        if not images:
            return None
        by_series: dict[str, list[Record]] = {}
        for r in images:
            by_series.setdefault(r.parent or "", []).append(r)

        def series_number(key: str) -> tuple[int, str]:
            series = self.archive.index.get(Level.SERIES, key)
            return _integer(series.tags.get("SeriesNumber") if series else None), key

        members = by_series[min(by_series, key=series_number)]
        members.sort(key=lambda r: (_integer(r.tags.get("InstanceNumber")), r.key))
        return members[len(members) // 2]

    # WADO-URI -----------------------------------------------------------------------------

    async def wado_uri(self, request: Request) -> Response:
        """WADO-URI (PS3.18 chapter 9): an instance as application/dicom (as stored, or
        transcoded to the native transferSyntax asked) or rendered as an image."""
        query = request.query_params
        if query.get("requestType") != "WADO":
            return _error(400, "requestType=WADO is required")
        uids = {key: query.get(name, "") for name, key in _WADO_URI_UIDS.items()}
        missing = [name for name, key in _WADO_URI_UIDS.items() if not uids[key]]
        if missing:
            return _error(400, f"{', '.join(missing)} required")
        records = await asyncio.to_thread(self._records, Level.IMAGE, uids)
        if not records:
            return _error(404, "not found")
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
            return _error(406, f"contentType {', '.join(asked)}: none is offered")
        try:
            if offered[0] == DICOM:
                return await self._wado_dicom(record, query)
            rendering, number = _wado_rendering(query, offered[0], record)
        except (BadRequest, render.BadRenderRequest) as e:
            return _error(400, str(e))
        return await self._rendered(record, number, rendering)

    async def _wado_dicom(self, record: Record, query: QueryParams) -> Response:
        given = [name for name in _IMAGE_PARAMETERS if name in query]
        if given:
            raise BadRequest(f"{', '.join(given)} only apply to rendered images")
        assert record.manifest is not None
        instance = outbound(self.archive, selected(record))
        syntax = query.get("transferSyntax", "*")
        if syntax in ("*", instance.transfer_syntax):
            await check(self.archive, record.manifest)
            chunks = self.archive.store.chunks(record.manifest, 0)
            return StreamingResponse(iterate_in_thread(chunks), media_type=DICOM)
        if syntax not in NATIVE_SYNTAXES:
            return _error(
                406,
                f"the instance is stored as {instance.transfer_syntax}; it can be sent as that "
                f"or transcoded to {', '.join(NATIVE_SYNTAXES)}, not {syntax}",
            )

        def transcode() -> bytes:
            path = instance.part10_file(*instance.transcoded([syntax]))
            try:
                return path.read_bytes()
            finally:
                path.unlink(missing_ok=True)

        try:
            return Response(await asyncio.to_thread(transcode), media_type=DICOM)
        except ValueError as e:
            return _error(415, str(e))

    def _records(self, level: Level, filters: dict[str, str]) -> list:
        keys = [m["_key"] for m in self.archive.index.find(level, filters)]
        records = [r for k in keys if (r := self.archive.index.get(level, k))]
        return list(self.archive.instances(records))

    # STOW-RS ------------------------------------------------------------------------------

    async def store(self, request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/related"):
            return JSONResponse({"error": "expected multipart/related"}, status_code=415)
        try:
            parts = _split_multipart(await request.body(), content_type)
        except BadRequest as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        source = request_source(request, "STOW-RS")
        stored, failed, no_room = await asyncio.to_thread(self._store, parts, source)
        status = 200 if not failed else (202 if stored else 507 if no_room else 409)
        body: dict[str, Any] = {}
        if stored:
            body["00081199"] = {"vr": "SQ", "Value": stored}
        if failed:
            body["00081198"] = {"vr": "SQ", "Value": failed}
        return JSONResponse(body, status_code=status, media_type=DICOM_JSON)

    def _store(self, parts: list[bytes], source: str) -> tuple[list[dict], list[dict], bool]:
        """(ReferencedSOPSequence items, FailedSOPSequence items, whether a failure was for
        want of storage)."""
        named = [(f"part {i + 1}", part) for i, part in enumerate(parts)]
        outcomes = self.archive.ingest_all(named, source)
        stored, failed = [], []
        no_room = False
        for (name, _), outcome in zip(named, outcomes, strict=True):
            if outcome.key is None:
                log.warning("STOW-RS %s refused: %s", name, outcome.reason)
                # Out of Resources when the archive could not store it, else Cannot Understand.
                reason = 0xA700 if outcome.status == "failed" else 0xC000
                no_room |= outcome.status == "failed"
                failed.append({"00081197": {"vr": "US", "Value": [reason]}})
                continue
            record = self.archive.index.get(Level.IMAGE, outcome.key)
            tags = record.tags if record else {}
            stored.append(
                {
                    "00081150": {"vr": "UI", "Value": [tags.get("SOPClassUID", "")]},
                    "00081155": {"vr": "UI", "Value": [outcome.key]},
                }
            )
        return stored, failed, no_room
