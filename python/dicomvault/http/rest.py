"""The REST API, in the manner of Orthanc's but naming resources by their DICOM identifiers
(PatientID, Study/Series/SOP Instance UIDs): browse the levels, an instance's file, tags and
preview, a ZIP of any level, upload, delete, lookup, statistics, and the [modalities] as peers
to C-ECHO, C-STORE to, C-FIND and C-MOVE from.

Each endpoint's docstring is its OpenAPI operation: a summary line, then YAML after ``---``.
"""

from __future__ import annotations

import asyncio
import json
import re
import zipfile
from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import datetime
from functools import partial
from typing import Any

from pydicom import Dataset
from pydicom.dataelem import DataElement
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from dicomvault.config import Settings
from dicomvault.dicom.keys import keyword_named
from dicomvault.http import render
from dicomvault.http.auth import request_source, require
from dicomvault.http.body import consume
from dicomvault.http.resources import BINARY_VRS, iterate_in_thread
from dicomvault.http.stored import check, checked_chunks
from dicomvault.index import CommitOutcome, Level, Record
from dicomvault.index.levels import PLURALS, UNIQUE
from dicomvault.index.records import patient_key
from dicomvault.net.outbound import stored_instance
from dicomvault.net.policy import AccessPolicy, Modality
from dicomvault.net.scu import RetrieveResult, Scu, ScuError
from dicomvault.net.status import SUCCESS, describe
from dicomvault.security.accounts import Role
from dicomvault.store import Archive, IngestOutcome
from dicomvault.store.applier import Pending
from dicomvault.store.archive import final

Endpoint = Callable[[Request], Awaitable[Response]]
LevelEndpoint = Callable[[Request, Level], Awaitable[Response]]

# Query parameters of the list endpoints that page rather than match.
_PAGING = ("limit", "offset")
# Values too long to be worth showing: bulk data is summarised by its length.
_PLURAL_OF = {level: plural for plural, level in PLURALS.items()}


def _words(level: Level) -> dict[str, str]:
    """What a level's endpoint docstrings say: ``{levels}``, ``{level}``, ``{key}``,
    ``{children}``."""
    singular = {Level.PATIENT: "patient", Level.STUDY: "study", Level.SERIES: "series"}
    return {
        "levels": _PLURAL_OF[level],
        "level": singular.get(level, "instance"),
        "key": UNIQUE[level],
        "children": _PLURAL_OF[level.child] if level.child else "",
    }


def _bound(handler: LevelEndpoint, level: Level) -> Endpoint:
    """``handler`` for one level, documented with that level's words."""

    async def endpoint(request: Request) -> Response:
        return await handler(request, level)

    endpoint.__doc__ = (handler.__doc__ or "").format(**_words(level))
    endpoint.__name__ = f"{handler.__name__}_{level.value.lower()}"
    return endpoint


def _outcome(name: str, outcome: IngestOutcome) -> dict[str, Any]:
    found: dict[str, Any] = {
        "name": name,
        "status": outcome.status,
        "SOPInstanceUID": outcome.key,
        "size": outcome.size,
    }
    if outcome.reason:
        found["reason"] = outcome.reason
    return found


def _list_parameters(request: Request) -> tuple[dict[str, str], int | None, int]:
    """A list endpoint's matching keys, limit and offset; 400 for what is not one."""
    filters: dict[str, str] = {}
    paging: dict[str, int] = {}
    for name, value in request.query_params.multi_items():
        try:
            if name in _PAGING:
                paging[name] = int(value)
                if paging[name] < 0:
                    raise ValueError("must not be negative")
            else:
                filters[keyword_named(name)] = value
        except ValueError as e:
            raise HTTPException(400, f"{name}: {e}") from e
    return filters, paging.get("limit"), paging.get("offset", 0)


def _retrieve_result(result: RetrieveResult) -> dict[str, Any]:
    return {
        "ok": result.ok,
        "status": describe(result.status),
        "completed": result.completed,
        "failed": result.failed,
        "warning": result.warning,
        "failed_uids": result.failed_uids,
    }


