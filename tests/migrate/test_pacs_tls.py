"""`dicomvault migrate pacs` over DICOM TLS (PS3.15 B.9; the Rust SCU's rustls client): from a
second dicomvault `serve` on its TLS port and from Orthanc with DICOM TLS, mutual TLS both
times, every instance's data set byte-identical to the source's (the File Meta is the
receiver's); a source whose certificate our CAs did not sign, a source refusing us for want
of a certificate and a plaintext port named as TLS fail at once, saying so and naming the
source, with nothing stored. `dicomvault get` takes the same SCU."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from dicomvault.bench.corpus import ct_corpus
from dicomvault.bench.peers import free_port
from tests.conftest import Cli
from tests.migrate.test_dicomweb import held
from tests.net.conftest import Orthanc, Server
from tests.net.test_integrity import dataset_bytes
from tests.security.helpers import certificates

MIGRATOR = "MIGRATOR"
SOURCE = "SOURCE"
# net/bulk.py's ACSE timeout: a failed handshake must end well before it.
ACSE_TIMEOUT_S = 30


class Certificates:
    """A CA with certificates for the source and for us; another CA, which signed neither."""

    def __init__(self, directory: Path) -> None:
        self.ca, issued = certificates(directory, "source", "migrator")
        self.source, self.migrator = issued["source"], issued["migrator"]
        other = directory / "other-ca"
        other.mkdir()
        self.other_ca, _ = certificates(other)

    def ours(self, **more: str) -> dict[str, object]:
        """Our [dicom] TLS keys: our certificate and key, the CA that signed the source's."""
        cert, key = self.migrator
        return {
            "tls_ca": str(self.ca),
            "tls_certificate": str(cert),
            "tls_private_key": str(key),
            **more,
        }


