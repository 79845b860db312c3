"""What the DICOMweb and WADO-URI routes share: errors answered as JSON, the instances a
request's UIDs select (matched as C-FIND matches, with its person name case sensitivity),
packs read in a worker thread, multipart bodies, and rendered frames as responses."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator, Mapping

from starlette.responses import JSONResponse, Response

from dicomvault.http import render
from dicomvault.index import Level, Record
from dicomvault.store import Archive
from dicomvault.store.finder import Finder

DICOM_WEB = "/dicom-web"
DICOM_JSON = "application/dicom+json"
# Binary values longer than this are left out of metadata, behind a BulkDataURI.
BULK_DATA_THRESHOLD = 1024
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


class BadRequest(ValueError):
    """A request the server will not act on (a 400, the message saying why)."""


def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def whole_number(value: str, name: str) -> int:
    if not re.fullmatch(r"\d{1,9}", value) or int(value) < 1:
        raise BadRequest(f"{name} is a number from 1: {value!r}")
    return int(value)


def integer(value: str | None) -> int:
    """An IS value as a number to sort by (0 when absent or malformed)."""
    return int(value) if value and re.fullmatch(r"\s*[+-]?\d{1,12}\s*", value) else 0


async def iterate_in_thread(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Reads the packs in a worker thread, a chunk at a time: nothing is buffered whole."""
    done = object()
    while (chunk := await asyncio.to_thread(next, chunks, done)) is not done:
        yield chunk  # type: ignore[misc]


def multipart(parts: Iterator[tuple[str, Iterator[bytes]]], boundary: str) -> Iterator[bytes]:
    """A multipart/related body of (media type, chunks) parts."""
    for media, chunks in parts:
        yield f"--{boundary}\r\nContent-Type: {media}\r\n\r\n".encode()
        yield from chunks
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def instances(finder: Finder, level: Level, filters: dict[str, str]) -> list[Record]:
    """The instances under the records at ``level`` that ``filters`` (UIDs) select."""
    archive = finder.archive
    records = archive.matched_records(level, list(finder.find(level, filters)))
    return list(archive.instances(records))


async def rendered_response(
    archive: Archive, record: Record, number: int, rendering: render.Rendering
) -> Response:
    """Frame ``number`` of ``record`` rendered: 404 beyond its frames, 406 without Pixel Data
    (PS3.18 8.7.4: no rendered media type represents it, so none the client accepts), 415 when
    its syntax cannot be decoded."""
    try:
        image = await asyncio.to_thread(render.rendered_frame, archive, record, number, rendering)
    except FileNotFoundError as e:
        return error(404, str(e))
    except render.NoPixelData as e:
        return error(406, str(e))
    except render.CannotRender as e:
        return error(415, str(e))
    return Response(image, media_type=rendering.media_type)