def elements(ds: Dataset) -> list[dict[str, Any]]:
    """A data set as a list of {tag, keyword, vr, value} (sequences as ``items``)."""
    listed = []
    for tag in sorted(ds.keys()):
        item: dict[str, Any] = {"tag": f"{tag.group:04X},{tag.element:04X}"}
        try:
            element = ds[tag]  # a value read raw is decoded here, and may be malformed
        except Exception as e:
            listed.append(item | {"keyword": "", "vr": "", "value": f"<unreadable: {e}>"})
            continue
        item |= {"keyword": element.keyword or "", "vr": element.VR}
        if element.VR == "SQ":
            item["items"] = [elements(i) for i in element.value or []]
        else:
            item["value"] = _text(element)
        listed.append(item)
    return listed


def _text(element: DataElement) -> str:
    try:
        value = element.value
        if value is None:
            return ""
        if element.VR in BINARY_VRS or isinstance(value, bytes):
            return f"<{len(value)} bytes>"
        if element.VM > 1:
            return "\\".join(str(v) for v in value)
        return str(value)
    except Exception as e:  # a malformed value is shown as such, never fails the whole dump
        return f"<unreadable: {e}>"


class _Sink:
    """A write-only, unseekable file for ``zipfile``: whatever was written since ``take``."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass  # there is nothing to release (zipfile closes only files it opened itself)

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


# Pieces of an uploaded file handed to the store at a time: what an upload holds in memory.
_PIECE = 1 << 20


def zip_stream(archive: Archive, instances: Iterable[Record]) -> Iterator[bytes]:
    """A ZIP of the instances as ``export`` writes them, made as it is sent: members stored
    (DICOM's pixel data rarely deflates well), sizes in data descriptors."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for instance in instances:
            manifest = instance.instance_manifest()
            info = zipfile.ZipInfo(str(archive.export_path(instance)), _zip_time(instance))
            info.file_size = instance.size
            with zf.open(info, "w") as member:
                for chunk in checked_chunks(archive, manifest, instance.key):
                    member.write(chunk)
                    yield sink.take()
            yield sink.take()
    yield sink.take()


def _zip_time(instance: Record) -> tuple[int, int, int, int, int, int]:
    try:
        received = datetime.fromisoformat(instance.received_at.rstrip("Z"))
    except ValueError:
        return (1980, 1, 1, 0, 0, 0)
    return received.timetuple()[:6]


def _filename(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", value) or "_"


class Rest:
    """The REST routes over an open archive and the settings' [dicom] and [modalities]."""

    def __init__(self, archive: Archive, settings: Settings) -> None:
        self.archive = archive
        self.settings = settings
        self.policy = AccessPolicy(settings["dicom"], settings["modalities"])

    def routes(self) -> list[Route]:
        routes = []
        for plural, level in PLURALS.items():
            one = f"/{plural}/{{{UNIQUE[level]}}}"
            routes += [
                Route(f"/{plural}", _bound(self.list_records, level), methods=["GET"]),
                Route(one, _bound(self.get_record, level), methods=["GET"]),
                Route(one, _bound(self.delete_record, level), methods=["DELETE"]),
            ]
            child = level.child
            if child is None:  # an instance has nothing below it
                continue
            routes.append(Route(f"{one}/{_PLURAL_OF[child]}", _bound(self.children, level)))
            if child is not Level.IMAGE:
                routes.append(Route(f"{one}/instances", _bound(self.instances, level)))
            routes.append(Route(f"{one}/archive", _bound(self.download, level)))
        return [
            *routes,
            Route("/instances", self.upload, methods=["POST"]),
            Route("/instances/{SOPInstanceUID}/file", self.file),
            Route("/instances/{SOPInstanceUID}/tags", self.tags),
            Route("/instances/{SOPInstanceUID}/preview", self.preview),
            Route("/tools/lookup", self.lookup, methods=["GET", "POST"]),
            Route("/tools/repack", self.repack, methods=["POST"]),
            Route("/statistics", self.statistics),
            Route("/modalities", self.modalities),
            Route("/modalities/{name}/echo", self.echo, methods=["POST"]),
            Route("/modalities/{name}/store", self.store, methods=["POST"]),
            Route("/modalities/{name}/query", self.query, methods=["POST"]),
            Route("/modalities/{name}/move", self.move, methods=["POST"]),
        ]

    # Resources ----------------------------------------------------------------------------

    def _record(self, request: Request, level: Level) -> Record:
        """The record the path names; 404 when there is none."""
        key = request.path_params[UNIQUE[level]]
        if level is Level.PATIENT:
            return self._patient(key, request)
        record = self.archive.record(level, key)
        if record is None:
            raise HTTPException(404, f"no {_words(level)['level']} {key}")
        return record

    def _patient(self, patient_id: str, request: Request) -> Record:
        """A PatientID names one patient per issuer: ``IssuerOfPatientID`` picks one."""
        params = request.query_params
        if "IssuerOfPatientID" in params:
            tags = {"PatientID": patient_id, "IssuerOfPatientID": params["IssuerOfPatientID"]}
            found = self.archive.record(Level.PATIENT, patient_key(tags))
            candidates = [found] if found else []
        else:
            candidates = [
                r
                for r in self.archive.resolve(patient_id)
                if r.level is Level.PATIENT and r.tags.get("PatientID", "") == patient_id
            ]
        if not candidates:
            raise HTTPException(404, f"no patient {patient_id}")
        if len(candidates) > 1:
            issuers = ", ".join(repr(r.tags.get("IssuerOfPatientID", "")) for r in candidates)
            raise HTTPException(
                409,
                f"PatientID {patient_id} names {len(candidates)} patients (issuers {issuers}): "
                "add ?IssuerOfPatientID=",
            )
        return candidates[0]

    def _json(self, record: Record) -> dict[str, Any]:
        """A record as ``ls --json`` prints it; a study's also has its patient's tags, which
        a list of studies is shown with."""
        found = record.to_json()
        if record.level is Level.STUDY:
            patient = self.archive.parent(record)
            found["patient"] = patient.tags if patient else {}
        return found

    async def list_records(self, request: Request, level: Level) -> Response:
        """The {levels} that match the query parameters, as `dicomvault ls {levels}`.
        ---
        description: >-
          Any indexed attribute (a keyword or (gggg,eeee)) is a C-FIND matching key: wildcards
          (`SMITH*`), ranges (`20200101-20201231`), lists of UIDs (`1.2\\1.3`).
        parameters:
          - {{name: limit, in: query, schema: {{type: integer, minimum: 0}}}}
          - {{name: offset, in: query, schema: {{type: integer, minimum: 0}}}}
        responses:
          200: {{description: "[record]: level, key, parent, tags, counts, size, received_at;
            a study's patient: its patient's tags"}}
          400: {{description: "An unknown attribute, or a bad limit or offset"}}
        """
        filters, limit, offset = _list_parameters(request)
        found = await asyncio.to_thread(
            lambda: [
                self._json(r)
                for r in self.archive.records(level, filters, limit=limit, offset=offset)
            ]
        )
        return JSONResponse(found)

    async def get_record(self, request: Request, level: Level) -> Response:
        """The {level} with this {key}: its tags, counts, size and children.
        ---
        responses:
          200: {{description: "The record, with `children`: the keys of the level below"}}
          404: {{description: No such {level}}}
          409: {{description: The PatientID names patients of several issuers}}
        """
        record = self._record(request, level)
        found = self._json(record)
        if level is not Level.IMAGE:
            found["children"] = [c.key for c in self.archive.children(record)]
        return JSONResponse(found)

    async def delete_record(self, request: Request, level: Level) -> Response:
        """Deletes the {level} with what it holds (`dicomvault gc` reclaims the space).
        ---
        responses:
          200: {{description: "deleted: the number of instances; size: their bytes"}}
          404: {{description: No such {level}}}
        """
        record = self._record(request, level)
        removed = await asyncio.to_thread(self.archive.delete, record)
        return JSONResponse({"deleted": len(removed), "size": sum(r.size for r in removed)})

    async def children(self, request: Request, level: Level) -> Response:
        """The {level}'s {children}.
        ---
        responses:
          200: {{description: "[record]"}}
          404: {{description: No such {level}}}
        """
        record = self._record(request, level)
        found = await asyncio.to_thread(
            lambda: [self._json(r) for r in self.archive.children(record)]
        )
        return JSONResponse(found)

    async def instances(self, request: Request, level: Level) -> Response:
        """Every instance under the {level}.
        ---
        responses:
          200: {{description: "[record]"}}
          404: {{description: No such {level}}}
        """
        record = self._record(request, level)
        found = await asyncio.to_thread(lambda: list(self.archive.instances([record])))
        return JSONResponse([r.to_json() for r in found])

    async def download(self, request: Request, level: Level) -> Response:
        """A ZIP of every instance under the {level}, streamed: study/series/instance.dcm
        members byte-identical to `dicomvault export`.
        ---
        responses:
          200:
            description: The ZIP archive
            content: {{application/zip: {{schema: {{type: string, format: binary}}}}}}
          404: {{description: No such {level}}}
        """
        record = self._record(request, level)
        found = await asyncio.to_thread(lambda: list(self.archive.instances([record])))
        if found and found[0].manifest is not None:
            await check(self.archive, found[0].manifest)  # the common case of one: a 500
        name = _filename(record.tags.get(UNIQUE[level]) or record.key)
        return StreamingResponse(
            iterate_in_thread(zip_stream(self.archive, found)),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{name}.zip"'},
        )

    # Instances ----------------------------------------------------------------------------

    async def file(self, request: Request) -> Response:
        """The instance's Part 10 file, byte for byte as it was received.
        ---
        responses:
          200:
            description: The file
            content: {application/dicom: {schema: {type: string, format: binary}}}
          404: {description: No such instance}
        """
        record = self._record(request, Level.IMAGE)
        manifest = record.instance_manifest()
        await check(self.archive, manifest)
        return StreamingResponse(
            iterate_in_thread(iter(self.archive.chunks(manifest))),
            media_type="application/dicom",
            headers={
                "Content-Length": str(record.size),
                "Content-Disposition": f'attachment; filename="{_filename(record.key)}.dcm"',
            },
        )

    async def tags(self, request: Request) -> Response:
        """The instance's whole data set (File Meta first), as `dicomvault show` decodes it.
        ---
        responses:
          200: {description: "[{tag, keyword, vr, value}]; sequences have items instead"}
          404: {description: No such instance}
        """
        record = self._record(request, Level.IMAGE)
        ds = await asyncio.to_thread(self.archive.dataset, record)
        return JSONResponse([*elements(ds.file_meta), *elements(ds)])

    async def preview(self, request: Request) -> Response:
        """One frame of the instance as PNG, windowed for display.
        ---
        parameters:
          - {name: frame, in: query, schema: {type: integer, minimum: 1, default: 1}}
        responses:
          200:
            description: The frame
            content: {image/png: {schema: {type: string, format: binary}}}
          400: {description: frame is not a number}
          404: {description: "No such instance, or no such frame"}
          415: {description: "Not an image, or pixel data that cannot be decoded"}
        """
        record = self._record(request, Level.IMAGE)
        try:
            frame = int(request.query_params.get("frame", "1"))
        except ValueError as e:
            raise HTTPException(400, "frame must be a number, from 1") from e
        if frame < 1:
            raise HTTPException(400, "frame must be a number, from 1")
        rendering = render.Rendering(media_type=render.PNG)
        try:
            png = await asyncio.to_thread(
                render.rendered_frame, self.archive, record, frame, rendering
            )
        except FileNotFoundError as e:
            raise HTTPException(404, str(e)) from e
        except render.CannotRender as e:
            raise HTTPException(415, str(e)) from e
        return Response(png, media_type=render.PNG)

    async def upload(self, request: Request) -> Response:
        """Stores DICOM Part 10 files: the body is one file, or multipart/form-data has files.
        ---
        description: >-
          Files go through the same group commit as C-STORE and STOW-RS; each is reported
          once it is durable.
        requestBody:
          content:
            application/dicom: {schema: {type: string, format: binary}}
            multipart/form-data:
              schema:
                type: object
                properties: {files: {type: array, items: {type: string, format: binary}}}
        responses:
          200: {description: "results: [{name, status (stored, duplicate, different,
            replaced, rejected, not-dicom, failed), SOPInstanceUID, size, reason}]"}
          400: {description: "Nothing was stored: error says why, results per file"}
          507: {description: "Nothing was stored: the archive has no room left"}
        """
        source = request_source(request, "REST")
        queued: list[tuple[str, tuple[IngestOutcome, Pending[CommitOutcome] | None]]] = []
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            try:
                # Files are spooled to disk by the parser, then read a piece at a time.
                async with request.form(max_files=10000) as form:
                    for field, value in form.multi_items():
                        if isinstance(value, UploadFile) and value.size:
                            name = value.filename or field
                            pieces = iter(partial(value.file.read, _PIECE), b"")
                            queued.append(
                                (
                                    name,
                                    await asyncio.to_thread(
                                        self.archive.ingest_chunks, pieces, source, name
                                    ),
                                )
                            )
            except HTTPException:
                raise
            except Exception as e:  # python-multipart's parse errors
                raise HTTPException(400, f"unreadable multipart/form-data: {e}") from e
        else:
            body, received = await consume(
                request, lambda pieces: self.archive.ingest_chunks(pieces, source, "body")
            )
            if received:
                queued.append(("body", body))
        if not queued:
            raise HTTPException(400, "no file in the request")
        outcomes = await asyncio.to_thread(lambda: [final(*q) for _, q in queued])
        results = [_outcome(name, o) for (name, _), o in zip(queued, outcomes, strict=True)]
        if all(o.key is None for o in outcomes):
            reason = outcomes[0].reason or outcomes[0].status
            # 507 when the archive could not store them, 400 when they were not instances.
            status = 507 if any(o.status == "failed" for o in outcomes) else 400
            return JSONResponse(
                {"error": f"{queued[0][0]}: {reason}", "results": results}, status_code=status
            )
        return JSONResponse({"results": results})

    # Tools --------------------------------------------------------------------------------

    async def lookup(self, request: Request) -> Response:
        """Which records a PatientID, AccessionNumber or UID names, as `dicomvault lookup`.
        ---
        description: The value is the POST body, or the `value` query parameter of a GET.
        parameters:
          - {name: value, in: query, schema: {type: string}}
        requestBody:
          content: {text/plain: {schema: {type: string}}}
        responses:
          200: {description: "[record], at every level"}
          400: {description: No value}
        """
        if request.method == "POST":
            value = (await request.body()).decode("utf-8", "replace").strip()
        else:
            value = request.query_params.get("value", "")
        if not value:
            raise HTTPException(400, "give the value to look up")
        found = await asyncio.to_thread(self.archive.resolve, value)
        return JSONResponse([r.to_json() for r in found])

    async def repack(self, request: Request) -> Response:
        """Rewrites every pack with its blobs stored anew, then verifies them, as `dicomvault
        migrate repack` (which asks the running server the same).
        ---
        requestBody:
          content:
            application/json:
              schema:
                type: object
                properties:
                  compression: {type: string, enum: [none, zstd], default: zstd}
                  level: {type: integer, default: 3}
        responses:
          200: {description: "The repack's report: packs, bytes before and after, verified"}
          400: {description: A bad compression or level}
        """
        body = await self._body(request)
        body = body if isinstance(body, dict) else {}
        try:
            compression, level = str(body.get("compression", "zstd")), int(body.get("level", 3))
            report = await asyncio.to_thread(self.archive.repack, compression, level)
        except ValueError as e:
            raise HTTPException(400, str(e)) from e
        return JSONResponse(report)

    async def statistics(self, request: Request) -> Response:
        """Counts, sizes and storage use, as `dicomvault stats --json`.
        ---
        responses:
          200: {description: "patients, studies, series, instances, size, packs, pack_bytes..."}
        """
        return JSONResponse(await asyncio.to_thread(self.archive.stats))

    # Modalities ---------------------------------------------------------------------------

    def _modality(self, request: Request) -> Modality:
        name = request.path_params["name"]
        modality = self.policy.modalities.get(name)
        if modality is None:
            raise HTTPException(404, f"no modality {name!r} in [modalities]")
        return modality

    async def _body(self, request: Request) -> Any:
        try:
            return json.loads(await request.body() or b"null")
        except ValueError as e:
            raise HTTPException(400, f"the body is not JSON: {e}") from e

    async def _scu(self, call: Callable[[], Any]) -> Any:
        """Runs an SCU call off the event loop; a peer that fails it is a 502."""
        try:
            return await asyncio.to_thread(call)
        except ScuError as e:
            raise HTTPException(502, str(e)) from e

    async def _query(self, request: Request) -> tuple[Modality, Level, dict[str, str], Any]:
        """The modality, QueryRetrieveLevel and keys a query or move names, and its body."""
        modality = self._modality(request)
        body = await self._body(request)
        if not isinstance(body, dict):
            raise HTTPException(400, 'expected {"Level": ..., "Query": {...}}')
        level_name = str(body.get("Level", "STUDY")).upper()
        try:
            level = Level("IMAGE" if level_name == "INSTANCE" else level_name)
        except ValueError as e:
            raise HTTPException(400, "Level must be PATIENT, STUDY, SERIES or IMAGE") from e
        query = body.get("Query", {})
        if not isinstance(query, dict):
            raise HTTPException(400, "Query must be an object: keyword -> value")
        try:
            keys = {keyword_named(str(k)): str(v) for k, v in query.items()}
        except ValueError as e:
            raise HTTPException(400, str(e)) from e
        return modality, level, keys, body

    async def modalities(self, request: Request) -> Response:
        """The configured [modalities].
        ---
        responses:
          200: {description: "[{name, aet, host, port, allow}]"}
        """
        return JSONResponse(
            [
                {"name": m.name, "aet": m.aet, "host": m.host, "port": m.port}
                | {"allow": sorted(m.allow)}
                for m in self.policy.modalities.values()
            ]
        )

    async def echo(self, request: Request) -> Response:
        """C-ECHO the modality.
        ---
        responses:
          200: {description: "ok, status"}
          404: {description: No such modality}
          502: {description: The modality could not be reached or refused}
        """
        modality = self._modality(request)
        status = await self._scu(lambda: Scu(self.settings).echo(modality))
        return JSONResponse({"ok": status == SUCCESS, "status": describe(status)})

    async def store(self, request: Request) -> Response:
        """C-STORE archived instances to the modality, as `dicomvault send --to`.
        ---
        requestBody:
          description: 'UIDs or PatientIDs at any level: ["1.2.3"], "1.2.3" or
            {"Resources": ["1.2.3"]}'
          content: {application/json: {schema: {}}}
        responses:
          200: {description: "sent, instances, failed: [{SOPInstanceUID, status}]"}
          400: {description: No resources named}
          404: {description: "No such modality, or a resource not in the archive"}
          502: {description: The modality could not be reached or refused}
        """
        modality = self._modality(request)
        body = await self._body(request)
        resources = body.get("Resources") if isinstance(body, dict) else body
        resources = [resources] if isinstance(resources, str) else resources
        if not resources or not all(isinstance(r, str) for r in resources):
            raise HTTPException(400, 'name the resources: ["1.2.3", ...]')
        try:
            records = await asyncio.to_thread(self.archive.resolve_all, resources)
        except LookupError as e:
            raise HTTPException(404, f"{e.args[0]!r} is not in the archive") from e

        def send() -> list[tuple[str, int]]:
            outgoing = [stored_instance(self.archive, r) for r in self.archive.instances(records)]
            return Scu(self.settings).send(modality, outgoing)

        results = await self._scu(send)
        failed = [{"SOPInstanceUID": u, "status": describe(s)} for u, s in results if s != SUCCESS]
        return JSONResponse(
            {"sent": len(results) - len(failed), "instances": len(results), "failed": failed}
        )

    async def query(self, request: Request) -> Response:
        """C-FIND the modality, as `dicomvault find --json`.
        ---
        requestBody:
          description: 'QueryRetrieveLevel and keys: {"Level": "STUDY", "Query":
            {"PatientName": "SMITH*", "StudyDate": ""}}; an empty value is a return key'
          content: {application/json: {schema: {type: object}}}
        responses:
          200: {description: "[answer] in the DICOM JSON model"}
          400: {description: A bad level or key}
          404: {description: No such modality}
          502: {description: "The modality could not be reached, refused or failed the query"}
        """
        modality, level, keys, _ = await self._query(request)
        answers = await self._scu(lambda: list(Scu(self.settings).find(modality, level, keys)))
        return JSONResponse([ds.to_json_dict() for ds in answers])

    async def move(self, request: Request) -> Response:
        """C-MOVE from the modality to an AE (this archive by default), as `dicomvault move`.
        ---
        requestBody:
          description: '{"Level": "STUDY", "Query": {"StudyInstanceUID": "1.2.3"},
            "TargetAet": "DICOMVAULT"}'
          content: {application/json: {schema: {type: object}}}
        responses:
          200: {description: "ok, status, completed, failed, warning, failed_uids"}
          400: {description: A bad level or key}
          404: {description: No such modality}
          502: {description: The move failed (the result says how far it got)}
        """
        modality, level, keys, body = await self._query(request)
        destination = str(body.get("TargetAet") or self.settings["dicom"]["aet"])
        if destination != self.settings["dicom"]["aet"]:
            require(request, Role.ADMIN)  # a move elsewhere sends data away
        result = await self._scu(
            lambda: Scu(self.settings).move(modality, destination, level, keys)
        )
        return JSONResponse(_retrieve_result(result), status_code=200 if result.ok else 502)