class Migrator:
    """The archive we migrate into; its configuration names the source as a TLS modality."""

    def __init__(
        self, workdir: Path, source_aet: str, source_port: int, dicom: dict[str, object]
    ) -> None:
        workdir.mkdir()
        self.port = free_port()
        self.config = workdir / "dicomvault.toml"
        keys = "".join(f"{k} = {json.dumps(v)}\n" for k, v in dicom.items())
        self.config.write_text(
            f'[dicom]\naet = "{MIGRATOR}"\nhost = "127.0.0.1"\nport = {self.port}\n{keys}'
            f'[modalities.source]\naet = "{source_aet}"\nhost = "127.0.0.1"\n'
            f"port = {source_port}\ntls = true\n"
        )
        self.cli = Cli(workdir / "archive", workdir)

    def migrate(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cli.run(
            "migrate", "pacs", "source", *args, "--config", self.config, check=check
        )

    def held(self) -> dict[str, bytes]:
        return data_sets(self.cli.root) if self.cli.root.exists() else {}


def data_sets(root: Path) -> dict[str, bytes]:
    """SOP Instance UID -> the data set of the instance the archive at ``root`` holds."""
    return {uid: dataset_bytes(data) for uid, data in held(root).items()}


@pytest.fixture
def certs(tmp_path) -> Certificates:
    return Certificates(tmp_path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return ct_corpus(tmp_path_factory.mktemp("corpus"), 6, rows=16, columns=16, studies=3)


def serve_source(
    workdir: Path, certs: Certificates, corpus: list, tls_port: int, migrator_port: int
) -> Server:
    """A dicomvault `serve` holding ``corpus``, its ``tls_port`` requiring a client
    certificate the CA signed; it knows us (C-MOVE to our plain port)."""
    workdir.mkdir()
    cert, key = certs.source
    server = Server(
        workdir,
        {MIGRATOR: {"aet": MIGRATOR, "host": "127.0.0.1", "port": migrator_port}},
        aet=SOURCE,
        sections={
            "dicom": {
                "tls_port": tls_port,
                "tls_certificate": str(cert),
                "tls_private_key": str(key),
                "tls_ca": str(certs.ca),
            }
        },
    )
    server.run("import", *[g.path for g in corpus])
    return server.start()


@pytest.mark.parametrize("method", ["get", "move"])
def test_from_dicomvault_over_tls_every_instance_byte_identical(tmp_path, certs, corpus, method):
    tls_port = free_port()
    migrator = Migrator(tmp_path / "migrator", SOURCE, tls_port, certs.ours())
    source = serve_source(tmp_path / "source", certs, corpus, tls_port, migrator.port)
    try:
        result = migrator.migrate("--method", method)
        assert "3 of 3 studies verified" in result.stdout
        assert source.logged(f"association from {MIGRATOR}@127.0.0.1 accepted")
    finally:
        assert source.stop() == 0
    ours = migrator.held()
    assert set(ours) == {g.sop_instance_uid for g in corpus}
    assert ours == data_sets(source.root)


def test_the_get_verb_from_a_tls_modality_stores_through_the_rust_scu(tmp_path, certs, corpus):
    """`dicomvault get` over TLS into the archive (the Rust SCU, as migrations): the study's
    instances, their data sets as the source holds them."""
    tls_port = free_port()
    migrator = Migrator(tmp_path / "migrator", SOURCE, tls_port, certs.ours())
    source = serve_source(tmp_path / "source", certs, corpus, tls_port, migrator.port)
    study = corpus[0].study_instance_uid
    try:
        result = migrator.cli.run(
            "get", "source", "-k", f"StudyInstanceUID={study}", "--config", migrator.config
        )
    finally:
        assert source.stop() == 0
    assert "C-GET" in result.stdout
    theirs = data_sets(source.root)
    assert migrator.held() == {
        g.sop_instance_uid: theirs[g.sop_instance_uid]
        for g in corpus
        if g.study_instance_uid == study
    }


def test_tls_failures_are_told_at_once_naming_the_source_and_store_nothing(tmp_path, certs, corpus):
    tls_port = free_port()
    source = serve_source(tmp_path / "source", certs, corpus, tls_port, free_port())
    cases = {
        # The source's certificate is not signed by the CA we trust (one of the same name).
        "stranger": (
            tls_port,
            certs.ours(tls_ca=str(certs.other_ca)),
            "TLS handshake failed: invalid peer certificate",
        ),
        # We present no certificate; the source requires one (TLS 1.3: its alert comes after
        # our side of the handshake).
        "anonymous": (tls_port, {"tls_ca": str(certs.ca)}, "CertificateRequired"),
        # The plain port, named as TLS.
        "plaintext": (source.port, certs.ours(), "does the peer speak DICOM TLS"),
    }
    try:
        for name, (port, dicom, why) in cases.items():
            migrator = Migrator(tmp_path / name, SOURCE, port, dicom)
            started = time.monotonic()
            result = migrator.migrate(check=False)
            took = time.monotonic() - started
            assert result.returncode != 0, name
            assert f"{SOURCE}@127.0.0.1:{port}" in result.stderr, (name, result.stderr)
            assert "TLS" in result.stderr and why in result.stderr, (name, result.stderr)
            assert took < ACSE_TIMEOUT_S, (name, took)
            assert migrator.held() == {}, name
            assert "PRIVATE KEY" not in result.stdout + result.stderr
        # We told the source why we hung up (a TLS alert, whole).
        assert source.logged("failed: received fatal alert: DecryptError")
    finally:
        assert source.stop() == 0


@pytest.mark.parametrize("method", ["get", "move"])
def test_from_orthanc_with_dicom_tls_every_instance_byte_identical(tmp_path, certs, corpus, method):
    """Orthanc's DICOM TLS port (mutual TLS): C-FIND and C-GET over it, or C-MOVE whose
    sub-associations come back to our TLS port ("UseDicomTls")."""
    (tmp_path / "orthanc-dir").mkdir()
    our_tls_port = free_port()
    orthanc_port = free_port()
    migrator = Migrator(
        tmp_path / "migrator", "ORTHANC", orthanc_port, certs.ours(tls_port=our_tls_port)
    )
    cert, key = certs.source
    orthanc = Orthanc(
        tmp_path / "orthanc-dir",
        {MIGRATOR: {"AET": MIGRATOR, "Host": "127.0.0.1", "Port": our_tls_port,
                    "UseDicomTls": True}},
        dicom_port=orthanc_port,
        options={
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(cert),
            "DicomTlsPrivateKey": str(key),
            "DicomTlsTrustedCertificates": str(certs.ca),
            "DicomTlsRemoteCertificateRequired": True,
        },
    )  # fmt: skip
    try:
        served = {}
        for g in corpus:
            data = g.path.read_bytes()
            instance = orthanc.rest("/instances", data)
            file = orthanc.rest(f"/instances/{instance['ID']}/file")
            assert isinstance(file, bytes)
            served[g.sop_instance_uid] = dataset_bytes(file)
        result = migrator.migrate("--method", method)
        assert "3 of 3 studies verified" in result.stdout
    finally:
        orthanc.stop()
    assert migrator.held() == served
