"""gc and reindex on an archive shared by two ``dicomvault serve`` nodes on S3 (a real
SeaweedFS) and PostgreSQL, while they serve: gc collects the objects of deleted instances and
of a writer that died before its commit, one node at a time, never one a live instance
references; a delete racing a retrieve sends whole instances or none; reindex rebuilds the
index from every node's log in the bucket, once every node's heartbeat says it has stopped."""

from __future__ import annotations

import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomvault.bench.corpus import GeneratedInstance, ct_corpus
from dicomvault.config import load
from dicomvault.index.pg_index import PgIndex
from dicomvault.index.pg_schema import SCHEMA
from dicomvault.store.backends import storage_identity
from dicomvault.store.maintenance import MAINTENANCE
from tests.net.conftest import Server, storescu
from tests.net.test_dcmtk_peers import dataset_bytes, getscu
from tests.net.test_s3_serve import as_node, found, indexed, node

# 256 x 256 x 16 bit: a pixel blob past the 64 KB a log segment holds, so an object of its own.
SIDE = 256


def stored(server: Server, instances: list[GeneratedInstance]) -> None:
    result = storescu(server, [c.path for c in instances])
    assert result.stderr.count("Received Store Response (Success)") == len(instances)


def delete_study(http_port: int, study: str) -> int:
    url = f"http://127.0.0.1:{http_port}/studies/{study}"
    request = urllib.request.Request(url, method="DELETE")
    with urllib.request.urlopen(request) as response:
        return int(response.status)


def collected(output: str) -> tuple[int, int]:
    """(to the trash, deleted) from gc's report on S3."""
    trashed = int(output.split("to the trash: ")[1].split()[0])
    deleted = int(output.split("deleted: ")[1].split()[0])
    return trashed, deleted


def retrieved_bit_exact(server: Server, out: Path, sent: dict[str, Path]) -> None:
    got = getscu(server, out, QueryRetrieveLevel="IMAGE", SOPInstanceUID="")
    assert set(got) == set(sent)
    for uid, path in got.items():
        assert dataset_bytes(path) == dataset_bytes(sent[uid])


def test_gc_on_s3_collects_garbage_once_while_the_nodes_serve(tmp_path, pg_url, seaweedfs):
    storage = seaweedfs.storage()
    a, a_http = node(tmp_path / "a", 1, storage, pg_url)
    b, _ = node(tmp_path / "b", 2, storage, pg_url)
    kept = ct_corpus(tmp_path / "kept", 4, rows=SIDE, columns=SIDE, seed=1)
    doomed = ct_corpus(tmp_path / "doomed", 3, rows=SIDE, columns=SIDE, seed=2)
    never = ct_corpus(tmp_path / "never", 1, rows=SIDE, columns=SIDE, seed=3)[0]
    try:
        stored(a, kept)
        stored(b, doomed)
        # A writer that put an instance's blobs and died before committing it (node 9 is no
        # serving node's number): its pixel object is referenced by nothing.
        as_node(storage, 9).ingest_file(never.path)
        assert delete_study(a_http, doomed[0].study_instance_uid) == 200

        # Within the grace period, nothing goes: the orphans may be an instance arriving.
        recent = a.run("gc").stdout
        assert collected(recent) == (0, 0)
        assert "unreferenced but recent, left: 4" in recent

        # While another process holds the maintenance lock (on any node), gc does nothing.
        index = PgIndex(pg_url, store=storage_identity(load(a.config)))
        with index.exclusive(MAINTENANCE) as mine:
            assert mine
            assert "running on another node" in b.run("gc", "--grace", "0").stdout
        index.close()

        # S3 dates an object to the second, and gc takes one written within the second it
        # started for recent: a second after the last write, every orphan is past --grace 0.
        time.sleep(1.0)
        # Started on both nodes at once: one acts (or, if one ends before the other starts,
        # the second finds nothing left); together they trash the four orphans once, and
        # delete none while the nodes serve (what they trashed may be a C-STORE's in flight).
        with ThreadPoolExecutor(2) as pool:
            outputs = list(pool.map(lambda server: server.run("gc", "--grace", "0").stdout, (a, b)))
        acted = [collected(out) for out in outputs if "running on another node" not in out]
        assert sum(t for t, _ in acted) == 4 and sum(d for _, d in acted) == 0

        # What is live is whole, on both nodes; the deleted are gone; the bucket verifies.
        sent = {c.sop_instance_uid: c.path for c in kept}
        assert found(a, tmp_path) == found(b, tmp_path) == set(sent)
        retrieved_bit_exact(b, tmp_path / "got", sent)
        assert "0 damaged records, 0 defects" in a.run("verify").stdout

        # Every node stopped, the trash is emptied at once without a grace period.
        assert a.stop() == 0 and b.stop() == 0
        assert collected(a.run("gc", "--grace", "0").stdout) == (0, 4)
        assert "0 damaged records, 0 defects" in a.run("verify").stdout
    finally:
        for server in (a, b):
            if server.alive:
                assert server.stop() == 0


