"""The control socket of a running ``dicomvault serve``: ``<root>/control.sock``.

``serve`` holds its archive, so work that rewrites the archive's packs (``migrate repack``) is
asked of it through this Unix socket and run inside it, while it goes on serving. A request
is one JSON line, ``{"command": NAME, **arguments}``; the answer is JSON lines,
``{"progress": {...}}`` as the work goes on and then ``{"result": ...}`` or ``{"error": TEXT}``.
Whoever may open the socket may ask: it lives in the archive's root, under its permissions.
"""

from __future__ import annotations

import json
import logging
import socket
import socketserver
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dicomvault.store import Archive
from dicomvault.store.maintenance import PackRewritten, RepackReport

log = logging.getLogger("dicomvault.control")

SOCKET_NAME = "control.sock"

Progress = Callable[[dict[str, Any]], None]


def _repack(archive: Archive, arguments: dict[str, Any], progress: Progress) -> RepackReport:
    def rewritten(event: PackRewritten) -> None:
        progress(asdict(event))

    return archive.repack(str(arguments["compression"]), int(arguments["level"]), rewritten)


# Each command's result is sent as JSON.
COMMANDS: dict[str, Callable[[Archive, dict[str, Any], Progress], Mapping[str, object]]] = {
    "repack": _repack
}


class ControlError(Exception):
    """The server refused or failed the request."""


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        try:
            request = json.loads(self.rfile.readline())
            command = COMMANDS[request.pop("command")]
        except (ValueError, KeyError, AttributeError, TypeError) as e:
            self._send({"error": f"not a control request: {e}"})
            return
        log.info("control: %s", request)
        try:
            result = command(self.server.archive, request, lambda p: self._send({"progress": p}))
        except (OSError, ValueError, KeyError) as e:
            log.error("control request %s failed: %s", request, e)
            self._send({"error": str(e)})
            return
        self._send({"result": result})

    def _send(self, message: dict) -> None:
        try:
            self.wfile.write(json.dumps(message).encode() + b"\n")
            self.wfile.flush()
        except OSError:  # the client went away; the work it asked for still completes
            pass


class _Server(socketserver.ThreadingUnixStreamServer):
    # Stopping waits for requests in progress: the archive closes only once they are done.
    block_on_close = True

    def __init__(self, path: Path, archive: Archive) -> None:
        self.archive = archive
        super().__init__(str(path), _Handler)


class ControlServer:
    """Serves ``<root>/control.sock`` for an archive ``serve`` holds."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.path = archive.root / SOCKET_NAME
        self._server: _Server | None = None

    def start(self) -> None:
        """Listens, unless another live server answers on the socket or it cannot be made
        (a root path too long for a Unix socket, say): then `migrate repack` cannot reach
        this server, and says the archive is in use."""
        if (other := _connect(self.path)) is not None:
            other.close()
            log.warning("%s answers for another process: no control socket here", self.path)
            return
        self.path.unlink(missing_ok=True)  # left by a server that was killed
        try:
            self._server = _Server(self.path, self.archive)
        except OSError as e:
            log.warning("no control socket at %s: %s", self.path, e)
            return
        threading.Thread(target=self._server.serve_forever, name="control", daemon=True).start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self.path.unlink(missing_ok=True)
        self._server = None


def _connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:  # no socket, or nobody listening on it
        sock.close()
        return None
    return sock


def request(root: Path, command: str, progress: Progress, **arguments: object) -> Any:
    """Runs ``command`` in the ``serve`` holding the archive at ``root``, handing its progress
    to ``progress``; returns its result as JSON decoded (what ``COMMANDS`` return), or None
    when no server listens there."""
    sock = _connect(root / SOCKET_NAME)
    if sock is None:
        return None
    with sock, sock.makefile("rwb") as stream:
        stream.write(json.dumps({"command": command, **arguments}).encode() + b"\n")
        stream.flush()
        for line in stream:
            message = json.loads(line)
            if "progress" in message:
                progress(message["progress"])
            elif "error" in message:
                raise ControlError(message["error"])
            else:
                return message["result"]
    raise ControlError("the server closed the connection before answering")
