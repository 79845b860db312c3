"""The listener's limits (issue 13), each from [dicom] with a safe default: a peer silent or
trickling before its A-ASSOCIATE-RQ is dropped by the association timeout (ARTIM, PS3.8
9.1.5), an idle association by the DIMSE timeout; associations beyond the limit of a calling
AE title are rejected transient / service provider (presentation) / local limit exceeded
(PS3.8 9.3.4) while other AEs are served; a PDU over the maximum length advertised aborts
(PS3.8 9.3.1); a data set over max_instance_size is refused and nothing stored; at the file
descriptor limit the accept loop backs off and logs once; 2,000 associations leave the
server's open files as they were."""

from __future__ import annotations

import os
import resource
import struct
import time
from pathlib import Path

import pytest

from dicomvault.bench.corpus import ct_corpus
from tests.net.conftest import Server, dcmtk, storescu
from tests.net.peer import (
    A_ABORT,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_RELEASE_RP,
    INVALID_PDU_PARAMETER_VALUE,
    RELEASE_RQ,
    Peer,
    abort_reason,
    p_data,
    pdv,
)
from tests.net.test_robustness import associate_rq


def limited(tmp_path: Path, **dicom: object) -> Server:
    return Server(tmp_path, {}, sections={"dicom": dicom}).start()


@pytest.fixture
def server(tmp_path):
    srv = limited(tmp_path, association_timeout_s=2, dimse_timeout_s=2)
    yield srv
    if srv.alive:
        assert srv.stop() == 0


def echo(server: Server, aet: str = "OTHER", check: bool = True):
    return dcmtk("echoscu", "-aet", aet, "-aec", server.aet, "127.0.0.1", server.port, check=check)


def test_a_silent_peer_is_dropped_within_the_association_timeout(server):
    with Peer(server.port) as silent:
        received, took = silent.ending()
    assert received == []
    assert 1.5 < took < 3.5
    assert server.logged("dropped: no A-ASSOCIATE-RQ within the association timeout (2 s)")


def test_slowloris_is_dropped_within_the_association_timeout(server):
    """One byte every 0.3 s: each read is quick, the whole request is not (the deadline is
    for the A-ASSOCIATE-RQ, not for each read)."""
    rq = associate_rq()
    started = time.monotonic()
    with Peer(server.port) as slow:
        sent = 0
        try:
            for byte in rq:
                slow.send(bytes([byte]))
                sent += 1
                time.sleep(0.3)
        except (BrokenPipeError, ConnectionResetError):
            pass
        received, _ = slow.ending()
    took = time.monotonic() - started
    assert received == []
    assert sent < len(rq)
    assert took < 3.5
    echo(server)


def test_an_idle_association_is_aborted_after_the_dimse_timeout(server):
    with Peer(server.port) as idle:
        idle.associate()
        received, took = idle.ending()
    assert [kind for kind, _ in received] == [A_ABORT]
    assert 1.5 < took < 3.5
    assert server.logged("aborted (peer silent past the DIMSE timeout)")


def test_a_pdu_that_never_arrives_whole_is_aborted(server):
    """A P-DATA-TF whose length promises more than is sent, a byte at a time: the DIMSE
    timeout bounds the whole PDU."""
    with Peer(server.port) as liar:
        liar.associate()
        liar.send(struct.pack(">BBI", 0x04, 0, 1000))
        for _ in range(12):
            try:
                liar.send(b"\x00")
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.3)
        received, _ = liar.ending()
    assert A_ABORT in [kind for kind, _ in received]


