"""The HTTP server of ``dicomvault serve`` ([http] enabled): uvicorn in a thread beside the
DICOM listener, started and stopped with it, serving ``app.application`` (HTTPS when [http]
tls_certificate and tls_private_key are set)."""

from __future__ import annotations

import threading
import time

import uvicorn

from dicomvault.config import Settings
from dicomvault.http.app import application
from dicomvault.security.tls import CIPHERS
from dicomvault.store import Archive


class HttpServer:
    def __init__(self, archive: Archive, settings: Settings) -> None:
        http = settings["http"]
        self.host, self.port = str(http["host"]), int(http["port"])
        self.tls = bool(http["tls_certificate"])
        app = application(archive, settings)
        config = uvicorn.Config(
            app,
            host=self.host,
            port=self.port,
            log_level="warning",
            lifespan="off",
            # uvicorn's loggers go to the process's sink, which escapes what peers send.
            log_config=None,
            ssl_certfile=str(http["tls_certificate"]) or None,
            ssl_keyfile=str(http["tls_private_key"]) or None,
            ssl_ciphers=CIPHERS,
            h11_max_incomplete_event_size=int(http["max_header_kb"]) << 10,
            # The peer's address is the connection's: uvicorn would otherwise take
            # X-Forwarded-For from any local process, which could then forge the address
            # the audit trail records and the failed-login count goes by.
            proxy_headers=False,
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
