"""DICOM TLS on the listener's TLS port (PS3.15 B.9, BCP 195; issue 14): DCMTK's SCUs with
+tls (C-ECHO, C-STORE, C-FIND, C-GET, and C-MOVE whose sub-association goes back over TLS)
beside the plain port; clients with an untrusted, an expired or no certificate, plaintext
and a silent connection are refused, logged with the peer's address and the reason, and the
listener keeps serving; Orthanc with DICOM TLS as a peer both ways."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from dicomvault.bench.corpus import ct_corpus
from dicomvault.bench.peers import free_port, wait_for_port
from dicomvault.bench.synthetic import commit_all
from dicomvault.index import LmdbIndex
from tests.net.conftest import DCMTK, PEER_ENV, Orthanc, Server, dcmtk, movescu
from tests.net.test_robustness import associate_rq
from tests.security.helpers import certificates

QR = "WORKSTATION"


class TlsSetup:
    """A CA with certificates for the archive, a modality and an expired one, and a stranger
    signed by another CA."""

    def __init__(self, directory: Path) -> None:
        self.ca, issued = certificates(
            directory, "dicomvault", "modality", "expired", expired=("expired",)
        )
        self.server_cert, self.server_key = issued["dicomvault"]
        self.modality = issued["modality"]
        self.expired = issued["expired"]
        other = directory / "other-ca"
        other.mkdir()
        _, strangers = certificates(other, "stranger")
        self.stranger = strangers["stranger"]

    def dicom_section(self, tls_port: int, **more: object) -> dict[str, object]:
        return {
            "tls_port": tls_port,
            "tls_certificate": str(self.server_cert),
            "tls_private_key": str(self.server_key),
            "tls_ca": str(self.ca),
            **more,
        }

    def client(self, identity: tuple[Path, Path] | None) -> list[object]:
        """DCMTK's TLS options: with ``identity``'s certificate, or anonymous; the server's
        certificate verified against the CA either way."""
        if identity is None:
            return ["+tla", "+cf", self.ca]
        cert, key = identity
        return ["+tls", key, cert, "+cf", self.ca]


@pytest.fixture
def tls(tmp_path) -> TlsSetup:
    return TlsSetup(tmp_path)


def tls_server(
    tmp_path: Path, tls: TlsSetup, modalities: dict, port: int = 0, **dicom: object
) -> Server:
    port = port or free_port()
    server = Server(tmp_path, modalities, sections={"dicom": tls.dicom_section(port, **dicom)})
    server.tls_port = port
    return server.start()


def echo(server: Server, port: object, *options: object, check: bool = True):
    return dcmtk(
        "echoscu", "-aet", QR, "-aec", server.aet, *options, "127.0.0.1", port, check=check,
        timeout=60,
    )  # fmt: skip


@pytest.fixture
def tls_storescp(tmp_path, tls):
    """DCMTK's storescp +tls, requiring a certificate our CA signed (mutual TLS)."""
    port = free_port()
    out = tmp_path / "tls-received"
    out.mkdir()
    cert, key = tls.modality
    proc = subprocess.Popen(
        [
            str(DCMTK / "storescp"), "+tls", str(key), str(cert), "+cf", str(tls.ca),
            "--require-peer-cert", "-aet", "TLSSCP", "+xa", "+B", "-od", str(out), str(port),
        ],
        env=PEER_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for_port(port, proc, "storescp +tls")
    yield port, out
    proc.terminate()
    proc.wait(timeout=30)


def test_scus_over_tls_and_plain_side_by_side(tmp_path, tls, tls_storescp):
    """DCMTK 3.6.7's echoscu, storescu and findscu speak TLS (its getscu and movescu do not):
    C-GET and C-MOVE over TLS come from pynetdicom (`dicomvault get` and `move` to a modality
    with tls = true, the archive's own TLS port), the C-MOVE's sub-association going to
    storescp +tls over TLS in turn."""
    scp_port, received = tls_storescp
    tls_port = free_port()
    modalities = {
        "WORKSTATION": {"aet": QR, "host": "127.0.0.1", "port": 1},
        "SELF": {"aet": "DICOMVAULT", "host": "127.0.0.1", "port": tls_port, "tls": True},
        "TLSSCP": {"aet": "TLSSCP", "host": "127.0.0.1", "port": scp_port, "tls": True},
    }
    server = tls_server(tmp_path, tls, modalities, port=tls_port)
    client = tls.client(tls.modality)
    try:
        echo(server, server.tls_port, *client)
        echo(server, server.port)  # the plain port still answers
        corpus = ct_corpus(tmp_path / "ct", 3, rows=64, columns=64)
        uids = {g.sop_instance_uid for g in corpus}
        dcmtk(
            "storescu", "-aet", QR, "-aec", server.aet, *client, "127.0.0.1", server.tls_port,
            *[g.path for g in corpus],
        )  # fmt: skip
        assert {i["key"] for i in server.cli.ls("instances")} == uids
        found = tmp_path / "found"
        found.mkdir()
        dcmtk(
            "findscu", "-aet", QR, "-aec", server.aet, *client, "-S", "-X", "-od", found,
            "-k", "QueryRetrieveLevel=IMAGE", "-k", "SOPInstanceUID",
            "127.0.0.1", server.tls_port,
        )  # fmt: skip
        assert {pydicom.dcmread(p).SOPInstanceUID for p in found.glob("rsp*.dcm")} == uids
        study = f"StudyInstanceUID={corpus[0].study_instance_uid}"
        got = tmp_path / "got"
        server.run("get", "SELF", "-k", study, "--out", got)
        assert {pydicom.dcmread(p).SOPInstanceUID for p in got.rglob("*") if p.is_file()} == uids
        server.run("move", "SELF", "--dest", "TLSSCP", "-k", study)
        assert {pydicom.dcmread(p).SOPInstanceUID for p in received.iterdir()} == uids
        assert server.logged(f"C-STORE from {QR}@127.0.0.1: status 0x0000")
        assert server.logged("C-GET from DICOMVAULT@127.0.0.1: status 0x0000")
        assert server.logged("C-MOVE from DICOMVAULT@127.0.0.1: status 0x0000")
    finally:
        assert server.stop() == 0


def test_refused_clients_are_logged_and_the_listener_keeps_serving(tmp_path, tls):
    server = tls_server(tmp_path, tls, {}, association_timeout_s=2)
    try:
        # PS3.15 B.9: the peer's certificate must chain to a trusted CA and be valid now; one
        # is required (tls_require_client_certificate, the default).
        for identity, reason in (
            (tls.stranger, "failed: invalid peer certificate: BadSignature"),
            (tls.expired, "failed: invalid peer certificate: certificate expired"),
            (None, "peer sent no certificates"),
        ):
            result = echo(server, server.tls_port, *tls.client(identity), check=False)
            assert result.returncode != 0
            assert server.logged("TLS handshake with 127.0.0.1:"), server.log
            assert server.logged(reason), server.log
            echo(server, server.tls_port, *tls.client(tls.modality))
        # Plaintext DICOM to the TLS port: refused at once, never an A-ASSOCIATE-AC.
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.tls_port), timeout=10) as s:
            s.sendall(associate_rq())
            answer = s.recv(64)
            while chunk := s.recv(64):
                answer += chunk
        assert time.monotonic() - started < 2
        assert answer[:1] != b"\x02"
        assert answer == b"" or answer[0] == 0x15  # closed, or a TLS alert record
        assert server.logged("received corrupt message"), server.log
        assert echo(server, server.tls_port, check=False).returncode != 0
        # A connection that never starts its handshake holds nothing up, and is dropped by
        # the association timeout (ARTIM, PS3.8 9.1.5).
        silent = socket.create_connection(("127.0.0.1", server.tls_port))
        echo(server, server.tls_port, *tls.client(tls.modality))
        silent.settimeout(10)
        started = time.monotonic()
        assert silent.recv(1) == b""
        assert time.monotonic() - started < 4
        silent.close()
        assert server.logged("failed: not done within the association timeout")
        assert server.alive
        echo(server, server.port)
    finally:
        assert server.stop() == 0


