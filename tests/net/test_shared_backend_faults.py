"""The shared engines stopped in the middle of an ingest. S3 down: the C-STOREs it cannot
hold fail with 0xA700 Out of Resources (PS3.4 GG.4.2: the instance was not stored), never
with a false Success. PostgreSQL down: a node on a shared index acknowledges only what it has
indexed, so queries and stores are refused with 0xA700 (what reached its log on S3 meanwhile
is indexed once PostgreSQL is back). Either
way the node stays up, takes the same instances once the engine is back, and what it
acknowledged is retrieved bit-exact. S3 applying a PUT whose answer came too late: the node
indexes what it finds so in its log, as a replay would."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pytest

from dicomvault.bench.corpus import GeneratedInstance, ct_corpus
from dicomvault.bench.engines import PostgreSQL, SeaweedFs
from tests.net.conftest import Server, dcmtk, storescu
from tests.net.test_dcmtk_peers import QR, dataset_bytes, getscu
from tests.net.test_s3_serve import found, node

SUCCESS = "Received Store Response (Success)"
OUT_OF_RESOURCES = "Received Store Response (Refused: OutOfResources)"
REFUSED_QUERY = "Received Final Find Response (Refused: OutOfResources)"


def query(server: Server) -> subprocess.CompletedProcess[str]:
    """findscu -v at IMAGE level, whatever its status."""
    return dcmtk(
        "findscu", "-v", "-aet", QR, "-aec", server.aet, "-S",
        "-k", "QueryRetrieveLevel=IMAGE", "-k", "SOPInstanceUID=",
        "127.0.0.1", server.port, check=False,
    )  # fmt: skip


def held_bit_exact(server: Server, tmp_path: Path, sent: Sequence[GeneratedInstance]) -> None:
    """The node finds exactly ``sent``, and retrieves each with the data set sent."""
    assert found(server, tmp_path) == {c.sop_instance_uid for c in sent}
    got = getscu(server, tmp_path / "got", QueryRetrieveLevel="IMAGE", SOPInstanceUID="")
    for c in sent:
        assert dataset_bytes(got[c.sop_instance_uid]) == dataset_bytes(c.path)


def test_c_stores_fail_while_s3_is_down_and_succeed_once_it_is_back(tmp_path, pg_url):
    s3 = SeaweedFs().start()
    server, _ = node(tmp_path / "node", 1, s3.storage(), pg_url)
    before = ct_corpus(tmp_path / "before", 3, rows=32, columns=32)
    # Small instances (their blobs go into the commit's segment) and large ones (frames of
    # 128 KiB: objects written while the data set arrives).
    small = ct_corpus(tmp_path / "small", 2, rows=32, columns=32, seed=1)
    large = ct_corpus(tmp_path / "large", 2, rows=256, columns=256, seed=2)
    try:
        assert storescu(server, [c.path for c in before]).stderr.count(SUCCESS) == 3
        s3.kill()
        # One association each: storescu stops at the first failed C-STORE.
        for c in small + large:
            down = storescu(server, [c.path], check=False).stderr
            assert SUCCESS not in down and down.count(OUT_OF_RESOURCES) == 1, down
        assert server.alive
        assert found(server, tmp_path) == {c.sop_instance_uid for c in before}
        # The heartbeats are the index's: the node is listed while the bucket is down.
        listed = server.run("nodes").stdout
        assert "serving" in listed and "silent" not in listed, listed

        s3.start()
        back = storescu(server, [c.path for c in small + large])
        assert back.stderr.count(SUCCESS) == 4
        held_bit_exact(server, tmp_path, before + small + large)
    finally:
        if server.alive:
            assert server.stop() == 0
        s3.stop()


def test_an_ingest_outlives_postgresql_going_down(tmp_path, seaweedfs):
    # Crashed below: what it acknowledged must survive (the session's server does not fsync).
    pg = PostgreSQL(durable=True).start()
    server, http_port = node(tmp_path / "node", 1, seaweedfs.storage(), pg.database())
    before = ct_corpus(tmp_path / "before", 3, rows=32, columns=32)
    during = ct_corpus(tmp_path / "during", 4, rows=32, columns=32, seed=1)
    try:
        assert storescu(server, [c.path for c in before]).stderr.count(SUCCESS) == 3
        assert found(server, tmp_path) == {c.sop_instance_uid for c in before}
        pg.kill()
        # Nothing waits to be indexed, but the index cannot be read: queries are refused
        # (C-FIND 0xA700, QIDO-RS 503), not failed as if they were wrong.
        assert REFUSED_QUERY in query(server).stderr
        with pytest.raises(urllib.error.HTTPError) as qido:
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/dicom-web/studies", timeout=30)
        assert qido.value.code == 503
        # On a shared index a C-STORE is acknowledged once indexed: none is. The first may
        # reach the log on S3 before the applier fails (it is indexed once PostgreSQL is
        # back, though refused); once the applier has failed, stores are refused up front.
        refused = []
        for c in during:
            out = storescu(server, [c.path], check=False).stderr
            assert SUCCESS not in out and OUT_OF_RESOURCES in out, out
            refused.append(c)
        assert server.logged("refusing C-STOREs until it succeeds", timeout=30)
        # A query is refused rather than answered without what was acknowledged.
        assert REFUSED_QUERY in query(server).stderr
        assert server.alive

        pg.start()
        deadline = time.monotonic() + 60
        expected = {c.sop_instance_uid for c in before}
        while not expected <= found(server, tmp_path):
            assert time.monotonic() < deadline, "the acknowledged instances are not indexed"
            time.sleep(0.5)
        assert found(server, tmp_path) <= {c.sop_instance_uid for c in before + during}
        back = storescu(server, [c.path for c in refused])
        assert back.stderr.count(SUCCESS) == len(refused)
        got = getscu(server, tmp_path / "got", QueryRetrieveLevel="IMAGE", SOPInstanceUID="")
        for c in before + during:
            assert dataset_bytes(got[c.sop_instance_uid]) == dataset_bytes(c.path)
    finally:
        if server.alive:
            assert server.stop() == 0
        pg.stop()


class HeldAnswers:
    """A TCP relay to S3 that passes requests on at once and, while ``holding`` is set, holds
    its answers back: a PUT is applied, and answered after the node has given up on it (the
    timeout of a request on a slow network)."""

    def __init__(self, endpoint: str) -> None:
        self.target = int(endpoint.rsplit(":", 1)[1])
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.holding = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for source, sink, answers in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(
                    target=self._pipe, args=(source, sink, answers), daemon=True
                ).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                while answers and self.holding.is_set():
                    time.sleep(0.05)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            source.close()
            sink.close()

    def close(self) -> None:
        self.listener.close()


def test_a_segment_written_after_its_put_failed_is_indexed(tmp_path, pg_url, seaweedfs):
    """A C-STORE whose segment's PUT S3 applied but answered after the node's 30 s timeout is
    refused (0xA700), yet its record is in the log, where a restart's replay and a reindex
    find it: the node indexes it as soon as its next append finds the segment there, before
    the segments after it — never an index that a replay would make other."""
    relay = HeldAnswers(seaweedfs.endpoint)
    storage = {**seaweedfs.storage(), "endpoint": relay.endpoint}
    server, _ = node(tmp_path / "node", 1, storage, pg_url)
    # Small: the whole instance is in its commit's segment, the one PUT of its C-STORE once
    # the node knows where its log ends (its first append lists it).
    first, late, next_one = ct_corpus(tmp_path / "corpus", 3, rows=32, columns=32)
    try:
        assert storescu(server, [first.path]).stderr.count(SUCCESS) == 1
        relay.holding.set()
        try:
            refused = storescu(server, [late.path], check=False).stderr
        finally:
            relay.holding.clear()
        assert OUT_OF_RESOURCES in refused and SUCCESS not in refused, refused
        assert found(server, tmp_path) == {first.sop_instance_uid}
        assert storescu(server, [next_one.path]).stderr.count(SUCCESS) == 1
        assert server.logged("found written after its put failed", timeout=30)
        held_bit_exact(server, tmp_path, [first, late, next_one])
    finally:
        if server.alive:
            assert server.stop() == 0
        relay.close()
