"""The S3 service stopped in the middle of an ingest: the C-STOREs it cannot hold fail with
0xA700 Out of Resources (PS3.4 GG.4.2: the instance was not stored), never with a false
Success; the node stays up and takes the same instances once the service is back, and what
it acknowledged before is retrieved bit-exact."""

from __future__ import annotations

from dicomvault.bench.corpus import ct_corpus
from tests.net.conftest import storescu
from tests.net.test_dcmtk_peers import dataset_bytes, getscu
from tests.net.test_s3_serve import found, node
from tests.seaweedfs import SeaweedFs

SUCCESS = "Received Store Response (Success)"
OUT_OF_RESOURCES = "Received Store Response (Refused: OutOfResources)"


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

        s3.start()
        back = storescu(server, [c.path for c in small + large])
        assert back.stderr.count(SUCCESS) == 4
        everything = before + small + large
        assert found(server, tmp_path) == {c.sop_instance_uid for c in everything}
        got = getscu(server, tmp_path / "got", QueryRetrieveLevel="IMAGE", SOPInstanceUID="")
        for c in everything:
            assert dataset_bytes(got[c.sop_instance_uid]) == dataset_bytes(c.path)
    finally:
        if server.alive:
            assert server.stop() == 0
        s3.stop()