def test_the_limit_per_calling_ae_rejects_while_other_aes_are_served(tmp_path):
    srv = limited(tmp_path, max_associations_per_ae=2, max_associations=3)
    try:
        busy = [Peer(srv.port), Peer(srv.port)]
        for peer in busy:
            peer.associate(calling=b"BUSY")
        with Peer(srv.port) as third:
            third.send(associate_rq(calling=b"BUSY"))
            kind, body = third.receive()
        # PS3.8 9.3.4: result 2 rejected-transient, source 3 service provider (presentation
        # related function), reason 2 local-limit-exceeded.
        assert (kind, body) == (A_ASSOCIATE_RJ, bytes([0, 2, 3, 2]))
        assert srv.logged("association from BUSY@127.0.0.1 rejected: local limit exceeded")
        echo(srv, "OTHER")  # another AE is served (3 associations at most in all)
        with Peer(srv.port) as fourth:
            fourth.associate(calling=b"ANOTHER")  # BUSY's 2 + this one: the total limit
            with Peer(srv.port) as fifth:
                fifth.send(associate_rq(calling=b"YETANOTHER"))
                assert fifth.receive() == (A_ASSOCIATE_RJ, bytes([0, 2, 3, 2]))
            assert srv.logged("local limit exceeded (max_associations)")
        busy.pop().sock.close()
        time.sleep(0.2)
        with Peer(srv.port) as again:
            again.associate(calling=b"BUSY")  # a slot was given back
            again.send(RELEASE_RQ)
            assert again.receive()[0] == A_RELEASE_RP
        busy.pop().sock.close()
    finally:
        assert srv.stop() == 0


def test_a_pdu_over_the_maximum_length_is_aborted(tmp_path):
    srv = limited(tmp_path, max_pdu=16384)
    try:
        with Peer(srv.port) as peer:
            peer.send(associate_rq())
            kind, body = peer.receive()
            assert kind == A_ASSOCIATE_AC
            # The Maximum Length sub-item (0x51) advertises the limit.
            assert b"\x51\x00\x00\x04" + struct.pack(">I", 16384) in body
            peer.send(p_data(pdv(1, bytes(16384 - 6 + 1))))  # a variable field of 16385
            received, _ = peer.ending()
        assert abort_reason(received) == INVALID_PDU_PARAMETER_VALUE
        assert srv.logged("aborted (PDU larger than the 16384 bytes negotiated)")
        echo(srv)
    finally:
        assert srv.stop() == 0


def test_an_instance_over_the_maximum_size_is_refused_and_not_stored(tmp_path):
    srv = limited(tmp_path, max_instance_size_mb=1)
    try:
        small, large = (
            ct_corpus(tmp_path / "ct", 2, rows=64, columns=64),
            ct_corpus(tmp_path / "large", 1, rows=1024, columns=1024),
        )
        assert large[0].path.stat().st_size > 1 << 20
        result = storescu(srv, [large[0].path], check=False)
        assert "Received Store Response (Refused: OutOfResources)" in result.stderr
        assert srv.logged("data set larger than max_instance_size (1048576 bytes)")
        storescu(srv, [g.path for g in small])
        assert {i["key"] for i in srv.cli.ls("instances")} == {g.sop_instance_uid for g in small}
    finally:
        assert srv.stop() == 0


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_2000_sequential_associations_leave_the_open_files_as_they_were(tmp_path):
    srv = limited(tmp_path)
    try:
        pid = srv.proc.pid
        echo(srv)  # what the first association opens once (threads, logs) is open before
        before = open_files(pid)
        for _ in range(2000):
            with Peer(srv.port) as peer:
                peer.associate()
                peer.send(RELEASE_RQ)
                assert peer.receive()[0] == A_RELEASE_RP
        deadline = time.monotonic() + 10
        while open_files(pid) != before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert open_files(pid) == before
    finally:
        assert srv.stop() == 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_at_the_descriptor_limit_accept_backs_off_and_logs_once(tmp_path):
    srv = limited(tmp_path)
    try:
        pid = srv.proc.pid
        # A few descriptors to spare: the held connections take them all.
        limit = open_files(pid) + 8
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
        held = [Peer(srv.port) for _ in range(30)]
        time.sleep(1)
        spent = cpu_seconds(pid)
        time.sleep(3)
        assert cpu_seconds(pid) - spent < 0.3  # not spinning on accept()
        assert srv.log.count("cannot accept connections") == 1
        assert srv.logged("Too many open files")
        for peer in held:
            peer.sock.close()
        time.sleep(1.5)  # the last back-off
        echo(srv)
        assert srv.logged("accepting connections again")
    finally:
        assert srv.stop() == 0
