"""Bad peers and bad conditions: garbage on the wire, truncated and abandoned associations,
malformed data sets, a full disk, duplicates, C-CANCEL, a stalled peer. The server keeps
serving and loses nothing it acknowledged."""

from __future__ import annotations

import io
import os
import re
import resource
import signal
import socket
import struct
import threading
import time

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import CTImageStorage

from dicomvault.bench.corpus import clinical_corpus, ct_corpus
from dicomvault.bench.synthetic import commit_all
from dicomvault.index import LmdbIndex
from tests.net.conftest import Server, dcmtk, storescu

QR = "WORKSTATION"


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path, {"WORKSTATION": {"aet": QR, "host": "127.0.0.1", "port": 1}}).start()
    yield srv
    if srv.alive:
        assert srv.stop() == 0


def find_all(server, tmp_path):
    out = tmp_path / f"find{time.monotonic_ns()}"
    out.mkdir()
    dcmtk(
        "findscu",
        "-aet",
        QR,
        "-aec",
        server.aet,
        "-S",
        "-X",
        "-od",
        out,
        "-k",
        "QueryRetrieveLevel=IMAGE",
        "-k",
        "SOPInstanceUID",
        "127.0.0.1",
        server.port,
    )
    return {pydicom.dcmread(p).SOPInstanceUID for p in out.glob("rsp*.dcm")}


def associate_rq(called: str = "DICOMVAULT", calling: bytes = b"RAW") -> bytes:
    """A valid A-ASSOCIATE-RQ proposing Verification (PS3.8 9.3.2), built byte by byte; the
    calling AE title as given (any bytes, up to 16)."""

    def item(kind: int, body: bytes) -> bytes:
        return struct.pack(">BBH", kind, 0, len(body)) + body

    context = item(
        0x20,
        b"\x01\x00\x00\x00" + item(0x30, b"1.2.840.10008.1.1") + item(0x40, b"1.2.840.10008.1.2"),
    )
    user = item(0x50, item(0x51, struct.pack(">I", 16384)))
    body = (
        struct.pack(">HH", 1, 0)
        + called.ljust(16).encode()
        + calling.ljust(16)
        + bytes(32)
        + item(0x10, b"1.2.840.10008.3.1.1.1")
        + context
        + user
    )
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def test_garbage_truncated_pdus_and_abandoned_associations_leave_it_serving(server, tmp_path):
    corpus = clinical_corpus(tmp_path / "corpus")
    plain = [g.path for g in corpus if g.transfer_syntax == "1.2.840.10008.1.2.1"]
    storescu(server, plain)
    rq = associate_rq()

    def send_and_drop(payload: bytes, linger: bool = False) -> None:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(payload)
            if linger:  # an abrupt reset instead of an orderly close
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    send_and_drop(os.urandom(4096))
    send_and_drop(b"\x01\x00" + struct.pack(">I", 512) + rq[6:40])  # truncated A-ASSOCIATE-RQ
    # An association, then a P-DATA-TF announcing ~4 GB, then the connection closes.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(rq)
        assert s.recv(1)[0] == 0x02  # A-ASSOCIATE-AC
        s.sendall(b"\x04\x00" + struct.pack(">I", 0xFFFFFFF0) + b"\x00" * 64)
    # 50 associations dropped abruptly, some mid-request.
    for i in range(50):
        send_and_drop(rq + (b"\x04\x00\x00\x00\x10\x00" if i % 2 else b""), linger=True)
    time.sleep(1)
    assert server.alive
    dcmtk("echoscu", "-aet", "MODALITY", "-aec", server.aet, "127.0.0.1", server.port)
    assert find_all(server, tmp_path) == {g.sop_instance_uid for g in corpus if g.path in plain}
    assert server.run("verify").returncode == 0


def test_an_unparsable_data_set_is_refused_with_cannot_understand(server, tmp_path, monkeypatch):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    buffer = io.BytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta)
    # A data set whose second element claims a VR that does not exist.
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(
        buffer.getvalue()
        + b"\x08\x00\x16\x00UI\x02\x001\x00"
        + b"\x08\x00\x18\x00ZZ\x04\x001.2\x00"
        + os.urandom(64)
    )
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the bytes as they are
    ae = AE(ae_title="BROKEN")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", server.port, ae_title=server.aet)
    assert assoc.is_established
    response = assoc.send_c_store(broken)
    assoc.release()
    assert response.Status & 0xF000 == 0xC000
    assert server.logged("cannot understand the data set: at byte")
    assert server.cli.ls("instances") == []
    assert server.alive


