"""The HTTP application: the REST API under /, DICOMweb under /dicom-web, /metrics,
/openapi.json, the web UI under /ui/ and its login under /auth/, with errors answered as JSON
``{"error": ...}``; every request passes the ``auth.Guard`` (host, credentials, role, CSRF),
is audited (``audit.RequestAudit``), and is refused when it would change something and a
browser sends it from another site."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomvault import _native
from dicomvault.config import Settings
from dicomvault.http.audit import RequestAudit
from dicomvault.http.auth import Authenticator, Guard, SecurityHeaders, security_headers
from dicomvault.http.body import BodyLimit
from dicomvault.http.dicomweb import DicomWeb
from dicomvault.http.metrics import Metrics
from dicomvault.http.openapi import OpenApi
from dicomvault.http.rest import Rest
from dicomvault.store import Archive
from dicomvault.store.archive import IndexUnavailable

log = logging.getLogger("dicomvault.http")

UI = Path(__file__).parent / "ui"


class SameOrigin:
    """Refuses POST, PUT and DELETE that a browser sends from a page of another origin: with
    no authentication, any web page could otherwise make a user's browser upload, delete or
    send studies away (a simple cross-site form POST needs no CORS permission). Clients that
    are not browsers send no Origin and are not concerned."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            headers = Request(scope).headers
            origin = headers.get("origin")
            if origin is not None and urlsplit(origin).netloc != headers.get("host"):
                refused = JSONResponse({"error": "cross-origin request refused"}, 403)
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _to_ui(request: Request) -> Response:
    """The web UI's address."""
    return RedirectResponse("/ui/")


async def _http_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, HTTPException):  # it is registered for HTTPException alone
        raise exc
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _damaged(request: Request, exc: Exception) -> Response:
    log.error(
        "%s %s: an instance is damaged in the archive: %s", request.method, request.url.path, exc
    )
    return JSONResponse(
        {"error": f"the instance is damaged in the archive (run dicomvault verify): {exc}"},
        status_code=500,
    )


async def _index_unavailable(request: Request, exc: Exception) -> Response:
    # An answer without what was acknowledged would be wrong: ask the client to come back.
    return JSONResponse(
        {"error": f"the index is not available: {exc}"},
        status_code=503,
        headers={"Retry-After": "5"},
    )


async def _server_error(request: Request, exc: Exception) -> Response:
    # Whatever a request raised is logged and answered; the server and the archive go on.
    log.exception("%s %s failed", request.method, request.url.path)
    return JSONResponse({"error": f"internal error: {exc}"}, status_code=500)


def application(archive: Archive, settings: Settings) -> Starlette:
    metrics = Metrics(archive)
    dicomweb = DicomWeb(archive, bool(settings["index"]["case_insensitive_pn"]))
    authenticator = Authenticator(settings, archive.audit)
    routes = [
        *Rest(archive, settings).routes(),
        *dicomweb.routes(),
        *authenticator.routes(),
        Route("/metrics", metrics.endpoint),
        Route("/openapi.json", OpenApi().endpoint),
        Route("/", _to_ui),
        Mount("/ui", StaticFiles(directory=UI, html=True), name="ui"),
    ]
    tls = bool(settings["http"]["tls_certificate"])
    return Starlette(
        routes=routes,
        middleware=[
            metrics.middleware(),
            Middleware(SecurityHeaders, headers=security_headers(tls)),
            Middleware(Guard, authenticator=authenticator, routes=routes),
            Middleware(SameOrigin),
            Middleware(BodyLimit, limit=int(settings["http"]["max_body_mb"]) << 20),
            Middleware(RequestAudit, archive=archive),
        ],
        exception_handlers={
            HTTPException: _http_error,
            _native.DamagedError: _damaged,
            IndexUnavailable: _index_unavailable,
            Exception: _server_error,
        },
    )
