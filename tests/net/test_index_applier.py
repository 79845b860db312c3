"""The listener acknowledges a C-STORE once its manifest record is durable in the pack log;
the archive's applier indexes it afterwards. Reads wait for what was acknowledged before them,
writers that index in one step wait for the applier. An acknowledged instance is always found:
while the applier cannot index (it retries) C-STOREs are refused and reads say so; an index
without room refuses before acknowledging; what was given up at close is replayed at open."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from dicomvault import config
from dicomvault.bench.corpus import ct_corpus
from dicomvault.bench.peers import free_port
from dicomvault.index import LmdbIndex
from dicomvault.net.scp import DicomServer
from dicomvault.store import Archive
from dicomvault.store.archive import IndexUnavailable
from tests.conftest import Cli
from tests.net.conftest import Server, storescu


class HeldApplier:
    """Holds the applier's index transactions until ``release`` (or fails them)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()
        original = LmdbIndex.commit
        held = self

        def commit(index: LmdbIndex, entries, before_commit=None):  # type: ignore[no-untyped-def]
            if threading.current_thread().name == "index-applier":
                held.entered.set()
                held.released.wait(30)
                if fail:
                    raise OSError("the index's disk failed")
            return original(index, entries, before_commit=before_commit)

        monkeypatch.setattr(LmdbIndex, "commit", commit)

    def release(self) -> None:
        self.released.set()


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[tuple[Archive, SimpleNamespace]]:
    settings = config.load(root=tmp_path / "archive", environ={})
    settings["dicom"].update(host="127.0.0.1", port=free_port())
    archive = Archive(settings)
    server = DicomServer(archive, settings)
    _, port = server.start()
    try:
        yield archive, SimpleNamespace(aet=settings["dicom"]["aet"], port=port)
    finally:
        server.stop()
        archive.close()


def test_a_read_waits_for_what_was_acknowledged_before_it(serving, tmp_path, monkeypatch):
    archive, peer = serving
    [ct] = ct_corpus(tmp_path / "ct", 1, rows=32, columns=32)
    held = HeldApplier(monkeypatch)
    result = storescu(peer, [ct.path])
    assert "Received Store Response (Success)" in result.stderr
    assert held.entered.wait(10)
    found: list[int] = []
    uid = ct.sop_instance_uid
    reader = threading.Thread(target=lambda: found.append(len(archive.resolve(uid))))
    reader.start()
    reader.join(0.3)
    assert reader.is_alive()  # acknowledged, not yet indexed: the read waits
    held.release()
    reader.join(10)
    assert found == [1]


def test_an_import_waits_for_the_listener_s_backlog(serving, tmp_path, monkeypatch):
    archive, peer = serving
    first, second = ct_corpus(tmp_path / "ct", 2, rows=32, columns=32)
    held = HeldApplier(monkeypatch)
    storescu(peer, [first.path])
    assert held.entered.wait(10)
    _, commit = archive.ingest_file(second.path)
    assert commit is not None
    with pytest.raises(TimeoutError):
        commit.result(timeout=0.3)  # its index mark would pass records not yet applied
    held.release()
    assert commit.result(timeout=10).status == "stored"
    # The index's marks cover both records: nothing would be replayed.
    assert archive.store.history(archive.index.applied()) == []
    assert {r.key for r in archive.instances()} == {first.sop_instance_uid, second.sop_instance_uid}


def test_an_index_without_room_refuses_c_stores_before_acknowledging_them(tmp_path):
    # An index map too small for a single instance: a C-STORE it could not index is refused
    # (PS3.4 B.2.3: A700 Refused: Out of Resources), never acknowledged and then missing.
    server = Server(tmp_path, {}, sections={"index": {"map_size": 65536}}).start()
    corpus = ct_corpus(tmp_path / "ct", 3, rows=32, columns=32)
    try:
        for instance in corpus:
            result = storescu(server, [instance.path], check=False)
            assert "Received Store Response (Refused: OutOfResources)" in result.stderr
        assert server.logged("raise [index] map_size")
    finally:
        assert server.stop() == 0
    elsewhere = tmp_path / "elsewhere"  # away from the server's ./dicomvault.toml
    elsewhere.mkdir()
    cli = Cli(server.root, elsewhere)  # the default map size
    assert cli.ls("instances") == []
    cli.run("import", tmp_path / "ct")
    assert {i["key"] for i in cli.ls("instances")} == {c.sop_instance_uid for c in corpus}


