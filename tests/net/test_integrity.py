"""What the server acknowledged is never lost or served altered, with real peers: a pack cut
short loses nothing acknowledged after the restart and a re-send repairs what it cut; a damaged
instance fails its own sub-operation or response, never the others; C-STORE refuses what it
could not serve; duplicates are kept or replaced as configured."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time
from io import BytesIO
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage, Verification

from dicomvault.bench.corpus import GeneratedInstance, small_corpus
from dicomvault.bench.peers import free_port
from tests.conftest import Cli
from tests.net.conftest import Server, StoreSCP, dcmtk, movescu, storescu
from tests.net.test_dcmtk_peers import QR

SERIES = 10


def last_pack(root: Path) -> Path:
    return sorted((root / "packs").glob("pack-*.dvp"))[-1]


def flip_in_packs(root: Path, needle: bytes, at: int = 100) -> None:
    for pack in (root / "packs").glob("pack-*.dvp"):
        data = pack.read_bytes()
        found = data.find(needle)
        if found >= 0:
            with pack.open("r+b") as f:
                f.seek(found + at)
                f.write(bytes([data[found + at] ^ 0x04]))
            return
    raise AssertionError("not in any pack")


def exported(server: Server, out: Path) -> dict[str, bytes]:
    server.run("export", "--out", out)
    return {p.stem: p.read_bytes() for p in out.rglob("*.dcm")}


def dataset_bytes(data: bytes) -> bytes:
    """A Part 10 file's data set: what a C-STORE carries (the File Meta is the receiver's)."""
    meta_length = struct.unpack_from("<I", data, 140)[0]
    return data[144 + meta_length :]


def test_a_pack_cut_short_loses_nothing_acknowledged_after_the_restart(tmp_path):
    corpus = small_corpus(tmp_path / "corpus", 16)
    first, later = corpus[:10], corpus[10:15]
    server = Server(tmp_path, {}).start()
    try:
        storescu(server, [g.path for g in first])
    finally:
        assert server.stop() == 0
    with last_pack(server.root).open("r+b") as f:  # a torn tail inside the last records
        f.truncate(f.seek(0, os.SEEK_END) - 300)
    server.start()
    try:
        assert server.logged("torn tail")
        # Re-sending what the cut damaged repairs it; what comes after is appended at a
        # record boundary.
        storescu(server, [first[-1].path])
        storescu(server, [g.path for g in later])
    finally:
        assert server.stop() == 0
    server.run("reindex")
    server.start()
    try:
        files = exported(server, tmp_path / "out")
        for g in [*first, *later]:
            sent = dataset_bytes(g.path.read_bytes())
            assert dataset_bytes(files[g.sop_instance_uid]) == sent, g.sop_instance_uid
        assert server.run("verify").returncode == 0
    finally:
        assert server.stop() == 0


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """A server holding a 10-instance series whose 5th instance has a flipped bit in its
    frame, and 3 instances of another series, intact."""
    tmp = tmp_path_factory.mktemp("damaged")
    http_port = free_port()
    storescp = StoreSCP(tmp, aet="STORESCP")
    server = Server(
        tmp,
        {
            "STORESCP": {"aet": "STORESCP", "host": "127.0.0.1", "port": storescp.port},
            "WORKSTATION": {"aet": QR, "host": "127.0.0.1", "port": 1},
        },
        sections={"http": {"enabled": True, "host": "127.0.0.1", "port": http_port}},
    ).start()
    corpus = small_corpus(tmp / "corpus", SERIES)  # one study, one series
    storescu(server, [g.path for g in corpus])
    victim = corpus[4]
    flip_in_packs(server.root, victim.path.read_bytes()[-4096:])
    client = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=60)
    yield server, corpus, victim, client, storescp, tmp
    client.close()
    storescp.stop()
    assert server.stop() == 0


def test_c_get_fails_the_damaged_sub_operation_and_sends_the_others(damaged):
    server, corpus, victim, _, _, tmp = damaged
    out = tmp / "get"
    out.mkdir()
    result = dcmtk(
        "getscu", "-v", "-aet", QR, "-aec", server.aet, "-S", "-od", out,
        "-k", "QueryRetrieveLevel=SERIES",
        "-k", f"SeriesInstanceUID={victim.series_instance_uid}",
        "127.0.0.1", server.port, check=False,
    )  # fmt: skip
    received = {pydicom.dcmread(p).SOPInstanceUID for p in out.iterdir()}
    assert received == {g.sop_instance_uid for g in corpus if g is not victim}
    # PS3.4 C.4.3.1.4: some sub-operations failed: B000, with the Failed SOP Instance UID List.
    assert "C-GET Response (Warning: SubOperationsCompleteOneOrMoreFailures)" in result.stderr
    assert "Number of Completed Suboperations : 9" in result.stderr
    assert "Number of Failed Suboperations    : 1" in result.stderr
    assert server.logged(f"sub-operation for {victim.sop_instance_uid} failed")
    assert "checksum" in server.log


def test_c_move_fails_the_damaged_sub_operation_and_sends_the_others(damaged):
    server, corpus, victim, _, storescp, _ = damaged
    result = movescu(
        server,
        QR,
        "STORESCP",
        {"QueryRetrieveLevel": "SERIES", "SeriesInstanceUID": victim.series_instance_uid},
        check=False,
    )
    # PS3.4 C.4.2.1.5: B000 when some sub-operations failed.
    assert "Final Move Response (Warning: SubOperationsCompleteOneOrMoreFailures)" in (
        result.stderr
    )
    received = {pydicom.dcmread(p).SOPInstanceUID for p in storescp.out.iterdir()}
    assert victim.sop_instance_uid not in received
    assert received >= {g.sop_instance_uid for g in corpus if g is not victim}
    assert server.logged(f"C-MOVE: sub-operation for {victim.sop_instance_uid} failed")


def test_http_answers_500_for_a_damaged_instance_before_any_byte(damaged):
    server, _, victim, client, _, _ = damaged
    uid, series, study = (
        victim.sop_instance_uid,
        victim.series_instance_uid,
        victim.study_instance_uid,
    )
    for url in (
        f"/instances/{uid}/file",
        f"/dicom-web/studies/{study}/series/{series}/instances/{uid}",
        f"/dicom-web/studies/{study}/series/{series}/instances/{uid}/frames/1",
        f"/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={uid}"
        "&contentType=application/dicom",
    ):
        response = client.get(url)
        assert response.status_code == 500, url
        assert "damaged" in response.json()["error"], url
    assert "checksum" in server.log


def test_a_stream_of_several_ends_before_the_damaged_instance(damaged):
    server, corpus, victim, client, _, _ = damaged
    sent = {dataset_bytes(g.path.read_bytes()) for g in corpus if g is not victim}
    for url in (
        f"/dicom-web/studies/{victim.study_instance_uid}",
        f"/series/{victim.series_instance_uid}/archive",
    ):
        received = b""
        with pytest.raises(httpx.HTTPError), client.stream("GET", url) as response:
            assert response.status_code == 200  # the first instance is intact
            for chunk in response.iter_bytes():
                received += chunk
        assert victim.path.read_bytes()[-4096:] not in received, "nothing of it"
        if url.startswith("/dicom-web"):  # the whole parts before it, as they were sent
            boundary = received.split(b"\r\n", 1)[0]
            parts = received.split(boundary)[1:-1]
            assert parts
            for part in parts:
                body = part.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n")
                assert dataset_bytes(body) in sent
    assert server.logged("is damaged in the archive, the response ends before it")


def _file(
    tmp_path: Path,
    command_uid: str,
    sop_instance_uid: str,
    *,
    study: str | None = "1.2.3.4",
    command_class: str = CTImageStorage,
) -> Path:
    """A CT data set saying ``sop_instance_uid`` in a file whose File Meta says
    ``command_uid`` and ``command_class``: sent from a file in chunks, pynetdicom takes the
    C-STORE request's UIDs and context from the File Meta, and sends the data set as it is."""
    ds = pydicom.Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_instance_uid
    if study is not None:
        ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = "1.2.3.4.5"
    ds.PatientID = "P"
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = command_class
    meta.MediaStorageSOPInstanceUID = command_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta)  # as given: pydicom's save_as would make it agree
    path = tmp_path / f"{command_uid}.dcm"
    path.write_bytes(out.getvalue() + encode(ds, False, True))
    return path


