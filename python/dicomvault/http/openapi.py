"""GET /openapi.json: the OpenAPI 3 document of every route, each operation read from its
endpoint's docstring (a summary, then YAML after ``---``), path parameters from the path."""

from __future__ import annotations

import inspect
import re
from typing import Any

import yaml
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute
from starlette.schemas import BaseSchemaGenerator, EndpointInfo

from dicomvault import __version__

# DICOMweb's endpoints are made per level without docstrings: what each family does.
_DICOMWEB = {
    "search": "QIDO-RS: search, results in the DICOM JSON model",
    "retrieve": "WADO-RS: the instances as multipart/related application/dicom "
    "(an instance: also as bare application/dicom)",
    "metadata": "WADO-RS: the instances' metadata in the DICOM JSON model",
    "frames": "WADO-RS: frames as multipart/related",
    "store": "STOW-RS: store instances sent as multipart/related application/dicom",
}


class OpenApi(BaseSchemaGenerator):
    def get_schema(self, routes: list[BaseRoute]) -> dict[str, Any]:
        paths: dict[str, dict[str, Any]] = {}
        for endpoint in self.get_endpoints(routes):
            paths.setdefault(endpoint.path, {})[endpoint.http_method] = self.operation(endpoint)
        return {
            "openapi": "3.0.3",
            "info": {
                "title": "dicomvault",
                "version": __version__,
                "description": "REST API, DICOMweb (PS3.18) and metrics of a dicomvault archive.",
            },
            "paths": paths,
        }

    def operation(self, endpoint: EndpointInfo) -> dict[str, Any]:
        doc = inspect.getdoc(endpoint.func) or ""
        summary, _, spec = doc.partition("\n---\n")
        operation = yaml.safe_load(spec) if spec else {}
        dicomweb = endpoint.path.startswith("/dicom-web")
        if not summary and dicomweb:
            names = endpoint.func.__qualname__.split(".")
            summary = next((s for n, s in _DICOMWEB.items() if n in names), "DICOMweb")
        operation.setdefault("summary", " ".join(summary.split()))
        operation.setdefault("tags", ["DICOMweb" if dicomweb else endpoint.path.split("/")[1]])
        operation.setdefault("responses", {"200": {"description": "OK"}})
        operation["responses"] = {str(k): v for k, v in operation["responses"].items()}
        parameters = operation.setdefault("parameters", [])
        for name in re.findall(r"{(\w+)}", endpoint.path):
            parameters.append(
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            )
        if not parameters:
            del operation["parameters"]
        words = re.sub(r"[^A-Za-z0-9]+", "_", endpoint.path).strip("_")
        operation["operationId"] = f"{endpoint.http_method}_{words or 'root'}"
        return operation

    async def endpoint(self, request: Request) -> Response:
        """This document: the OpenAPI 3 description of every route.
        ---
        responses:
          200: {description: The OpenAPI document, content: {application/json: {}}}
        """
        return JSONResponse(self.get_schema(request.app.routes))