class FailingIndex:
    """Makes the applier's index transactions fail until ``heal``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.failing = True
        self.failures = 0
        original = LmdbIndex.commit
        index = self

        def commit(self_: LmdbIndex, entries, before_commit=None):  # type: ignore[no-untyped-def]
            if threading.current_thread().name == "index-applier" and index.failing:
                index.failures += 1
                raise OSError("the index's disk failed")
            return original(self_, entries, before_commit=before_commit)

        monkeypatch.setattr(LmdbIndex, "commit", commit)

    def heal(self) -> None:
        self.failing = False


def test_while_the_applier_cannot_index_c_stores_are_refused_and_reads_say_so(
    serving, tmp_path, monkeypatch
):
    archive, peer = serving
    first, second, third = ct_corpus(tmp_path / "ct", 3, rows=32, columns=32)
    failing = FailingIndex(monkeypatch)
    acknowledged = storescu(peer, [first.path])
    assert "Received Store Response (Success)" in acknowledged.stderr
    deadline = time.monotonic() + 10
    while failing.failures < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert failing.failures >= 2, "the applier retries"
    # Acknowledged, not indexed: a read is told so rather than answered without it.
    with pytest.raises(IndexUnavailable, match="disk failed"):
        archive.resolve(first.sop_instance_uid)
    refused = storescu(peer, [second.path], check=False)
    assert "Received Store Response (Refused: OutOfResources)" in refused.stderr
    [imported] = archive.ingest_all([("x", second.path.read_bytes())], "test")
    assert imported.status == "failed" and "disk failed" in (imported.reason or "")
    failing.heal()
    deadline = time.monotonic() + 10
    while True:  # the retry (backing off up to 5 s) indexes it
        try:
            assert len(archive.resolve(first.sop_instance_uid)) == 1
            break
        except IndexUnavailable:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert "Received Store Response (Success)" in storescu(peer, [third.path]).stderr
    indexed = {r.key for r in archive.instances()}
    assert indexed == {first.sop_instance_uid, third.sop_instance_uid}
    # Nothing left behind the marks: a reopening would replay nothing.
    assert archive.store.history(archive.index.applied()) == []


def test_a_batch_given_up_at_close_is_replayed_at_the_next_open(tmp_path, monkeypatch):
    settings = config.load(root=tmp_path / "archive", environ={})
    settings["dicom"].update(host="127.0.0.1", port=free_port())
    archive = Archive(settings)
    server = DicomServer(archive, settings)
    _, port = server.start()
    [ct] = ct_corpus(tmp_path / "ct", 1, rows=32, columns=32)
    failing = FailingIndex(monkeypatch)
    try:
        peer = SimpleNamespace(aet=settings["dicom"]["aet"], port=port)
        assert "Received Store Response (Success)" in storescu(peer, [ct.path]).stderr
        while failing.failures == 0:
            time.sleep(0.01)
    finally:
        server.stop()
        archive.close()  # the applier gives up: the marks stay before the record
    del archive, server  # release its packs' locks: they are for another process to replay
    gc.collect()
    failing.heal()
    assert [i["key"] for i in Cli(settings.root, tmp_path).ls("instances")] == [ct.sop_instance_uid]


def test_a_kill_right_after_the_responses_loses_nothing_acknowledged(tmp_path):
    server = Server(tmp_path, {}).start()
    corpus = ct_corpus(tmp_path / "ct", 20, rows=64, columns=64)
    result = storescu(server, [c.path for c in corpus])
    assert result.stderr.count("Received Store Response (Success)") == 20
    server.kill()  # the index may not have applied the last ones
    server.start()
    try:
        listed = {i["key"] for i in server.cli.ls("instances")}
        assert listed == {c.sop_instance_uid for c in corpus}
        assert server.run("verify").returncode == 0
    finally:
        assert server.stop() == 0
