"""DICOMweb under /dicom-web: the routes of QIDO-RS (``qido``), STOW-RS (``stow``) and WADO-RS
here: studies, series and instances as multipart/related (streamed from the packs, in the
syntax PS3.18 8.7 negotiation picks: as stored byte for byte with ``transfer-syntax=*``,
else made by the one transcoder), their metadata (with bulk data URIs), bulk data and frames
(from the frame blobs when as stored, with their real media types), rendered frames and
thumbnails; and WADO-URI at /wado (``wado_uri``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Iterator
from itertools import chain
from typing import Any

from pydicom.dataset import Dataset
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from dicomvault import _native
from dicomvault.dicom.transcode import CannotTranscode
from dicomvault.http import render
from dicomvault.http.qido import Qido
from dicomvault.http.resources import (
    BINARY_VRS,
    BULK_DATA_THRESHOLD,
    DICOM_JSON,
    DICOM_WEB,
    BadRequest,
    error,
    instances,
    integer,
    iterate_in_thread,
    multipart,
    rendered_response,
    whole_number,
)
from dicomvault.http.stow import Stow
from dicomvault.http.transfer import (
    DICOM,
    OCTET_STREAM,
    BadAccept,
    NotAcceptable,
    accepted,
    dicom_syntax,
    frame_media,
    frames_in,
    instance_bytes,
    sent_syntax,
    stored_syntax,
)
from dicomvault.http.wado_uri import WadoUri
from dicomvault.index import Level, Record
from dicomvault.store import Archive
from dicomvault.store.finder import Finder
from dicomvault.store.parts import InstanceParts

log = logging.getLogger("dicomvault.http")

PIXEL_DATA = "7FE00010"
_PATH_KEYS = {
    "study": "StudyInstanceUID",
    "series": "SeriesInstanceUID",
    "instance": "SOPInstanceUID",
}


def _filters(request: Request) -> dict[str, str]:
    """The UIDs a retrieve URL names."""
    return {_PATH_KEYS[k]: v for k, v in request.path_params.items() if k in _PATH_KEYS}


def _parts(parts: list[bytes], media: str) -> Response:
    """A multipart/related response of ``parts``, each of ``media`` (with its parameters)."""
    boundary = uuid.uuid4().hex
    body = b"".join(multipart(((media, iter([part])) for part in parts), boundary))
    kind = media.split(";")[0]
    return Response(body, media_type=f'multipart/related; type="{kind}"; boundary={boundary}')


def _labelled(media: str, syntax: str) -> str:
    return f"{media}; transfer-syntax={syntax}"


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
            elif elem.VR in BINARY_VRS and len(elem.value or b"") > BULK_DATA_THRESHOLD:
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


class DicomWeb:
    """The /dicom-web and /wado routes over an open archive."""

    def __init__(self, archive: Archive, case_insensitive_pn: bool = True) -> None:
        self.archive = archive
        # Retrieves select as QIDO-RS and C-FIND match, person names alike.
        self.finder = Finder(archive, case_insensitive_pn)
        self.qido = Qido(self.finder)
        self.stow = Stow(archive)
        self.wado_uri = WadoUri(self.finder)

    def routes(self) -> list[Route]:
        base = DICOM_WEB
        study, series = "{study}", "{series}"
        instance = f"{base}/studies/{study}/series/{series}/instances/{{instance}}"
        search = self.qido.endpoint
        return [
            Route(f"{base}/studies", search(Level.STUDY), methods=["GET"]),
            Route(f"{base}/studies", self.stow.endpoint, methods=["POST"]),
            Route(f"{base}/series", search(Level.SERIES), methods=["GET"]),
            Route(f"{base}/instances", search(Level.IMAGE), methods=["GET"]),
            Route(f"{base}/studies/{study}", self.retrieve(Level.STUDY), methods=["GET"]),
            Route(f"{base}/studies/{study}", self.stow.endpoint, methods=["POST"]),
            Route(f"{base}/studies/{study}/series", search(Level.SERIES), methods=["GET"]),
            Route(f"{base}/studies/{study}/instances", search(Level.IMAGE), methods=["GET"]),
            Route(
                f"{base}/studies/{study}/series/{series}",
                self.retrieve(Level.SERIES),
                methods=["GET"],
            ),
            Route(
                f"{base}/studies/{study}/series/{series}/instances",
                search(Level.IMAGE),
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
            Route("/wado", self.wado_uri.endpoint),
        ]

    def _records(self, level: Level, filters: dict[str, str]) -> list[Record]:
        return instances(self.finder, level, filters)

    # WADO-RS ------------------------------------------------------------------------------

    def retrieve(self, level: Level) -> Any:
        """Instances as multipart/related application/dicom in the syntax negotiated (an
        instance asked as bare application/dicom: its Part 10 file alone): the first instance
        is checked (and made) before the response starts, so that its damage is a 500 and a
        syntax it cannot be made in a 406; a later one ends the stream."""

        async def endpoint(request: Request) -> Response:
            records = await asyncio.to_thread(self._records, level, _filters(request))
            if not records:
                return error(404, "not found")
            try:
                ranges = accepted(request.headers.get("accept"), request.query_params.get("accept"))
                syntax, single_part = dicom_syntax(ranges, records, level is Level.IMAGE)
            except BadAccept as e:
                return error(400, str(e))
            except NotAcceptable as e:
                return error(406, str(e))
            first = instance_bytes(self.archive, records[0], syntax)
            try:
                head = await asyncio.to_thread(next, first)
            except CannotTranscode as e:
                return error(406, str(e))
            if single_part:
                return StreamingResponse(
                    iterate_in_thread(chain([head], first)),
                    media_type=_labelled(DICOM, sent_syntax(records[0], syntax)),
                )

            def parts() -> Iterator[tuple[str, Iterator[bytes]]]:
                for i, record in enumerate(records):
                    chunks = chain([head], first) if i == 0 else self._made(record, syntax)
                    yield _labelled(DICOM, sent_syntax(record, syntax)), chunks

            boundary = uuid.uuid4().hex
            return StreamingResponse(
                iterate_in_thread(multipart(parts(), boundary)),
                media_type=f'multipart/related; type="{DICOM}"; boundary={boundary}',
            )

        return endpoint

    def _made(self, record: Record, syntax: str) -> Iterator[bytes]:
        """A later instance of a stream: one that cannot be made ends it, said in the log."""
        try:
            yield from instance_bytes(self.archive, record, syntax)
        except CannotTranscode as e:
            log.error(
                "%s cannot be sent as %s, the response ends before it: %s", record.key, syntax, e
            )
            raise

    def metadata(self, level: Level) -> Any:
        """The instances' data sets in the DICOM JSON model, Pixel Data and binary values
        over BULK_DATA_THRESHOLD as BulkDataURIs (elements after Pixel Data are left out)."""

        async def endpoint(request: Request) -> Response:
            records = await asyncio.to_thread(self._records, level, _filters(request))
            if not records:
                return error(404, "not found")
            root = str(request.base_url).rstrip("/") + DICOM_WEB
            found = await asyncio.to_thread(lambda: [self._header(r, root) for r in records])
            return JSONResponse(found, media_type=DICOM_JSON)

        return endpoint

    def _header(self, record: Record, root: str) -> dict:
        parts = InstanceParts(self.archive, record)
        header = parts.header()
        series = self.archive.parent(record)
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
        """A BulkDataURI of the metadata: Pixel Data in the syntax negotiated as for frames
        (native: one part, the whole value; encapsulated: a part per frame), any other value
        as one part."""
        records = await asyncio.to_thread(self._records, Level.IMAGE, _filters(request))
        if not records:
            return error(404, "not found")
        path = request.path_params["path"]
        try:
            if path.strip("/").upper() == PIXEL_DATA:
                return await self._pixel_data(request, records[0], None)
            value = await asyncio.to_thread(
                lambda: _element_at(InstanceParts(self.archive, records[0]).header(), path)
            )
        except BadRequest as e:
            return error(400, str(e))
        if value is None:
            return error(404, f"no bulk data at {path}")
        return _parts([value], OCTET_STREAM)

    async def frames(self, request: Request) -> Response:
        """Frames in the syntax negotiated; as stored, straight from the pack's frame blobs
        (the instance is never read whole unless its frames cannot be told apart there)."""
        try:
            numbers = [int(n) for n in request.path_params["frames"].split(",")]
        except ValueError:
            return error(400, "frames are 1-based numbers: 1,2,3")
        if not numbers or min(numbers) < 1:
            return error(400, "frames are numbered from 1")
        records = await asyncio.to_thread(self._records, Level.IMAGE, _filters(request))
        if not records:
            return error(404, "not found")
        return await self._pixel_data(request, records[0], numbers)

    async def _pixel_data(
        self, request: Request, record: Record, numbers: list[int] | None
    ) -> Response:
        """Frames ``numbers`` (all of Pixel Data when None) with their media type."""
        try:
            ranges = accepted(request.headers.get("accept"), request.query_params.get("accept"))
            media, syntax = frame_media(ranges, record)
        except BadAccept as e:
            return error(400, str(e))
        except NotAcceptable as e:
            return error(406, str(e))
        try:
            frames = await asyncio.to_thread(self._frames, record, numbers, syntax)
            # The first frame before the response starts: what fails, fails as a status.
            first = await asyncio.to_thread(next, frames)
        except FileNotFoundError as e:
            return error(404, str(e))
        except CannotTranscode as e:
            return error(406, str(e))
        except _native.DamagedError:
            raise  # a 500, logged
        except OSError as e:
            return error(406, str(e))
        every = chain([first], frames)
        labelled = _labelled(media, syntax)
        parts: Iterator[tuple[str, Iterator[bytes]]]
        if numbers is None and media == OCTET_STREAM:
            parts = iter([(labelled, every)])  # native Pixel Data: its whole value, one part
        else:
            parts = ((labelled, iter([frame])) for frame in every)
        boundary = uuid.uuid4().hex
        return StreamingResponse(
            iterate_in_thread(multipart(parts, boundary)),
            media_type=f'multipart/related; type="{media}"; boundary={boundary}',
        )

    def _frames(self, record: Record, numbers: list[int] | None, syntax: str) -> Iterator[bytes]:
        """The frames asked for (all when None), read one at a time as stored; made in
        ``syntax`` from the whole instance otherwise."""
        parts = InstanceParts(self.archive, record)
        if syntax != stored_syntax(record):
            count = parts.number_of_frames() if numbers is None else 0
            if numbers is None and count == 0:
                raise FileNotFoundError("the instance has no Pixel Data")
            return iter(
                frames_in(self.archive, record, numbers or list(range(1, count + 1)), syntax)
            )
        if numbers is None:
            count = parts.number_of_frames()
            if count == 0:
                raise FileNotFoundError("the instance has no Pixel Data")
            numbers = list(range(1, count + 1))
        return parts.iter_frames(numbers)

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
                number = whole_number(frames, "frame")
            except (BadRequest, render.BadRenderRequest) as e:
                return error(400, str(e))
            except render.NotAcceptable as e:
                return error(406, str(e))
            record = await asyncio.to_thread(self._representative, level, _filters(request))
            if record is None:
                return error(404, "not found")
            return await rendered_response(self.archive, record, number, rendering)

        return endpoint

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
            series = self.archive.record(Level.SERIES, key)
            return integer(series.tags.get("SeriesNumber") if series else None), key

        members = by_series[min(by_series, key=series_number)]
        members.sort(key=lambda r: (integer(r.tags.get("InstanceNumber")), r.key))
        return members[len(members) // 2]
