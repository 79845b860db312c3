"""Orthanc (Debian's orthanc package) as a peer in both directions: dicomvault's SCU verbs
send to, query and retrieve from it (C-GET and C-MOVE), and Orthanc queries and retrieves
from dicomvault."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
from pynetdicom.dsutils import split_dataset

from dicomvault.bench.corpus import clinical_corpus
from tests.net.conftest import Orthanc, Server, free_port
from tests.net.test_dcmtk_peers import findscu


def dataset_bytes(data: bytes, path: Path) -> bytes:
    path.write_bytes(data)
    _, offset = split_dataset(path)
    return data[offset:]


@pytest.fixture
def peers(tmp_path):
    orthanc_port = free_port()
    server = Server(
        tmp_path,
        {
            "ORTHANC": {"aet": "ORTHANC", "host": "127.0.0.1", "port": orthanc_port},
            # Its own SCU, so that the CLI's messages can be checked against its own SCP.
            "SELF": {"aet": "DICOMVAULT", "host": "127.0.0.1", "port": 1},
        },
    )
    orthanc = Orthanc(
        tmp_path, {"dicomvault": ["DICOMVAULT", "127.0.0.1", server.port]}, dicom_port=orthanc_port
    )
    server.start()
    yield server, orthanc
    orthanc.stop()
    if server.alive:
        assert server.stop() == 0


@pytest.fixture
def corpus(tmp_path):
    return clinical_corpus(tmp_path / "corpus")


def orthanc_sop_uids(orthanc: Orthanc) -> set[str]:
    instances = orthanc.rest("/instances?expand")
    return {i["MainDicomTags"]["SOPInstanceUID"] for i in instances}


def test_dicomvault_sends_to_and_queries_orthanc(peers, corpus, tmp_path):
    server, orthanc = peers
    server.run("import", corpus[0].path.parent.parent.parent, "--quiet")
    assert "C-ECHO ORTHANC: 0x0000 Success" in server.run("echo", "ORTHANC").stdout
    studies = sorted({g.study_instance_uid for g in corpus if g.patient_id == "12345"})
    sent = server.run("send", *studies, "--to", "ORTHANC")
    expected = {g.sop_instance_uid for g in corpus if g.study_instance_uid in studies}
    assert f"sent {len(expected)} of {len(expected)} instances" in sent.stdout
    assert orthanc_sop_uids(orthanc) == expected
    # What Orthanc received is the data set we hold, byte for byte.
    ours = {p.stem: p for p in _export(server, tmp_path / "ours").values()}
    for instance in orthanc.rest("/instances?expand"):
        uid = instance["MainDicomTags"]["SOPInstanceUID"]
        theirs = orthanc.rest(f"/instances/{instance['ID']}/file")
        assert dataset_bytes(theirs, tmp_path / "theirs.dcm") == dataset_bytes(
            ours[uid].read_bytes(), tmp_path / "ours.dcm"
        )
    found = json.loads(
        server.run(
            "find",
            "ORTHANC",
            "--level",
            "STUDY",
            "-k",
            "PatientID=12345",
            "-k",
            "StudyDate",
            "-k",
            "IssuerOfPatientID",
            "--json",
        ).stdout
    )
    assert sorted(f["0020000D"]["Value"][0] for f in found) == studies


def _export(server: Server, out: Path) -> dict[str, Path]:
    server.run("export", "--out", out)
    return {p.stem: p for p in out.rglob("*.dcm")}


def test_dicomvault_retrieves_from_orthanc_by_c_get_and_c_move(peers, corpus, tmp_path):
    server, orthanc = peers
    for g in corpus:
        orthanc.rest("/instances", g.path.read_bytes(), method="POST")
    by_study: dict[str, list] = {}
    for g in corpus:
        by_study.setdefault(g.study_instance_uid, []).append(g)
    # Lossless studies only: Orthanc may decompress for us, and lossy JPEG decoders differ.
    lossless = [
        uid
        for uid, gs in sorted(by_study.items())
        if all(g.transfer_syntax != "1.2.840.10008.1.2.4.50" for g in gs)
    ]
    get_study, move_study = lossless[:2]
    got = server.run("get", "ORTHANC", "-k", f"StudyInstanceUID={get_study}")
    assert f"{len(by_study[get_study])} completed, 0 failed" in got.stdout
    moved = server.run(
        "move", "ORTHANC", "--dest", "DICOMVAULT", "-k", f"StudyInstanceUID={move_study}"
    )
    assert f"{len(by_study[move_study])} completed, 0 failed" in moved.stdout
    held = {i["key"] for i in server.cli.ls("instances")}
    assert held == {g.sop_instance_uid for g in by_study[get_study] + by_study[move_study]}
    exported = _export(server, tmp_path / "out")
    for g in by_study[get_study] + by_study[move_study]:
        ours, original = pydicom.dcmread(exported[g.sop_instance_uid]), pydicom.dcmread(g.path)
        assert (ours.pixel_array == original.pixel_array).all()
    # C-GET into a directory instead of the archive.
    out = tmp_path / "get-out"
    server.run("get", "ORTHANC", "-k", f"StudyInstanceUID={move_study}", "--out", out)
    assert {pydicom.dcmread(p).SOPInstanceUID for p in out.iterdir()} == {
        g.sop_instance_uid for g in by_study[move_study]
    }
    refused = server.run(
        "move", "ORTHANC", "--dest", "NOBODY", "-k", f"StudyInstanceUID={move_study}", check=False
    )
    # Orthanc 1.10 answers an unknown destination with 0xC000, not the standard 0xA801 ...
    assert refused.returncode == 1
    assert "C-MOVE: 0xC000" in refused.stdout
    # ... which dicomvault's own SCP answers, and its SCU names in words.
    ours = server.run(
        "move",
        f"ORTHANC@127.0.0.1:{server.port}",
        "--dest",
        "NOBODY",
        "-k",
        f"StudyInstanceUID={move_study}",
        check=False,
    )
    assert ours.returncode == 1
    assert "C-MOVE: 0xA801 Move Destination Unknown" in ours.stdout


def test_orthanc_queries_and_retrieves_from_dicomvault(peers, corpus):
    server, orthanc = peers
    server.run("import", corpus[0].path.parent.parent.parent, "--quiet")
    assert orthanc.rest("/modalities/dicomvault/echo", {}, method="POST") == {}
    query = orthanc.rest(
        "/modalities/dicomvault/query",
        {"Level": "Study", "Query": {"PatientID": "12345", "StudyDate": ""}},
        method="POST",
    )
    answers = orthanc.rest(f"/queries/{query['ID']}/answers?expand")
    study_uids = sorted(a["0020,000d"]["Value"] for a in answers)
    assert study_uids == sorted({g.study_instance_uid for g in corpus if g.patient_id == "12345"})
    orthanc.rest(
        f"/queries/{query['ID']}/retrieve",
        {"TargetAet": "ORTHANC", "Synchronous": True},
        method="POST",
    )
    assert orthanc_sop_uids(orthanc) == {
        g.sop_instance_uid for g in corpus if g.patient_id == "12345"
    }
    assert server.logged("C-MOVE from ORTHANC@127.0.0.1: status 0x0000")


def _answers(found: list[pydicom.Dataset], keys: list[str]) -> set[tuple[str, ...]]:
    """Each answer as its SOP Instance UID and the values of ``keys`` (text)."""
    return {(str(ds.SOPInstanceUID), *(str(ds.get(k, "")) for k in keys)) for ds in found}


def test_c_find_on_attributes_the_index_does_not_keep_equals_orthanc(peers, corpus, tmp_path):
    """What Orthanc answers from its files, dicomvault answers from its headers: matching on
    KVP (not indexed) and returning Manufacturer, PatientPosition and ImageType (nor these)."""
    server, orthanc = peers
    server.run("import", corpus[0].path.parent.parent.parent, "--quiet")
    for g in corpus:
        orthanc.rest("/instances", g.path.read_bytes(), method="POST")
    returned = ["Manufacturer", "PatientPosition", "ImageType", "KVP"]
    keys = {"KVP": "120.0", **dict.fromkeys(returned[:-1], ""), "SOPInstanceUID": ""}
    ours = findscu(server, "IMAGE", keys, tmp_path, aet="DICOMVAULT")
    # findscu needs the called AE's title and port; Orthanc knows the caller as "dicomvault".
    at_orthanc = SimpleNamespace(aet=orthanc.aet, port=orthanc.dicom_port)
    theirs = findscu(at_orthanc, "IMAGE", keys, tmp_path, aet="DICOMVAULT")  # type: ignore[arg-type]
    ct = {g.sop_instance_uid for g in corpus if g.modality == "CT" and g.number_of_frames == 1}
    assert {str(ds.SOPInstanceUID) for ds in ours} == ct
    assert _answers(ours, returned) == _answers(theirs, returned)
    assert all(ds.Manufacturer == "dicomvault" for ds in ours)