def test_orthanc_with_dicom_tls_both_ways(tmp_path, tls):
    """Orthanc's DICOM TLS (1.9+) stores into our TLS port with its own certificate; our
    C-MOVE sends to its TLS port over an association made with [modalities] tls = true."""
    orthanc_dir = tmp_path / "o"
    orthanc_dir.mkdir()
    server_dir = tmp_path / "s"
    server_dir.mkdir()
    orthanc_port = free_port()
    tls_port = free_port()
    orthanc = Orthanc(
        orthanc_dir,
        {"DICOMVAULT": {"AET": "DICOMVAULT", "Host": "127.0.0.1", "Port": tls_port,
                        "UseDicomTls": True}},
        dicom_port=orthanc_port,
        options={
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(tls.modality[0]),
            "DicomTlsPrivateKey": str(tls.modality[1]),
            "DicomTlsTrustedCertificates": str(tls.ca),
            "DicomTlsRemoteCertificateRequired": True,
        },
    )  # fmt: skip
    server = Server(
        server_dir,
        {
            "ORTHANC": {"aet": orthanc.aet, "host": "127.0.0.1", "port": orthanc_port,
                        "tls": True},
            "WORKSTATION": {"aet": QR, "host": "127.0.0.1", "port": 1},
        },
        sections={"dicom": tls.dicom_section(tls_port)},
    ).start()  # fmt: skip
    try:
        corpus = ct_corpus(tmp_path / "ct", 2, rows=64, columns=64)
        ids = [orthanc.rest("/instances", g.path.read_bytes())["ID"] for g in corpus]
        job = orthanc.rest("/modalities/DICOMVAULT/store", {"Resources": ids, "Synchronous": True})
        assert job["FailedInstancesCount"] == 0, job
        assert {i["key"] for i in server.cli.ls("instances")} == {
            g.sop_instance_uid for g in corpus
        }
        assert server.logged(f"association from {orthanc.aet}@127.0.0.1 accepted")
        orthanc.rest(f"/instances/{ids[0]}", method="DELETE")
        orthanc.rest(f"/instances/{ids[1]}", method="DELETE")
        assert orthanc.rest("/instances") == []
        movescu(
            server,
            QR,
            "ORTHANC",
            {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": corpus[0].study_instance_uid},
        )
        stored = {orthanc.rest(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"]
                  for i in orthanc.rest("/instances")}  # fmt: skip
        assert stored == {g.sop_instance_uid for g in corpus}
    finally:
        assert server.stop() == 0
        orthanc.stop()


def test_serve_refuses_tls_it_cannot_use(tmp_path, tls):
    """Never a TLS port silently without TLS: serve exits 2 saying what is wrong."""
    cases = (
        ({"tls_port": free_port()}, "tls_port needs tls_certificate and tls_private_key"),
        ({"tls_ca": ""}, "tls_require_client_certificate needs tls_ca"),
        ({"tls_certificate": str(tmp_path / "missing.pem")}, "missing.pem"),
        ({"tls_private_key": str(tls.ca)}, "TLS: "),
    )
    for i, (change, message) in enumerate(cases):
        workdir = tmp_path / str(i)
        workdir.mkdir()
        dicom = change if "tls_port" in change else {**tls.dicom_section(free_port()), **change}
        server = Server(workdir, {}, sections={"dicom": dicom})
        result = subprocess.run(
            [sys.executable, "-m", "dicomvault", "serve", "--config", str(server.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        assert message in result.stderr


def test_c_cancel_stops_a_c_find_over_tls(tmp_path, tls):
    """The C-CANCEL-RQ arrives encrypted while the responses go out (PS3.7 9.3.2.3): it is
    seen in what rustls has decrypted or what waits on the socket, and the responses stop
    with status Cancel, as on the plain port (test_robustness)."""
    port = free_port()
    workstation = {"WORKSTATION": {"aet": QR, "host": "127.0.0.1", "port": 1}}
    server = Server(tmp_path, workstation, sections={"dicom": tls.dicom_section(port)})
    with LmdbIndex(server.root / "index", sync=False) as index:
        commit_all(index, 0, 20_000, batch=5_000)
    server.tls_port = port
    server.start()
    try:
        result = dcmtk(
            "findscu", "-v", "--cancel", "2", "-aet", QR, "-aec", server.aet,
            *tls.client(tls.modality), "-S", "-k", "QueryRetrieveLevel=IMAGE",
            "-k", "SOPInstanceUID", "127.0.0.1", server.tls_port,
        )  # fmt: skip
        assert "Received Final Find Response (Cancel" in result.stderr
        pending = len(re.findall(r"Find Response: \d+ \(Pending\)", result.stderr))
        assert 2 <= pending < 20_000
        assert server.logged(f"C-FIND from {QR}@127.0.0.1: status 0xFE00")
    finally:
        assert server.stop() == 0
