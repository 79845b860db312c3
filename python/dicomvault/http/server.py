"""The HTTP server of ``dicomvault serve`` ([http] enabled): uvicorn in a thread beside the
DICOM listener, started and stopped with it, serving ``app.application``."""

from __future__ import annotations

import threading
import time

import uvicorn

from dicomvault.config import Settings
from dicomvault.http.app import application
from dicomvault.store import Archive


class HttpServer:
    def __init__(self, archive: Archive, settings: Settings) -> None:
        http = settings["http"]
        self.host, self.port = str(http["host"]), int(http["port"])
        app = application(archive, settings)
        config = uvicorn.Config(
            app, host=self.host, port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="http", daemon=True)

    def start(self, timeout: float = 10) -> tuple[str, int]:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"the HTTP server could not listen on {self.host}:{self.port}")
            time.sleep(0.01)
        return self.host, self.port

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
