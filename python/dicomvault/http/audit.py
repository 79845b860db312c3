"""The audit records of HTTP requests: each query, read, retrieve, export (ZIP and file
downloads), send, delete and repack, with who made it and the patients and studies it is
about, written before the response starts (so before any of the data leaves). Uploads and
STOW-RS are recorded per instance by the archive, from the pack log, like C-STORE.

Which patient a request is about comes from what its path names (a PatientID, or a UID whose
record leads to its patient), looked up before the request runs (a delete leaves nothing to
look up after), from a query's PatientID, or from the resources a send names."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from typing import Any

from starlette.datastructures import QueryParams
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomvault.audit.trail import Patient
from dicomvault.http.auth import ANONYMOUS, who_for
from dicomvault.index import Level, Record
from dicomvault.store import Archive

# Routes that are about no patient.
UNAUDITED = frozenset(
    {
        "/",
        "/ui",
        "/metrics",
        "/openapi.json",
        "/statistics",
        "/modalities",
        "/modalities/{name}/echo",
        "/auth/login",
        "/auth/logout",
        "/auth/whoami",
    }
)
# The POSTs that are recorded here (uploads and STOW-RS are, per instance, by the archive).
POSTS = {
    "/modalities/{name}/store": "send",
    "/modalities/{name}/move": "retrieve",
    "/modalities/{name}/query": "query",
    "/tools/lookup": "query",
    "/tools/repack": "repack",
}
_WADO_RS_RETRIEVE = re.compile(
    r"/dicom-web/studies/\{study\}(/series/\{series\}(/instances/\{instance\})?)?"
)
# Path parameters (and WADO-URI's) by the level of the record they name.
_LEVELS = {
    "PatientID": Level.PATIENT,
    "StudyInstanceUID": Level.STUDY,
    "study": Level.STUDY,
    "studyUID": Level.STUDY,
    "SeriesInstanceUID": Level.SERIES,
    "series": Level.SERIES,
    "SOPInstanceUID": Level.IMAGE,
    "instance": Level.IMAGE,
    "objectUID": Level.IMAGE,
}
# The largest request body read to find what a send is about.
MAX_BODY = 1 << 20


def event_of(method: str, route: str | None) -> str | None:
    """What a request to ``route`` is, for the trail; None: nothing to record."""
    if route is None:
        return None
    if method == "DELETE":
        return "delete"
    if method == "POST":
        return POSTS.get(route)
    if method not in ("GET", "HEAD") or route in UNAUDITED:
        return None
    if route.startswith("/dicom-web") and route.endswith(("/studies", "/series", "/instances")):
        return "query"
    if _WADO_RS_RETRIEVE.fullmatch(route):
        return "retrieve"
    if route.endswith(("/archive", "/file")):
        return "export"
    if "{" not in route and route != "/wado":
        return "query"  # the REST lists, /tools/lookup
    return "read"


def _outcome(status: int) -> str:
    if status < 400:
        return "success"
    return "denied" if status in (401, 403) else "failure"


class RequestAudit:
    """ASGI middleware, inside ``Guard`` (which names the route and the principal)."""

    def __init__(self, app: ASGIApp, archive: Archive) -> None:
        self.app = app
        self.archive = archive

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope.get("state", {})
        event = event_of(scope["method"], state.get("route")) if scope["type"] == "http" else None
        if event is None:
            await self.app(scope, receive, send)
            return
        query = QueryParams(scope["query_string"])
        body = b""
        if scope["method"] == "POST":
            body, receive = await _buffered(receive)
        patients, studies = await asyncio.to_thread(self._about, scope, query, body)
        who = who_for(state.get("principal", ANONYMOUS), scope)
        detail: dict[str, Any] = {}
        if event == "query" and query:
            detail["keys"] = dict(query)

        async def recorded(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.archive.audit.record(
                    event,
                    who,
                    outcome=_outcome(message["status"]),
                    patients=patients,
                    studies=studies,
                    what=f"{scope['method']} {scope['path']}",
                    detail={**detail, "status": message["status"]},
                )
            await send(message)

        await self.app(scope, receive, recorded)

    def _about(
        self, scope: Scope, query: QueryParams, body: bytes
    ) -> tuple[list[Patient], list[str]]:
        """The patients and studies a request names."""
        route = scope["state"]["route"]
        params = dict(scope["state"]["path_params"])
        if route == "/wado":
            params |= dict(query)
        records: list[Record] = []
        patients: list[Patient] = []
        for name, value in params.items():
            level = _LEVELS.get(name)
            if level is Level.PATIENT:
                patients.append({"id": value})
            elif level is not None and (record := self.archive.record(level, value)):
                records.append(record)
        if "PatientID" in query and route != "/wado":
            patients.append({"id": query["PatientID"]})
        if route == "/tools/lookup":
            value = query.get("value") or body.decode("utf-8", "replace").strip()
            records += self.archive.resolve(value) if value else []
        if route == "/modalities/{name}/store":
            records += self._resources(body)
        if route in ("/modalities/{name}/move", "/modalities/{name}/query"):
            keys = _json(body).get("Query", {}) if isinstance(_json(body), dict) else {}
            if isinstance(keys, Mapping) and keys.get("PatientID"):
                patients.append({"id": str(keys["PatientID"])})
        found, studies = self.archive.audit_subjects(records)
        return [*patients, *found], studies

    def _resources(self, body: bytes) -> list[Record]:
        found = _json(body)
        resources = found.get("Resources") if isinstance(found, dict) else found
        resources = [resources] if isinstance(resources, str) else resources
        if not isinstance(resources, list):
            return []
        return [
            r for value in resources if isinstance(value, str) for r in self.archive.resolve(value)
        ]


def _json(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except ValueError:
        return None


async def _buffered(receive: Receive) -> tuple[bytes, Receive]:
    """The request's body (up to MAX_BODY: more is not about patients), and a ``receive`` that
    hands the application the body whole."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        size += len(message.get("body", b""))
        if not message.get("more_body") or size > MAX_BODY:
            break
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")

    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return body[:MAX_BODY], replay
