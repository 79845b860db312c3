"""Request bodies read as they arrive, never held whole: the event loop hands the pieces to a
worker thread through a small queue, and a multipart/related body is split into its parts
as the pieces pass (RFC 2046 5.1.1: a delimiter counts only at the start of the body or
after a CRLF; a body whose closing delimiter never comes was cut short)."""

from __future__ import annotations

import asyncio
import queue
import re
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomvault.http.resources import BadRequest

T = TypeVar("T")

# Pieces of a body in flight between the event loop and the thread: what it holds in memory.
_IN_FLIGHT = 8
# A part's header lines at most.
_MAX_HEADERS = 16 << 10


class BodyCutShort(Exception):
    """The request's body ended before it was whole (the client went away, or it passed
    [http] max_body_mb). Not an OSError: what reads the body must not take it for a failing
    disk and go on with what it has."""


class _Pieces:
    """The body's pieces for the worker thread, in order; the loop feeds them."""

    def __init__(self) -> None:
        self.queue: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=_IN_FLIGHT)
        self.ended = threading.Event()  # the thread took the end (or the failure) of the body
        self.received = 0

    def __iter__(self) -> Iterator[bytes]:
        while not self.ended.is_set():
            piece = self.queue.get()
            if piece is None or isinstance(piece, BaseException):
                self.ended.set()
                if piece is not None:
                    raise BodyCutShort(f"the request body ended early: {piece!r}")
                return
            yield piece

    def drain(self) -> None:
        """Takes what the thread's work left unread, so that the loop is never kept waiting."""
        for _ in self:
            pass


async def consume(request: Request, work: Callable[[Iterator[bytes]], T]) -> tuple[T, int]:
    """Runs ``work`` in a worker thread over the request body's pieces as they arrive;
    returns what it returned and how many bytes the body had."""
    pieces = _Pieces()

    def run() -> T:
        try:
            return work(iter(pieces))
        finally:
            pieces.drain()

    working = asyncio.ensure_future(asyncio.to_thread(run))
    try:
        async for piece in request.stream():
            if piece:
                pieces.received += len(piece)
                await asyncio.to_thread(pieces.queue.put, piece)
    except BaseException as e:
        await asyncio.to_thread(pieces.queue.put, e)
        [done] = await asyncio.gather(working, return_exceptions=True)
        if isinstance(e, ClientDisconnect) and not isinstance(done, BaseException):
            # The work took the body's end for a cut and answered for what came before it
            # (STOW-RS: the instances stored): that is the response, not the disconnect.
            return done, pieces.received
        raise
    await asyncio.to_thread(pieces.queue.put, None)
    return await working, pieces.received


class BodyLimit:
    """ASGI middleware refusing request bodies larger than ``limit`` bytes ([http]
    max_body_mb) with 413: by their Content-Length before a byte is read, or, sent without
    one, once they pass it (the application sees the client go away: it commits no instance
    it did not receive whole, and STOW-RS answers for those it stored before)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = f"{self.limit >> 20} MiB ([http] max_body_mb)"
        too_large = JSONResponse(
            {"error": f"the request body is larger than {limit}"}, status_code=413
        )
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            await too_large(scope, receive, send)
            return
        received, over, started = 0, False, False

        async def counted() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except (ClientDisconnect, BodyCutShort):
            if not over:
                raise
        if over and not started:
            await too_large(scope, receive, send)


def boundary_of(content_type: str) -> bytes:
    """The boundary a multipart Content-Type names (BadRequest when it names none)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise BadRequest("multipart/related without a boundary")
    return match[1].encode()


class _Reader:
    """Bytes from an iterator of pieces, with what was read ahead kept."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self.pieces = pieces
        self.buffer = bytearray()

    def more(self) -> bool:
        piece = next(self.pieces, None)
        if piece is None:
            return False
        self.buffer += piece
        return True

    def find(self, needle: bytes, start: int = 0) -> int:
        """Where ``needle`` starts, reading ahead as needed; -1 at the end of the body."""
        while (at := self.buffer.find(needle, start)) < 0:
            start = max(0, len(self.buffer) - len(needle) + 1)
            if not self.more():
                return -1
        return at

    def take(self, count: int) -> bytes:
        while len(self.buffer) < count and self.more():
            pass
        taken = bytes(self.buffer[:count])
        del self.buffer[:count]
        return taken

    def until(self, delimiter: bytes) -> Iterator[bytes]:
        """The bytes before ``delimiter`` (consumed), a piece at a time: at most a piece and a
        delimiter are held. BadRequest when the body ends first."""
        while (at := self.buffer.find(delimiter)) < 0:
            keep = len(delimiter) - 1
            if len(self.buffer) > keep:
                yield bytes(self.buffer[:-keep] if keep else self.buffer)
                del self.buffer[: len(self.buffer) - keep]
            if not self.more():
                raise BadRequest("the body ends inside a part: its closing boundary never came")
        if at:
            yield bytes(self.buffer[:at])
        del self.buffer[: at + len(delimiter)]


def parts(pieces: Iterator[bytes], boundary: bytes) -> Iterator[tuple[str, Iterator[bytes]]]:
    """The (media type, payload pieces) of each part of a multipart body arriving in
    ``pieces``; each part's payload must be read (or is skipped) before the next is given.
    BadRequest for a body without a boundary, or cut short."""
    reader = _Reader(pieces)
    dash = b"--" + boundary
    at = reader.find(dash)
    while at > 0 and reader.buffer[at - 2 : at] != b"\r\n":  # inside the preamble's text
        at = reader.find(dash, at + 1)
    if at < 0:
        raise BadRequest("the body holds no part: its boundary never appears")
    del reader.buffer[: at + len(dash)]
    while True:
        ending = reader.take(2)
        if ending == b"--":
            return  # the closing delimiter
        if len(ending) < 2:
            raise BadRequest("the body ends after a boundary: it was cut short")
        reader.buffer[:0] = ending
        for _ in reader.until(b"\r\n"):  # transport padding after the delimiter
            pass
        headers = b""
        if (blank := reader.take(2)) != b"\r\n":  # a part may have no header at all
            reader.buffer[:0] = blank
            for piece in reader.until(b"\r\n\r\n"):
                headers += piece
                if len(headers) > _MAX_HEADERS:
                    raise BadRequest("a part's headers are too long")
        found = re.search(rb"(?im)^content-type:\s*([^;\r\n]+)", headers)
        media = found[1].decode("latin-1").strip().lower() if found else "application/dicom"
        payload = reader.until(b"\r\n" + dash)
        yield media, payload
        for _ in payload:  # what the caller left unread
            pass
