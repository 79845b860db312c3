"""The holes a hostile tester found, each closed: wildcard queries that backtracked for minutes
under the GIL (HTTP and C-FIND), DNS rebinding (Host never checked), log lines forged with
CR/LF in a calling AE title, and /metrics growing with made-up HTTP methods. (Unencoded UIDs
in the web UI are tested in Chromium, tests/http/test_ui_login.py.)"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from dicomvault.bench.corpus import clinical_corpus
from dicomvault.bench.peers import free_port
from tests.net.conftest import Server, dcmtk
from tests.net.test_robustness import associate_rq

QR = "WORKSTATION"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("holes")
    http_port = free_port()
    server = Server(
        tmp,
        {"WORKSTATION": {"aet": QR, "host": "127.0.0.1", "port": 1}},
        sections={
            "http": {
                "enabled": True,
                "host": "127.0.0.1",
                "port": http_port,
                "allowed_hosts": ["pacs.hospital.example"],
            }
        },
    ).start()
    corpus = clinical_corpus(tmp / "corpus")
    server.run("import", tmp / "corpus", "--quiet")
    yield server, corpus, f"http://127.0.0.1:{http_port}"
    assert server.stop() == 0


def test_wildcards_answer_at_once_whatever_the_stars(served, tmp_path):
    server, _, url = served
    stars = "*" * 5000 + "Z"
    answers: dict[str, float] = {}

    def http_query() -> None:
        started = time.perf_counter()
        response = httpx.get(f"{url}/patients", params={"PatientName": stars}, timeout=60)
        assert response.status_code == 200 and response.json() == []
        answers["http"] = time.perf_counter() - started

    def c_find() -> None:
        started = time.perf_counter()
        dcmtk(
            "findscu", "-aet", QR, "-aec", server.aet, "-S", "-k", "QueryRetrieveLevel=PATIENT",
            "-k", f"PatientName={'*' * 1000}Z", "127.0.0.1", server.port, timeout=60,
        )  # fmt: skip
        answers["c-find"] = time.perf_counter() - started

    threads = [threading.Thread(target=f) for f in (http_query, c_find)]
    for t in threads:
        t.start()
    # Meanwhile the server answers everything else.
    started = time.perf_counter()
    assert httpx.get(f"{url}/statistics", timeout=60).status_code == 200
    assert time.perf_counter() - started < 5
    for t in threads:
        t.join(timeout=60)
    assert answers["http"] < 5 and answers["c-find"] < 10, answers
    matched = httpx.get(f"{url}/patients", params={"PatientName": "*" * 100 + "jane"}).json()
    assert {p["tags"]["PatientName"] for p in matched} >= {"Smith^Jane", "Doe^Jane"}


def test_dns_rebinding_is_refused(served):
    _, corpus, url = served
    study = corpus[0].study_instance_uid
    # The tester's request: a page of rebind.evil.example whose name now points here.
    rebound = httpx.delete(
        f"{url}/studies/{study}",
        headers={
            "Host": "rebind.evil.example:8042",
            "Origin": "http://rebind.evil.example:8042",
        },
    )
    assert rebound.status_code == 400
    assert httpx.get(f"{url}/studies/{study}").status_code == 200
    # Names the server answers to: IP addresses, localhost, configured names.
    for host in ("localhost:8042", "pacs.hospital.example", "127.0.0.1"):
        assert httpx.get(f"{url}/statistics", headers={"Host": host}).status_code == 200


def test_control_characters_in_a_calling_ae_title_cannot_forge_log_lines(served):
    server, _, _ = served
    forged = b"X\r\nFORGED ERROR"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(associate_rq(server.aet, calling=forged))
        assert s.recv(1)  # A-ASSOCIATE-AC or -RJ: the listener read the title
    assert server.logged("FORGED ERROR")
    lines = server.log.splitlines()
    assert not any(line.startswith("FORGED") for line in lines)
    assert any("X\\x0d\\x0aFORGED ERROR" in line for line in lines)


def test_metrics_labels_come_from_a_closed_set(served):
    _, _, url = served
    with httpx.Client(base_url=url) as client:
        for i in range(300):
            client.request(f"MADEUP{i}", f"/no/such/path/{i}")
        metrics = client.get("/metrics").text
    series = [line for line in metrics.splitlines() if line.startswith("dicomvault_http_")]
    assert not any("MADEUP" in line or "/no/such" in line for line in series)
    assert 'method="other",route="unmatched"' in metrics
    assert len(series) < 400  # a few hundred at most, however many requests are made up
