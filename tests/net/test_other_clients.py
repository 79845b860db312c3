"""Clients the other network tests do not use, as a stranger would point them at the archive:
pynetdicom's apps (findscu, getscu, movescu with its own Storage SCP) and GDCM's C-FIND. Each
finds every study, and what it retrieves is the stored data set byte for byte when it took the
stored syntax, else the pixels DCMTK's converters make (PS3.4 C.4.2, C.4.3)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from dicomvault.bench.corpus import GeneratedInstance, clinical_corpus
from dicomvault.bench.peers import free_port
from tests.net.conftest import PEER_ENV, Server, store_corpus
from tests.net.test_dcmtk_peers import dataset_bytes
from tests.net.test_transcoding import assert_same_pixels, syntax_of

QR = "PYNETDICOM"
# GDCM's C-FIND (its ServiceClassUser) from Debian's python3-gdcm: the PyPI wheel's network
# layer aborts on connecting, and CompositeNetworkFunctions.CFind aborts after the release.
DEBIAN_PYTHON = "/usr/bin/python3"
GDCM_FIND = """
import sys, gdcm
host, port, aet, called = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
keys = gdcm.KeyValuePairArrayType()
for element in (0x0020, 0x0010):
    keys.append(gdcm.KeyValuePairType(gdcm.Tag(0x0010, element), ""))
keys.append(gdcm.KeyValuePairType(gdcm.Tag(0x0020, 0x000D), ""))
query = gdcm.CompositeNetworkFunctions.ConstructQuery(gdcm.eStudyRootType, gdcm.eStudy, keys)
scu = gdcm.ServiceClassUser()
scu.SetHostname(host)
scu.SetPort(port)
scu.SetTimeout(30)
scu.SetCalledAETitle(called)
scu.SetAETitle(aet)
if not scu.InitializeConnection():
    sys.exit("cannot connect")
contexts = gdcm.PresentationContextGenerator()
contexts.GenerateFromUID(gdcm.UIDs.StudyRootQueryRetrieveInformationModelFIND)
scu.SetPresentationContexts(contexts.GetPresentationContexts())
found = gdcm.DataSetArrayType()
if not (scu.StartAssociation() and scu.SendFind(query, found)):
    sys.exit("C-FIND failed")
for ds in found:
    print(str(ds.GetDataElement(gdcm.Tag(0x0020, 0x000D)).GetValue()).rstrip("\\0 "))
if not scu.StopAssociation():
    sys.exit("release failed")
"""


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Server, list[GeneratedInstance], int]:
    """A server holding the clinical corpus, which knows pynetdicom's movescu Storage SCP and
    GDCM (an AE it does not know may not query: PS3.15 access control)."""
    tmp = tmp_path_factory.mktemp("clients")
    store_port = free_port()
    known = {QR: {"aet": QR, "host": "127.0.0.1", "port": store_port}}
    known["GDCM"] = {"aet": "GDCMSCU", "host": "127.0.0.1", "port": 1}
    server = Server(tmp, known).start()
    corpus = clinical_corpus(tmp / "corpus")
    store_corpus(server, corpus)
    yield server, corpus, store_port
    assert server.stop() == 0


def pynetdicom_app(app: str, *args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "pynetdicom", app, *map(str, args)]
    result = subprocess.run(
        argv, cwd=cwd, env=PEER_ENV, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, (argv, result.stdout, result.stderr)
    return result


def assert_every_instance_unaltered(out: Path, corpus: list[GeneratedInstance], work: Path) -> None:
    """``out`` holds every instance of ``corpus`` once, each byte-identical when it came in
    its stored syntax, else with the pixels DCMTK's converters make."""
    received = {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in out.iterdir()
    }
    assert sorted(received) == sorted(g.sop_instance_uid for g in corpus)
    for g in corpus:
        path = received[g.sop_instance_uid]
        if syntax_of(path) == g.transfer_syntax:
            assert dataset_bytes(path) == dataset_bytes(g.path), path.name
        else:
            assert_same_pixels(path, g.path, work)


def test_pynetdicom_findscu_finds_every_study(archive, tmp_path):
    server, corpus, _ = archive
    pynetdicom_app(
        "findscu", "127.0.0.1", server.port, "-aet", QR, "-aec", server.aet, "-S", "-w",
        "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID=", "-k", "PatientID=",
        cwd=tmp_path,
    )  # fmt: skip
    found = [pydicom.dcmread(p) for p in tmp_path.glob("rsp*.dcm")]
    assert sorted(ds.StudyInstanceUID for ds in found) == sorted(
        {g.study_instance_uid for g in corpus}
    )
    patient_of = {g.study_instance_uid: g.patient_id for g in corpus}
    assert all(ds.PatientID == patient_of[ds.StudyInstanceUID] for ds in found)


def test_gdcm_c_find_finds_every_study(archive, tmp_path):
    server, corpus, _ = archive
    result = subprocess.run(
        [DEBIAN_PYTHON, "-c", GDCM_FIND, "127.0.0.1", str(server.port), "GDCMSCU", server.aet],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == sorted({g.study_instance_uid for g in corpus})


def test_pynetdicom_getscu_gets_every_instance_unaltered(archive, tmp_path):
    server, corpus, _ = archive
    out = tmp_path / "got"
    for study in sorted({g.study_instance_uid for g in corpus}):
        pynetdicom_app(
            "getscu", "127.0.0.1", server.port, "-aet", QR, "-aec", server.aet, "-S",
            "-od", out, "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
            cwd=tmp_path,
        )  # fmt: skip
    assert_every_instance_unaltered(out, corpus, tmp_path)


def test_pynetdicom_movescu_to_its_own_storage_scp_gets_every_instance_unaltered(archive, tmp_path):
    server, corpus, store_port = archive
    out = tmp_path / "moved"
    pynetdicom_app(
        "movescu", "127.0.0.1", server.port, "-aet", QR, "-aec", server.aet,
        "--store", "--store-port", store_port, "--store-aet", QR, "-aem", QR, "-od", out,
        "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=*", "-P",
        cwd=tmp_path,
    )  # fmt: skip
    assert_every_instance_unaltered(out, corpus, tmp_path)