def test_c_store_refuses_what_it_could_not_serve(tmp_path, monkeypatch):
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    server = Server(tmp_path, {}).start()
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        ae.add_requested_context(Verification, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", server.port, ae_title=server.aet)
        assert assoc.is_established
        cases = [
            # PS3.4 B.2.3: A900, the data set does not match the request.
            ("mismatch", _file(tmp_path, "1.2.3.100", "1.2.3.999"), 0xA900),
            ("empty instance uid", _file(tmp_path, "1.2.3.101", ""), 0xA900),
            ("no study", _file(tmp_path, "1.2.3.102", "1.2.3.102", study=None), 0xA900),
            # PS3.7 C: 0122, a SOP class on a context not negotiated for a storage class.
            (
                "on verification",
                _file(tmp_path, "1.2.3.103", "1.2.3.103", command_class=Verification),
                0x0122,
            ),
            ("good", _file(tmp_path, "1.2.3.104", "1.2.3.104"), 0x0000),
        ]
        for name, path, expected in cases:
            assert assoc.send_c_store(path).Status == expected, name
        assoc.release()
    finally:
        assert server.stop() == 0
    listed = {i["key"] for i in server.cli.ls("instances")}
    assert listed == {"1.2.3.104"}
    assert "the request names SOPInstanceUID 1.2.3.100 but the data set holds 1.2.3.999" in (
        server.log
    )


def _associate_rq(contexts: bytes) -> bytes:
    """An A-ASSOCIATE-RQ (PS3.8 9.3.2) with the given presentation context items."""
    application = b"1.2.840.10008.3.1.1.1"
    body = (
        struct.pack(">HH", 1, 0)
        + b"DICOMVAULT".ljust(16)
        + b"PEER".ljust(16)
        + bytes(32)
        + b"\x10\x00"
        + struct.pack(">H", len(application))
        + application
        + contexts
        + b"\x50\x00\x00\x08\x51\x00\x00\x04\x00\x00\x40\x00"  # user info: max PDU
    )
    return b"\x01\x00" + struct.pack(">I", len(body)) + body


def test_an_association_without_presentation_contexts_is_rejected(tmp_path):
    server = Server(tmp_path, {}).start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(_associate_rq(b""))
            reply = s.recv(10)
        # A-ASSOCIATE-RJ: result 1 (permanent), source 1 (service user), reason 1.
        assert reply[0] == 0x03 and reply[7:10] == b"\x01\x01\x01", reply
        assert server.logged("no presentation context proposed")
    finally:
        assert server.stop() == 0


def _changed(g: GeneratedInstance, out: Path) -> Path:
    """The same instance with another Patient's Name: other bytes under the same UID."""
    ds = pydicom.dcmread(g.path)
    ds.PatientName = "Other^Version"
    ds.save_as(out, enforce_file_format=True)
    return out


@pytest.mark.parametrize("policy", ["keep", "replace"])
def test_a_re_sent_instance_with_other_bytes_is_kept_or_replaced(tmp_path, policy):
    [g] = small_corpus(tmp_path / "corpus", 1)
    server = Server(tmp_path, {}, sections={"storage": {"on_duplicate": policy}}).start()
    try:
        storescu(server, [g.path])
        storescu(server, [g.path])  # the same bytes: nothing changes, nothing is logged
        storescu(server, [_changed(g, tmp_path / "changed.dcm")])
        [listed] = server.cli.ls("patients")
        history = server.run("show", g.sop_instance_uid, "--history").stdout
    finally:
        assert server.stop() == 0
    assert server.log.count("received again with other bytes") == 1
    if policy == "keep":
        assert listed["tags"]["PatientName"] != "Other^Version"
        assert "replaced 1" not in history
    else:
        assert listed["tags"]["PatientName"] == "Other^Version"
        assert "replaced 1" in history
        # A replay decides as the listener did; gc reclaims the replaced version.
        server.run("reindex")
        assert server.cli.ls("patients")[0]["tags"]["PatientName"] == "Other^Version"
        before = server.cli.json("stats")["pack_bytes"]
        server.run("gc")
        assert server.cli.json("stats")["pack_bytes"] < before
        assert "replaced 1" not in server.run("show", g.sop_instance_uid, "--history").stdout
    assert len(server.cli.ls("instances")) == 1
    assert server.run("verify").returncode == 0


def test_a_nearly_full_disk_refuses_c_store_and_import_and_recovers(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("mounting the small filesystem this test needs takes root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", mount], check=True)
    try:
        corpus = small_corpus(tmp_path / "corpus", 6)
        sections = {"storage": {"min_free_space_mb": 8}}
        server = Server(tmp_path, {}, sections=sections, root=mount / "archive").start()
        try:
            storescu(server, [corpus[0].path])
            # Indexed before the disk fills (another process sees what the server's applier
            # has committed, a moment after the acknowledgement).
            deadline = time.monotonic() + 30
            while not server.cli.ls("instances"):
                assert time.monotonic() < deadline
                time.sleep(0.1)
            filler = mount / "filler"
            free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
            subprocess.run(["fallocate", "-l", str(free - 4096), filler], check=True)
            refused = storescu(server, [corpus[1].path], check=False)
            assert "Refused: OutOfResources" in refused.stderr
            assert server.logged("kept in reserve")
            imported = server.run("import", corpus[2].path, check=False)
            assert imported.returncode == 1 and "Traceback" not in imported.stderr
            assert "failed:" in imported.stderr and "kept in reserve" in imported.stderr
            assert [i["key"] for i in server.cli.ls("instances")] == [corpus[0].sop_instance_uid]
            filler.unlink()
            storescu(server, [corpus[1].path])
            server.run("import", corpus[2].path)
            assert len(server.cli.ls("instances")) == 3
            assert server.run("verify").returncode == 0
        finally:
            assert server.stop() == 0
    finally:
        subprocess.run(["umount", mount], check=True)


@pytest.mark.parametrize("command", [["gc"], ["migrate", "repack", "--compression", "zstd"]])
def test_gc_and_repack_on_a_full_disk_leave_the_archive_intact(tmp_path, command):
    if os.geteuid() != 0:
        pytest.fail("mounting the small filesystem this test needs takes root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", mount], check=True)
    try:
        corpus = small_corpus(tmp_path / "corpus", 400)  # ~4 MB
        (tmp_path / "dicomvault.toml").write_text(
            f'[archive]\nroot = "{mount / "archive"}"\n[storage]\nmin_free_space_mb = 0\n'
        )
        cli = Cli(mount / "archive", tmp_path)
        cli.run("import", tmp_path / "corpus", "--quiet", with_root=False)
        cli.run("delete", corpus[0].study_instance_uid, "--yes", with_root=False)
        kept = {g.sop_instance_uid: g.path.read_bytes() for g in corpus[100:]}
        free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
        subprocess.run(["fallocate", "-l", str(free - 64 * 1024), mount / "filler"], check=True)
        full = cli.run(*command, check=False, with_root=False)
        assert full.returncode != 0 and "Traceback" not in full.stderr, full.stderr
        assert "No space left" in full.stderr + full.stdout
        (mount / "filler").unlink()
        for attempt in (cli.run("verify", with_root=False), cli.run(*command, with_root=False)):
            assert attempt.returncode == 0
        assert cli.run("verify", with_root=False).returncode == 0
        out = tmp_path / "out"
        cli.run("export", "--out", out, with_root=False)
        assert {p.stem: p.read_bytes() for p in out.rglob("*.dcm")} == kept
    finally:
        subprocess.run(["umount", mount], check=True)
