"""The DICOMweb tests' server: ``dicomvault serve`` with HTTP, holding the clinical corpus,
one per test module and backend (the embedded default, S3 and PostgreSQL)."""

from __future__ import annotations

import pytest

from dicomvault.bench.corpus import clinical_corpus
from dicomvault.bench.peers import free_port
from tests.conftest import BACKENDS, backend_sections
from tests.net.conftest import Server, store_corpus

QR = "WORKSTATION"


@pytest.fixture(scope="module", params=BACKENDS)
def served(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dicomweb")
    http_port = free_port()
    server = Server(
        tmp,
        {"WORKSTATION": {"aet": QR, "host": "127.0.0.1", "port": 1}},
        sections={
            "http": {"enabled": True, "host": "127.0.0.1", "port": http_port},
            **backend_sections(request),
        },
    ).start()
    corpus = clinical_corpus(tmp / "corpus")
    store_corpus(server, corpus)
    url = f"http://127.0.0.1:{http_port}/dicom-web"
    yield server, corpus, url
    assert server.stop() == 0
