"""STOW-RS (PS3.18 10.5): ``POST /studies`` and ``POST /studies/{study}`` of a multipart/related
body of application/dicom parts, each stored through the archive's ingest path with the checks
C-STORE makes (complete, its UIDs present, a storage SOP class; to one study, of that study)
before anything of it is indexed. The response is the Store Instances Response Module (PS3.18
Annex I) in DICOM JSON: RetrieveURL, a ReferencedSOPSequence item per instance stored (with its
RetrieveURL) and a FailedSOPSequence item per instance refused, with its UIDs and Failure
Reason; 200 when all were stored, 202 when some, 409 when none (507 when for want of room)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dicomvault.dicom.acceptance import STUDY_INSTANCE_UID, Refusal, uid_of
from dicomvault.http.auth import request_source
from dicomvault.http.body import boundary_of, consume, parts
from dicomvault.http.resources import DICOM_JSON, DICOM_WEB, BadRequest, error
from dicomvault.index import CommitOutcome, Level
from dicomvault.net.status import CANNOT_UNDERSTAND, DATA_SET_DOES_NOT_MATCH, OUT_OF_RESOURCES
from dicomvault.store import Archive
from dicomvault.store.applier import Pending
from dicomvault.store.archive import IngestOutcome, final

log = logging.getLogger("dicomvault.http")

DICOM = "application/dicom"
RETRIEVE_URL = "00081190"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_CLASS = "00081150"
REFERENCED_SOP_INSTANCE = "00081155"
FAILURE_REASON = "00081197"


def _uid(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


class Stow:
    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    async def endpoint(self, request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/related"):
            return error(415, "STOW-RS takes multipart/related application/dicom parts")
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
        if not outcomes:
            return error(400, "the multipart/related body has no part")
        return self._response(outcomes, root, study)

    def _store(
        self, parts: Iterator[tuple[str, Iterator[bytes]]], source: str, study: str | None
    ) -> list[IngestOutcome]:
        """Each part stored as it arrives (queued for the group commit, the next part read
        meanwhile), then every outcome once durable. A part cut short is refused; a body
        cut short before its first part is a BadRequest."""

        def same_study(ingested: Mapping[str, Any]) -> Refusal | None:
            found = uid_of(ingested, STUDY_INSTANCE_UID)
            if study is None or found == study:
                return None
            return Refusal(
                DATA_SET_DOES_NOT_MATCH,
                f"the instance is of study {found or '(none)'}, not of {study} the request names",
            )

        queued: list[tuple[IngestOutcome, Pending[CommitOutcome] | None]] = []
        try:
            for i, (media, payload) in enumerate(parts):
                if media != DICOM:
                    reason = f"{media} parts are not stored here"
                    queued.append(
                        (IngestOutcome("rejected", reason=reason, code=CANNOT_UNDERSTAND), None)
                    )
                    continue
                queued.append(
                    self.archive.ingest_chunks(payload, source, f"part {i + 1}", same_study)
                )
        except BadRequest as e:
            if not queued:
                raise
            queued.append((IngestOutcome("rejected", reason=str(e), code=CANNOT_UNDERSTAND), None))
        return [final(*q) for q in queued]

    def _response(self, outcomes: list[IngestOutcome], root: str, study: str | None) -> Response:
        stored, failed = [], []
        studies: set[str] = set()
        for i, outcome in enumerate(outcomes):
            sop_class, sop_instance = outcome.uids or ("", "")
            if outcome.key is None:
                log.warning("STOW-RS part %d refused: %s", i + 1, outcome.reason)
                failed.append(
                    {
                        REFERENCED_SOP_CLASS: _uid(sop_class),
                        REFERENCED_SOP_INSTANCE: _uid(sop_instance),
                        FAILURE_REASON: {"vr": "US", "Value": [outcome.code or CANNOT_UNDERSTAND]},
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
