"""GET /metrics in Prometheus text format: the archive's counts and pack usage, what this
process ingested (every path: C-STORE, STOW-RS, uploads) and its commit latency, and the HTTP
requests per route with their latency, which the ``RequestMetrics`` middleware measures."""

from __future__ import annotations

import asyncio
import time

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomvault.metrics import Counter, Histogram, family, sample
from dicomvault.store import Archive

EXPOSITION = "text/plain; version=0.0.4; charset=utf-8"
# Label values come from closed sets, whatever a client sends: any other method is "other",
# a path no route matched is "unmatched", a status is one of the server's own.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})

# The archive's figures (``Archive.stats``) as gauges: name, help.
GAUGES = {
    "patients": ("dicomvault_patients", "Patients in the index."),
    "studies": ("dicomvault_studies", "Studies in the index."),
    "series": ("dicomvault_series", "Series in the index."),
    "instances": ("dicomvault_instances", "Instances in the index."),
    "size": ("dicomvault_instance_bytes", "Bytes of the indexed instances, as received."),
    "patient_conflicts": (
        "dicomvault_patient_conflicts",
        "Instances whose patient tags disagree with their patient's.",
    ),
    "packs": ("dicomvault_packs", "Pack files."),
    "pack_bytes": ("dicomvault_pack_bytes", "Bytes in pack files (de-duplicated, with garbage)."),
    "records": ("dicomvault_pack_records", "Records in pack files."),
}


class Metrics:
    """The counters of one application and the /metrics endpoint that exposes them."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.requests = Counter(
            "dicomvault_http_requests_total",
            "HTTP requests answered, by method, route and status.",
            ["method", "route", "status"],
        )
        self.seconds = Histogram(
            "dicomvault_http_request_seconds",
            "HTTP request latency to the last byte of the response, by method and route.",
            ["method", "route"],
        )

    def middleware(self) -> Middleware:
        return Middleware(RequestMetrics, metrics=self)

    async def endpoint(self, request: Request) -> Response:
        """The archive's and the server's metrics, in Prometheus text format.
        ---
        responses:
          200:
            description: Prometheus text exposition format 0.0.4
            content: {text/plain: {schema: {type: string}}}
        """
        stats = await asyncio.to_thread(self.archive.stats)
        lines = []
        for key, (name, help_text) in GAUGES.items():
            if key in stats:
                lines += family(name, "gauge", help_text, [sample(name, stats[key])])
        for metric in (
            self.archive.ingested,
            self.archive.ingested_bytes,
            self.archive.refused,
            self.archive.commit_seconds,
            self.requests,
            self.seconds,
        ):
            lines += metric.expose()
        return PlainTextResponse("\n".join(lines) + "\n", media_type=EXPOSITION)


class RequestMetrics:
    """ASGI middleware counting and timing each request under its route's path template, so
    that a route's series stay one however many UIDs it is called with."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless the application gets as far as answering

        async def answered(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, answered)
        finally:
            # The router records the route it matched in the (shared) scope.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.requests.inc(method, route, str(status))
            self.metrics.seconds.observe(time.perf_counter() - started, method, route)
