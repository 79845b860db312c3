"""STOW-RS (PS3.18 10.5): ``POST /studies`` and ``POST /studies/{study}`` of a multipart/related
body of application/dicom parts, each stored through the archive's ingest path with the checks
C-STORE makes (complete, its UIDs present, a storage SOP class, a transfer syntax the listener
takes; to one study, of that study) before anything of it is indexed, and committed only once
the body was read to its end. The response is the Store Instances Response Module (PS3.18
Annex I) in DICOM JSON: RetrieveURL, a ReferencedSOPSequence item per instance stored (with its
RetrieveURL) and a FailedSOPSequence item per instance refused, with its UIDs (when it could
be read) and Failure Reason; 200 when all were stored, 202 when some, 409 when none (507 when
for want of room). Metadata and bulk data (application/dicom+json or +xml) are not stored:
415, as for any media type other than application/dicom (PS3.18 Table 10.5.3-1)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dicomvault.dicom.acceptance import STUDY_INSTANCE_UID, Refusal, uid_of
from dicomvault.http.auth import request_source
from dicomvault.http.body import BodyCutShort, boundary_of, consume, parts
from dicomvault.http.resources import DICOM_JSON, DICOM_WEB, BadRequest, error
from dicomvault.index import CommitOutcome, Level
from dicomvault.net.status import (
    CANNOT_UNDERSTAND,
    DATA_SET_DOES_NOT_MATCH,
    DUPLICATE_SOP_INSTANCE,
    OUT_OF_RESOURCES,
)
from dicomvault.store import Archive
from dicomvault.store.archive import IngestOutcome, Pending, final

log = logging.getLogger("dicomvault.http")

DICOM = "application/dicom"
# The media types of a Store of metadata and bulk data (PS3.18 10.5.1.4), which is not taken.
METADATA = ("application/dicom+json", "application/dicom+xml")
RETRIEVE_URL = "00081190"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_CLASS = "00081150"
REFERENCED_SOP_INSTANCE = "00081155"
FAILURE_REASON = "00081197"


def _uid(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


class UnsupportedMedia(Exception):
    """A request whose representations are of a media type not stored here (a 415)."""


def _until_cut(payload: Iterator[bytes], cut: list[BadRequest]) -> Iterator[bytes]:
    """A part's payload up to where the body ended inside it (noted in ``cut``), so that the
    writer scans what came and the part is refused with the UIDs of its header."""
    try:
        yield from payload
    except BadRequest as e:
        cut.append(e)


class Stow:
    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    async def endpoint(self, request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        declared = re.search(r'(?i);\s*type="?([^";]+)"?', content_type)
        media = declared[1].strip().lower() if declared else DICOM
        if not content_type.startswith("multipart/related") or media != DICOM:
            return error(415, f"STOW-RS takes multipart/related {DICOM} parts, not {media}")
        root = str(request.base_url).rstrip("/") + DICOM_WEB
        study = request.path_params.get("study")
        source = request_source(request, "STOW-RS")
        try:
            boundary = boundary_of(content_type)
            outcomes, _ = await consume(
                request, lambda pieces: self._store(parts(pieces, boundary), source, study)
            )
        except BadRequest as e:
            return error(400, str(e))
        except UnsupportedMedia as e:
            return error(415, str(e))
        if not outcomes:
            return error(400, "the multipart/related body has no part")
        return self._response(outcomes, root, study)

    def _store(
        self, parts: Iterator[tuple[str, Iterator[bytes]]], source: str, study: str | None
    ) -> list[IngestOutcome]:
        """Each part stored as it arrives: written into the packs and submitted for the next
        group commit at once (so that no blob waits for a long body's end before an instance
        references it: gc on S3 counts on that), every outcome returned once durable. A body
        that ends early (cut off past [http] max_body_mb, or the client going away) before any
        part was whole stores nothing (BodyCutShort: a 413, "no instance stored", PS3.18 Table
        10.5.3-1); after some, those are stored and the rest is one failure (a 202). A part
        cut short by the body's end is refused with its header's UIDs; a body cut short
        inside its first part, or before it, is a BadRequest; a metadata part makes the
        request UnsupportedMedia."""

        def same_study(ingested: Mapping[str, Any]) -> Refusal | None:
            found = uid_of(ingested, STUDY_INSTANCE_UID)
            if study is None or found == study:
                return None
            return Refusal(
                DATA_SET_DOES_NOT_MATCH,
                f"the instance is of study {found or '(none)'}, not of {study} the request names",
            )

        archive = self.archive
        queued: list[tuple[IngestOutcome, Pending[CommitOutcome] | None]] = []

        def refused(reason: str, uids: tuple[str, str] | None = None) -> None:
            outcome = IngestOutcome("rejected", reason=reason, code=CANNOT_UNDERSTAND, uids=uids)
            queued.append((outcome, None))

        try:
            for i, (media, payload) in enumerate(parts):
                if media in METADATA:
                    raise UnsupportedMedia(
                        f"{media} parts (metadata and bulk data) are not stored here: send "
                        "each instance as one application/dicom part"
                    )
                if media != DICOM:
                    refused(f"{media} parts are not stored here")
                    continue
                cut: list[BadRequest] = []
                outcome, entry = archive.receive_chunks(
                    _until_cut(payload, cut), source, f"part {i + 1}", same_study
                )
                if cut:
                    if not queued:
                        raise cut[0]
                    # The body ended inside this part: refused with its UIDs, whatever the
                    # writer made of what came (cut at an element's end, it reads as whole).
                    refused(f"the body ends inside this part: {cut[0]}", outcome.uids)
                    break  # nothing follows
                queued.append((outcome, archive.submit(entry) if entry is not None else None))
        except BadRequest as e:
            if not queued:
                raise
            refused(str(e))
        except BodyCutShort:
            if not any(pending is not None for _, pending in queued):
                raise
            refused("the body ended early (past [http] max_body_mb, or cut off): the rest unread")
        return [final(*q) for q in queued]

    def _response(self, outcomes: list[IngestOutcome], root: str, study: str | None) -> Response:
        stored, failed = [], []
        studies: set[str] = set()
        for i, outcome in enumerate(outcomes):
            sop_class, sop_instance = outcome.uids or ("", "")
            code = outcome.code or CANNOT_UNDERSTAND
            reason = outcome.reason
            if outcome.status == "different":  # what was sent is not what the archive holds
                code = DUPLICATE_SOP_INSTANCE
                reason = (
                    f"other bytes are stored as SOP Instance {outcome.key} and were kept "
                    '([storage] on_duplicate = "keep"): delete it first to store these'
                )
            if outcome.key is None or outcome.status == "different":
                log.warning("STOW-RS part %d refused: %s", i + 1, reason)
                failed.append(
                    {
                        REFERENCED_SOP_CLASS: _uid(sop_class),
                        REFERENCED_SOP_INSTANCE: _uid(sop_instance),
                        FAILURE_REASON: {"vr": "US", "Value": [code]},
                    }
                )
                continue
            record = self.archive.record(Level.IMAGE, outcome.key)
            series = self.archive.parent(record) if record else None
            study_url = f"{root}/studies/{series.parent if series else ''}"
            studies.add(study_url)
            url = f"{study_url}/series/{record.parent if record else ''}/instances/{outcome.key}"
            stored.append(
                {
                    REFERENCED_SOP_CLASS: _uid(sop_class),
                    REFERENCED_SOP_INSTANCE: _uid(outcome.key),
                    RETRIEVE_URL: {"vr": "UR", "Value": [url]},
                }
            )
        body: dict[str, Any] = {}
        if study is not None:
            studies = {f"{root}/studies/{study}"}
        if len(studies) == 1:  # the study's URL, when they are of one (PS3.18 Table I.1-1)
            body[RETRIEVE_URL] = {"vr": "UR", "Value": list(studies)}
        if failed:
            body[FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": failed}
        if stored:
            body[REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": stored}
        no_room = any(o.code == OUT_OF_RESOURCES for o in outcomes)
        status = 200 if not failed else 202 if stored else 507 if no_room else 409
        return JSONResponse(dict(sorted(body.items())), status_code=status, media_type=DICOM_JSON)
