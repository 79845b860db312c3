"""Stored instances as response bodies, checked before they are sent: an instance's blobs
are read and checked whole before its first byte goes out, so that damage in the archive is an
error answered before the response starts (one instance) or, in a stream of several, an end
of the stream the client sees (it never receives a damaged instance as if it were whole)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

from dicomvault import _native
from dicomvault.store import Archive

log = logging.getLogger("dicomvault.http")


async def check(archive: Archive, manifest: bytes) -> None:
    """Raises DamagedError (answered 500 by the application) unless every blob of the
    instance reads back intact."""
    await asyncio.to_thread(archive.check_intact, manifest)


def checked_chunks(archive: Archive, manifest: bytes, name: str) -> Iterator[bytes]:
    """The instance's bytes, a blob at a time, once all of them passed their checks; a
    damaged instance is logged and ends the response (``name`` says which it is)."""
    try:
        archive.check_intact(manifest)
    except _native.DamagedError as e:
        log.error("%s is damaged in the archive, the response ends before it: %s", name, e)
        raise
    yield from archive.chunks(manifest)
