"""Storage Commitment Push Model (PS3.4 Annex J) with Orthanc 1.10 both ways: Orthanc asks
dicomvault (REST /modalities/{id}/storage-commitment) and receives its N-EVENT-REPORT on a new
association; ``dicomvault commit`` asks Orthanc and takes the report Orthanc sends back."""

from __future__ import annotations

import time

import pydicom
import pytest

from dicomvault.bench.corpus import GeneratedInstance, clinical_corpus
from dicomvault.bench.peers import free_port
from tests.net.conftest import Orthanc, Server

NO_SUCH_OBJECT_INSTANCE = 0x0112


@pytest.fixture
def corpus(tmp_path):
    return clinical_corpus(tmp_path / "corpus")


def sop_class(g: GeneratedInstance) -> str:
    return str(pydicom.dcmread(g.path, stop_before_pixels=True).SOPClassUID)


def orthanc_report(orthanc: Orthanc, job: dict) -> dict:
    deadline = time.monotonic() + 60
    while True:
        report = orthanc.rest(job["Path"])
        assert isinstance(report, dict)
        if report["Status"] != "Pending" or time.monotonic() > deadline:
            return report
        time.sleep(0.2)


def test_orthanc_asks_dicomvault_to_commit(tmp_path, corpus):
    orthanc_port = free_port()
    server = Server(
        tmp_path, {"ORTHANC": {"aet": "ORTHANC", "host": "127.0.0.1", "port": orthanc_port}}
    )
    orthanc = Orthanc(
        tmp_path, {"dicomvault": ["DICOMVAULT", "127.0.0.1", server.port]}, dicom_port=orthanc_port
    )
    server.start()
    try:
        server.run("import", corpus[0].path.parent.parent.parent, "--quiet")
        held = [{"SOPClassUID": sop_class(g), "SOPInstanceUID": g.sop_instance_uid} for g in corpus]
        job = orthanc.rest(
            "/modalities/dicomvault/storage-commitment",
            {"DicomInstances": held, "Timeout": 60},
            method="POST",
        )
        report = orthanc_report(orthanc, job)
        assert report["Status"] == "Success"
        assert {s["SOPInstanceUID"] for s in report["Success"]} == {
            g.sop_instance_uid for g in corpus
        }
        # An instance the archive does not hold: reported failed, 0x0112 (PS3.4 J.3.3.1.1).
        missing = {"SOPClassUID": sop_class(corpus[0]), "SOPInstanceUID": "1.2.3.4.5.6"}
        job = orthanc.rest(
            "/modalities/dicomvault/storage-commitment",
            {"DicomInstances": [held[0], missing], "Timeout": 60},
            method="POST",
        )
        report = orthanc_report(orthanc, job)
        assert report["Status"] == "Failure"
        [failure] = report["Failures"]
        assert failure["SOPInstanceUID"] == "1.2.3.4.5.6"
        assert failure["FailureReason"] == NO_SUCH_OBJECT_INSTANCE
        assert server.logged("N-ACTION (storage commitment) from ORTHANC@127.0.0.1: status 0x0000")
    finally:
        orthanc.stop()
        assert server.stop() == 0


def test_dicomvault_commit_asks_orthanc(tmp_path, corpus):
    """The verb listens on [dicom] port for the report, where Orthanc knows the archive's AE;
    then ``serve`` does, and keeps the report for the verb."""
    server = Server(tmp_path, {})
    orthanc = Orthanc(tmp_path, {"dicomvault": ["DICOMVAULT", "127.0.0.1", server.port]})
    table = f'aet = "ORTHANC"\nhost = "127.0.0.1"\nport = {orthanc.dicom_port}\n'
    server.config.write_text(server.config.read_text() + "[modalities.ORTHANC]\n" + table)
    try:
        server.run("import", corpus[0].path.parent.parent.parent, "--quiet")
        study = corpus[0].study_instance_uid
        in_study = [g for g in corpus if g.study_instance_uid == study]
        for g in in_study[1:]:
            orthanc.rest("/instances", g.path.read_bytes(), method="POST")
        # Orthanc holds all but the first instance of the study.
        partial = server.run("commit", "ORTHANC", "-k", f"StudyInstanceUID={study}", check=False)
        assert partial.returncode == 1
        assert f"committed {len(in_study) - 1} of {len(in_study)} instances" in partial.stdout
        assert in_study[0].sop_instance_uid in partial.stderr
        orthanc.rest("/instances", in_study[0].path.read_bytes(), method="POST")
        whole = server.run("commit", "ORTHANC", "-k", f"StudyInstanceUID={study}")
        assert f"committed {len(in_study)} of {len(in_study)} instances" in whole.stdout
        # With `serve` on the port, the report reaches it and it keeps it for the verb.
        server.start()
        served = server.run("commit", "ORTHANC", "-k", f"StudyInstanceUID={study}")
        assert f"committed {len(in_study)} of {len(in_study)} instances" in served.stdout
        assert server.logged("N-EVENT-REPORT (storage commitment) from ORTHANC@127.0.0.1")
    finally:
        orthanc.stop()
        if server.alive:
            assert server.stop() == 0