def test_a_duplicate_answers_success_and_keeps_one_copy(server, tmp_path):
    [g] = ct_corpus(tmp_path / "ct", 1, rows=64, columns=64)
    storescu(server, [g.path])
    first = server.cli.ls("instances")
    result = storescu(server, [g.path])
    assert "Received Store Response (Success)" in result.stderr
    assert server.cli.ls("instances") == first


def test_a_full_disk_answers_out_of_resources_and_keeps_what_was_acknowledged(tmp_path):
    srv = Server(tmp_path, {})
    limit = 3 * 1024 * 1024

    def small_disk() -> None:
        # Every file the server writes stops at 3 MB, as on a full disk (EFBIG, not a signal).
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    srv.start(preexec_fn=small_disk)
    corpus = ct_corpus(tmp_path / "ct", 12)  # ~6 MB: the packs fill up halfway
    result = storescu(srv, [g.path for g in corpus], check=False)
    acknowledged = result.stderr.count("Received Store Response (Success)")
    assert 0 < acknowledged < len(corpus)
    assert "Received Store Response (Refused: OutOfResources)" in result.stderr
    assert srv.logged("storage failed", "commit failed")
    assert srv.alive
    assert srv.stop() == 0
    srv.start()  # room again
    try:
        assert len(srv.cli.ls("instances")) == acknowledged
        assert srv.run("verify").returncode == 0
        storescu(srv, [g.path for g in corpus])
        assert len(srv.cli.ls("instances")) == len(corpus)
    finally:
        assert srv.stop() == 0


def test_c_cancel_stops_a_c_find(tmp_path):
    """20,000 matches (generated into the index, all that C-FIND reads) cannot all be sent
    before findscu's C-CANCEL-RQ arrives: the responses stop there, with status Cancel."""
    srv = Server(tmp_path, {"WORKSTATION": {"aet": QR, "host": "127.0.0.1", "port": 1}})
    with LmdbIndex(srv.root / "index", sync=False) as index:
        commit_all(index, 0, 20_000, batch=5_000)
    srv.start()
    try:
        result = dcmtk(
            "findscu",
            "-v",
            "--cancel",
            "2",
            "-aet",
            QR,
            "-aec",
            srv.aet,
            "-S",
            "-k",
            "QueryRetrieveLevel=IMAGE",
            "-k",
            "SOPInstanceUID",
            "127.0.0.1",
            srv.port,
        )
        assert "Received Final Find Response (Cancel" in result.stderr
        pending = len(re.findall(r"Find Response: \d+ \(Pending\)", result.stderr))
        assert 2 <= pending < 20_000
        assert srv.logged("C-FIND from WORKSTATION@127.0.0.1: status 0xFE00")
    finally:
        assert srv.stop() == 0


def test_a_stalled_peer_does_not_block_the_others(server, tmp_path):
    [g] = ct_corpus(tmp_path / "ct", 1, rows=64, columns=64)
    stalled = []
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(associate_rq()[:20])  # half an A-ASSOCIATE-RQ, then silence
        stalled.append(s)
    done = threading.Event()

    def other_peer() -> None:
        dcmtk("echoscu", "-aet", "OTHER", "-aec", server.aet, "127.0.0.1", server.port)
        storescu(server, [g.path])
        done.set()

    threading.Thread(target=other_peer, daemon=True).start()
    assert done.wait(30), "a stalled association blocked another peer"
    for s in stalled:
        s.close()
    assert [i["key"] for i in server.cli.ls("instances")] == [g.sop_instance_uid]


def test_sub_operations_that_cannot_be_sent_are_listed_as_failed(server, tmp_path):
    """A C-GET requestor that accepts CT only as JPEG baseline: only a lossy encoder could
    make it from native pixels, which the archive never uses, so those sub-operations fail,
    are counted and listed, and the association goes on."""
    from pynetdicom import build_role
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

    corpus = ct_corpus(tmp_path / "ct", 3, rows=64, columns=64)
    storescu(server, [g.path for g in corpus])
    ae = AE(ae_title=QR)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.4.50")
    assoc = ae.associate(
        "127.0.0.1",
        server.port,
        ae_title=server.aet,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)],
    )
    assert assoc.is_established
    query = pydicom.Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = corpus[0].study_instance_uid
    responses = list(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet))
    assoc.release()
    status, identifier = responses[-1]
    assert status.Status in (0xA702, 0xB000)  # all, or some, sub-operations failed
    assert status.NumberOfFailedSuboperations == 3
    failed = identifier.FailedSOPInstanceUIDList
    assert sorted([failed] if isinstance(failed, str) else failed) == sorted(
        g.sop_instance_uid for g in corpus
    )
    assert server.logged("only a lossy encoder could make it, never used")
    assert server.alive
