"""Migration from a DICOMweb server (``migrate dicomweb URL``): the shared pipeline
(``migrate/pipeline.py``) with the source enumerated by QIDO-RS study searches (paged with
``limit`` and ``offset``; StudyDate windows split where the source caps its answers), each
study listed by QIDO-RS (its instances, paged), and retrieved by WADO-RS: the
multipart/related response is streamed part by part into the store, each part the Part 10
file the source served, kept byte for byte, through the archive's write path (group commit,
then the index). A study the source failed to give whole is asked for again instance by
instance, so that the report names exactly what the source could not give.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.client import HTTPResponse
from typing import Any

from dicomvault import _native
from dicomvault.index import CommitOutcome
from dicomvault.migrate.journal import Journal, JournalRow
from dicomvault.migrate.live import Progress
from dicomvault.migrate.pipeline import (
    Migration,
    Part,
    Plan,
    SourceError,
    Study,
    dicom_date,
    log,
    windowed,
)
from dicomvault.store import Archive
from dicomvault.store.applier import Pending

# Instances as the source stores them (PS3.18 8.7.3.5.2: "*" asks for no transcoding).
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
QIDO_ACCEPT = "application/dicom+json"
# Answers asked for per QIDO-RS request (the source may give fewer: the next page is asked).
PAGE = 1000
# Bytes read from the response at a time.
CHUNK = 256 << 10
TIMEOUT_S = 600.0

STUDY_INSTANCE_UID = "0020000D"
SERIES_INSTANCE_UID = "0020000E"
SOP_INSTANCE_UID = "00080018"
STUDY_DATE = "00080020"
NUMBER_OF_STUDY_RELATED_INSTANCES = "00201208"


def _value(match: dict[str, Any], tag: str) -> str:
    """The first value of ``tag`` in a DICOM JSON object ("" when absent)."""
    values = match.get(tag, {}).get("Value") or [""]
    return str(values[0])


def authorization(token: str | None, user: str | None, password: str | None) -> str | None:
    """The Authorization header for a bearer token, or a user and password (Basic)."""
    if token:
        return f"Bearer {token}"
    if user is not None:
        basic = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        return f"Basic {basic}"
    return None


def multipart(read: Callable[[int], bytes], boundary: str) -> Iterator[tuple[str, bytes]]:
    """The events of a multipart body read by ``read(n)`` (b"" at its end), as they come:
    ("begin", part headers), ("data", a piece of the part's body), ("end", b"") per part.
    ValueError when it ends before its closing delimiter."""
    delimiter = b"\r\n--" + boundary.encode()
    # The body's first delimiter has no CRLF before it: one is supplied.
    buffer = b"\r\n"
    state = "preamble"
    while True:
        chunk = read(CHUNK)
        buffer += chunk
        while True:
            if state in ("preamble", "body"):
                at = buffer.find(delimiter)
                if at < 0:
                    # What cannot be the start of a delimiter is body.
                    keep = len(delimiter) - 1
                    if state == "body" and len(buffer) > keep:
                        yield "data", buffer[:-keep]
                        buffer = buffer[-keep:]
                    elif state == "preamble" and len(buffer) > keep:
                        buffer = buffer[-keep:]
                    break
                if state == "body":
                    if at:
                        yield "data", buffer[:at]
                    yield "end", b""
                buffer = buffer[at + len(delimiter) :]
                state = "delimiter"
            if state == "delimiter":
                if len(buffer) < 2:
                    break
                if buffer.startswith(b"--"):
                    return
                state = "headers"
            if state == "headers":
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    break
                # The line break ending the delimiter line starts the headers.
                yield "begin", buffer[:end].strip()
                buffer = buffer[end + 4 :]
                state = "body"
        if not chunk:
            raise ValueError("the multipart body ends before its closing delimiter")


class DicomwebMigration(Migration):
    """Moves the studies of the DICOMweb server at ``url`` into ``archive``."""

    def __init__(
        self,
        archive: Archive,
        journal: Journal,
        url: str,
        auth: str | None = None,
        report: Callable[[str], None] = log.info,
        on_study: Callable[[Progress, JournalRow], None] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        super().__init__(archive, journal, self.url, report, on_study)
        self.title = self.url
        self.auth = auth
        self.tls = ssl.create_default_context()

    def _open(self, path: str, accept: str, query: dict[str, str] | None = None) -> HTTPResponse:
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        headers = {"Accept": accept}
        if self.auth:
            headers["Authorization"] = self.auth
        request = urllib.request.Request(url, headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=TIMEOUT_S, context=self.tls)
        except urllib.error.HTTPError as e:
            e.close()
            raise SourceError(f"GET {path}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            raise SourceError(f"GET {path}: {getattr(e, 'reason', e)}") from None

    def _search(
        self, path: str, query: dict[str, str], limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Every match of a QIDO-RS search (the first ``limit``, when given), page after
        page; stops where a page brings nothing new (a source that ignores ``offset``)."""
        found: list[dict[str, Any]] = []
        seen: set[str] = set()
        while limit is None or len(found) < limit:
            page = {**query, "limit": str(PAGE), "offset": str(len(found))}
            with self._open(path, QIDO_ACCEPT, page) as response:
                raw = response.read()
            try:
                matches = json.loads(raw) if raw.strip() else []
            except ValueError as e:
                raise SourceError(f"GET {path}: not DICOM JSON: {e}") from None
            new = [m for m in matches if json.dumps(m, sort_keys=True) not in seen]
            seen |= {json.dumps(m, sort_keys=True) for m in new}
            found += new
            if len(matches) < PAGE or not new:
                break
        return found[:limit]

    def studies(self, plan: Plan) -> Iterator[tuple[str, str, int]]:
        def query(low: dt.date | None, high: dt.date | None) -> tuple[list[dict[str, Any]], bool]:
            search = {**plan.keys, "includefield": NUMBER_OF_STUDY_RELATED_INSTANCES}
            if low is None or high is None:
                return self._search("/studies", search, plan.find_limit), False
            search["StudyDate"] = f"{dicom_date(low)}-{dicom_date(high)}"
            return self._search("/studies", search), False

        def date_of(study: dict[str, Any]) -> str:
            return _value(study, STUDY_DATE)

        for study in windowed(plan, query, self.report, date_of):
            uid = _value(study, STUDY_INSTANCE_UID)
            if uid:
                expected = _value(study, NUMBER_OF_STUDY_RELATED_INSTANCES)
                count = int(expected) if expected.isdigit() else 0
                yield uid, _value(study, STUDY_DATE), count

    def source_instances(self, study: str) -> dict[str, str]:
        listed = {}
        for m in self._search(f"/studies/{study}/instances", {}):
            if uid := _value(m, SOP_INSTANCE_UID):
                listed[uid] = _value(m, SERIES_INSTANCE_UID)
        return listed

    def retrieve(self, study: Study, plan: Plan, part: Part | None = None) -> str:
        uid = study.row.item
        if study.row.attempts <= 1 or not study.listed:
            return self._fetch(f"/studies/{uid}", uid)
        # Asked for again: what is missing, instance by instance, each failure named.
        missing = study.listed.keys() - self.archive_instances(uid)
        errors = []
        for instance in sorted(missing):
            series = study.listed[instance]
            path = f"/studies/{uid}/series/{series}/instances/{instance}"
            if error := self._fetch(path, uid):
                errors.append(f"{instance}: {error}")
        return "; ".join(errors)

    def _fetch(self, path: str, study: str) -> str:
        """Streams a WADO-RS response into the archive; an error message, or ""."""
        try:
            response = self._open(path, WADO_ACCEPT)
        except SourceError as e:
            return str(e)
        queued: list[tuple[str, Pending[CommitOutcome]]] = []
        errors: list[str] = []
        with response:
            match = re.search(r'boundary="?([^";]+)"?', response.headers.get("Content-Type", ""))
            if match is None:
                return f"GET {path}: not multipart/related"
            try:
                self._ingest(response, match.group(1), study, queued, errors)
            except (ValueError, OSError) as e:
                errors.append(f"GET {path}: {e}")
        for name, future in queued:
            try:
                future.result()
            except Exception as e:  # the index or the disk: nothing was stored
                errors.append(f"{name}: not stored: {e}")
        return "; ".join(errors)

    def _ingest(
        self,
        response: HTTPResponse,
        boundary: str,
        study: str,
        queued: list[tuple[str, Pending[CommitOutcome]]],
        errors: list[str],
    ) -> None:
        """Each part of ``response`` into the store as it arrives, queued for commit."""
        writer: _native.InstanceWriter | None = None
        source = f"dicomweb:{self.url}"
        for kind, value in multipart(response.read1, boundary):
            if kind == "begin":
                writer = self.archive.writer()
            elif kind == "data" and writer is not None:
                writer.write(value)
            elif kind == "end" and writer is not None:
                try:
                    ingested = writer.finish()
                except _native.ScanError as e:
                    errors.append(f"a part that is not a DICOM instance: {e}")
                    continue
                finally:
                    writer = None
                entry = self.archive.entry(ingested, source)
                sop = str(entry.tags.get("SOPInstanceUID", ""))
                of = str(entry.tags.get("StudyInstanceUID", ""))
                if not sop or of != study:
                    errors.append(f"{sop or 'an instance'} of study {of or '?'} refused")
                    continue
                queued.append((sop, self.archive.submit(entry)))