def test_a_delete_racing_a_retrieve_sends_whole_instances_or_none(tmp_path, pg_url, seaweedfs):
    """PS3.4 C.4.3.3.1: a C-GET sub-operation that cannot be completed fails; none may deliver
    an instance other than the one stored."""
    storage = seaweedfs.storage()
    a, a_http = node(tmp_path / "a", 1, storage, pg_url)
    b, _ = node(tmp_path / "b", 2, storage, pg_url)
    study = ct_corpus(tmp_path / "study", 24, rows=SIDE, columns=SIDE, seed=4)
    sent = {c.sop_instance_uid: c.path for c in study}
    try:
        stored(a, study)
        results: dict[str, dict[str, Path]] = {}

        def retrieve() -> None:
            results["got"] = getscu(
                b, tmp_path / "got", QueryRetrieveLevel="IMAGE", SOPInstanceUID="", check=False
            )

        retrieving = threading.Thread(target=retrieve)
        retrieving.start()
        assert delete_study(a_http, study[0].study_instance_uid) == 200
        a.run("gc", "--grace", "0")
        retrieving.join(timeout=120)
        assert not retrieving.is_alive()
        for uid, path in results["got"].items():
            assert dataset_bytes(path) == dataset_bytes(sent[uid])
        assert found(a, tmp_path) == found(b, tmp_path) == set()
        assert indexed(pg_url) == 0
        assert a.alive and b.alive
        assert "0 damaged records, 0 defects" in b.run("verify").stdout
    finally:
        for server in (a, b):
            if server.alive:
                assert server.stop() == 0


def with_large_header(instance: GeneratedInstance, out: Path) -> Path:
    """A copy of ``instance`` whose header (a private OB before the pixels) is past a
    segment's 64 KB: an object of its own, which gc takes once the instance is deleted."""
    ds = pydicom.dcmread(instance.path)
    ds.add_new(0x00091010, "LO", "DICOMVAULT TEST")
    ds.add_new(0x00091001, "OB", bytes(100_000))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(out, enforce_file_format=True)
    return out


def test_reindex_on_s3_rebuilds_the_index_from_every_nodes_log(tmp_path, pg_url, seaweedfs):
    storage = seaweedfs.storage()
    a, a_http = node(tmp_path / "a", 1, storage, pg_url)
    b, _ = node(tmp_path / "b", 2, storage, pg_url)
    on_a = ct_corpus(tmp_path / "on-a", 3, rows=64, columns=64, seed=5)
    on_b = ct_corpus(tmp_path / "on-b", 3, rows=SIDE, columns=SIDE, seed=6, studies=3)
    large = with_large_header(on_b[0], tmp_path / "large-header.dcm")
    try:
        stored(a, on_a)
        stored(b, on_b)
        assert storescu(b, [large]).stderr.count("Received Store Response (Success)") == 1
        # A process that would serve as node 1 too is refused: its writes and node A's would
        # stop each other.
        with pytest.raises(RuntimeError, match="before listening"):
            node(tmp_path / "impostor", 1, storage, pg_url)
        impostor = (tmp_path / "impostor" / "serve.log").read_text()
        assert f"node 1 is serving at 127.0.0.1:{a.port}" in impostor
        # Tombstones in node A's log of instances node B stored: replayed after them.
        assert delete_study(a_http, on_b[0].study_instance_uid) == 200
        # The nodes' heartbeats: both serve, so a reindex is refused.
        listed = a.run("nodes").stdout
        assert listed.count("serving") == 2 and f":{a.port}" in listed and f":{b.port}" in listed
        refused = a.run("reindex", check=False)
        assert refused.returncode == 1 and "stop every node before a reindex" in refused.stderr
        assert b.stop() == 0
        assert a.stop() == 0
        assert "no node is serving" in a.run("nodes").stdout
        # gc takes the deleted instances' objects, the large header among them.
        assert collected(a.run("gc", "--grace", "0").stdout)[0] == 2
        time.sleep(1.1)  # the trash is dated to the second
        assert collected(a.run("gc", "--grace", "0").stdout)[1] == 2
        with psycopg.connect(pg_url) as conn:
            conn.execute(f"DELETE FROM {SCHEMA}.instances")
        out = a.run("reindex").stdout
        # The deleted instances are not indexed on the way to their tombstones: their blobs
        # are gone, and nothing is reported missing.
        assert "reindexed 5 instances; 0 damaged records, 0 instances that could not" in out
        assert "0 damaged records, 0 defects" in a.run("verify").stdout
        a.start()
        sent = {c.sop_instance_uid: c.path for c in on_a + on_b[1:]}
        assert found(a, tmp_path) == set(sent)
        retrieved_bit_exact(a, tmp_path / "got", sent)
        # Every node's marks were rebuilt: node B replays nothing twice when it starts.
        b.start()
        assert found(b, tmp_path) == set(sent)
        assert indexed(pg_url) == 5
    finally:
        for server in (a, b):
            if server.alive:
                assert server.stop() == 0
