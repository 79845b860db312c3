"""DICOM TLS on the associations the archive opens (PS3.15 B.9): to a [modalities] entry with
tls = true, `dicomvault echo` and `send` and the server's C-MOVE sub-associations go over TLS
to DCMTK's storescp +tls (which verifies our certificate, mutual TLS); the same peer named
without tls is not reached."""

from __future__ import annotations

import subprocess

import pydicom
import pytest

from dicomvault.bench.corpus import small_corpus
from dicomvault.bench.peers import free_port, wait_for_port
from tests.net.conftest import DCMTK, PEER_ENV, Server, movescu
from tests.security.helpers import certificates

QR = "WORKSTATION"


@pytest.fixture
def tls_peer(tmp_path):
    ca, issued = certificates(tmp_path, "storescp", "dicomvault")
    cert, key = issued["storescp"]
    port = free_port()
    out = tmp_path / "received"
    out.mkdir()
    proc = subprocess.Popen(
        [
            str(DCMTK / "storescp"),
            "+tls", str(key), str(cert),
            "+cf", str(ca),
            "--require-peer-cert",
            "-aet", "TLSSCP", "+xa", "+B", "-od", str(out), str(port),
        ],
        env=PEER_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for_port(port, proc, "storescp +tls")
    yield port, out, ca, issued["dicomvault"]
    proc.terminate()
    proc.wait(timeout=30)


def test_scu_verbs_and_c_move_use_tls_to_a_tls_modality(tmp_path, tls_peer):
    port, out, ca, (cert, key) = tls_peer
    peer = {"aet": "TLSSCP", "host": "127.0.0.1", "port": port}
    server = Server(
        tmp_path,
        {
            "TLSSCP": peer | {"tls": True},
            "PLAIN": peer,
            "WORKSTATION": {"aet": QR, "host": "127.0.0.1", "port": 1},
        },
        sections={
            "dicom": {
                "tls_ca": str(ca),
                "tls_certificate": str(cert),
                "tls_private_key": str(key),
            }
        },
    )
    server.start()
    try:
        assert "Success" in server.run("echo", "TLSSCP").stdout
        assert server.run("echo", "PLAIN", check=False).returncode != 0
        first, second = small_corpus(tmp_path / "corpus", 2, seed=21)
        server.run("import", first.path, second.path)
        server.run("send", first.sop_instance_uid, "--to", "TLSSCP")
        movescu(
            server, QR, "TLSSCP",
            {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": second.study_instance_uid,
             "SeriesInstanceUID": second.series_instance_uid,
             "SOPInstanceUID": second.sop_instance_uid},
        )  # fmt: skip
        received = {pydicom.dcmread(p).SOPInstanceUID for p in out.iterdir()}
        assert received == {first.sop_instance_uid, second.sop_instance_uid}
    finally:
        assert server.stop() == 0
