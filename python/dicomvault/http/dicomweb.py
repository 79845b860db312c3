"""DICOMweb under /dicom-web: QIDO-RS search on the C-FIND query engine, WADO-RS retrieve of
studies, series and instances as multipart/related (streamed from the packs, byte-identical),
their metadata and their frames (from the frame blobs), and STOW-RS store through the same
ingest path as C-STORE.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pydicom
from pydicom.datadict import keyword_for_tag
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from dicomvault import _native
from dicomvault.index import Level
from dicomvault.net.query import response_identifier
from dicomvault.store import Archive

log = logging.getLogger("dicomvault.http")

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


async def _iterate(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
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


class DicomWeb:
    """The /dicom-web routes over an open archive."""

    def __init__(self, archive: Archive, case_insensitive_pn: bool = True) -> None:
        self.archive = archive
        self.case_insensitive_pn = case_insensitive_pn

    def routes(self) -> list[Route]:
        base = "/dicom-web"
        study, series = "{study}", "{series}"
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
            Route(
                f"{base}/studies/{study}/series/{series}/instances/{{instance}}",
                self.retrieve(Level.IMAGE),
                methods=["GET"],
            ),
            Route(f"{base}/studies/{study}/metadata", self.metadata(Level.STUDY)),
            Route(f"{base}/studies/{study}/series/{series}/metadata", self.metadata(Level.SERIES)),
            Route(
                f"{base}/studies/{study}/series/{series}/instances/{{instance}}/metadata",
                self.metadata(Level.IMAGE),
            ),
            Route(
                f"{base}/studies/{study}/series/{series}/instances/{{instance}}/frames/{{frames}}",
                self.frames,
            ),
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
            boundary = uuid.uuid4().hex
            parts = (self.archive.store.chunks(r.manifest, 0) for r in records)
            return StreamingResponse(
                _iterate(_multipart(parts, boundary)),
                media_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
            )

        return endpoint

    def metadata(self, level: Level) -> Any:
        """The instances' data sets up to Pixel Data, in the DICOM JSON model (Pixel Data itself
        is left out: its frames are at .../frames/N)."""

        async def endpoint(request: Request) -> Response:
            records = await asyncio.to_thread(self._records, level, _filters(request))
            if not records:
                return JSONResponse({"error": "not found"}, status_code=404)
            found = await asyncio.to_thread(lambda: [self._header(r) for r in records])
            return JSONResponse(found, media_type=DICOM_JSON)

        return endpoint

    def _header(self, record: Any) -> dict:
        first = next(iter(self.archive.store.chunks(record.manifest, 0)), b"")
        ds = pydicom.dcmread(io.BytesIO(first), stop_before_pixels=True, force=True)
        return ds.to_json_dict(bulk_data_threshold=1 << 30)

    async def frames(self, request: Request) -> Response:
        """Frames straight from the pack's frame blobs: the instance is never read whole."""
        try:
            numbers = [int(n) for n in request.path_params["frames"].split(",")]
        except ValueError:
            return JSONResponse({"error": "frames are 1-based numbers: 1,2,3"}, status_code=400)
        if not numbers or min(numbers) < 1:
            return JSONResponse({"error": "frames are numbered from 1"}, status_code=400)
        records = await asyncio.to_thread(self._records, Level.IMAGE, _filters(request))
        if not records:
            return JSONResponse({"error": "not found"}, status_code=404)
        manifest = records[0].manifest
        info = _native.manifest_info(manifest)
        try:
            frames = await asyncio.to_thread(
                lambda: [self.archive.store.read_frame(manifest, n - 1) for n in numbers]
            )
        except FileNotFoundError as e:
            return JSONResponse({"error": str(e)}, status_code=404)
        except OSError as e:
            return JSONResponse({"error": str(e)}, status_code=406)
        media = "application/octet-stream"
        if info["encapsulated"]:
            media += f"; transfer-syntax={info['transfer_syntax']}"
        boundary = uuid.uuid4().hex
        body = b"".join(
            f"--{boundary}\r\nContent-Type: {media}\r\n\r\n".encode() + frame + b"\r\n"
            for frame in frames
        )
        return Response(
            body + f"--{boundary}--\r\n".encode(),
            media_type=f'multipart/related; type="application/octet-stream"; boundary={boundary}',
        )

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
        source = f"STOW-RS@{request.client.host if request.client else ''}"
        stored, failed = await asyncio.to_thread(self._store, parts, source)
        status = 200 if not failed else (409 if not stored else 202)
        body: dict[str, Any] = {}
        if stored:
            body["00081199"] = {"vr": "SQ", "Value": stored}
        if failed:
            body["00081198"] = {"vr": "SQ", "Value": failed}
        return JSONResponse(body, status_code=status, media_type=DICOM_JSON)

    def _store(self, parts: list[bytes], source: str) -> tuple[list[dict], list[dict]]:
        stored, failed = [], []
        # Every part is queued before any is waited for, so that they share group commits.
        queued = []
        for i, part in enumerate(parts):
            outcome, future = self.archive.ingest_bytes(part, source, f"part {i + 1}")
            if future is None:
                failed.append({"00081197": {"vr": "US", "Value": [0xC000]}})
                log.warning("STOW-RS part %d refused: %s", i + 1, outcome.reason)
            else:
                queued.append((i, future))
        for i, future in queued:
            try:
                committed = future.result()
            except Exception as e:  # the index or the disk: not stored
                log.error("STOW-RS part %d: commit failed: %s", i + 1, e)
                failed.append({"00081197": {"vr": "US", "Value": [0xA700]}})
                continue
            record = self.archive.index.get(Level.IMAGE, committed.key)
            tags = record.tags if record else {}
            stored.append(
                {
                    "00081150": {"vr": "UI", "Value": [tags.get("SOPClassUID", "")]},
                    "00081155": {"vr": "UI", "Value": [committed.key]},
                }
            )
        return stored, failed
