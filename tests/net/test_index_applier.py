"""The listener acknowledges a C-STORE once its manifest record is durable in the pack log;
the archive's applier indexes it afterwards. Reads wait for what was acknowledged before them,
writers that index in one step wait for the applier, and what the applier could not index is
replayed when the archive opens."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from dicomvault import config
from dicomvault.bench.corpus import ct_corpus
from dicomvault.bench.peers import free_port
from dicomvault.index.lmdb_index import Index
from dicomvault.net.scp import DicomServer
from dicomvault.store import Archive
from tests.conftest import Cli
from tests.net.conftest import Server, storescu


class HeldApplier:
    """Holds the applier's index transactions until ``release`` (or fails them)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()
        original = Index.commit
        held = self

        def commit(index: Index, entries, before_commit=None):  # type: ignore[no-untyped-def]
            if threading.current_thread().name == "index-applier":
                held.entered.set()
                held.released.wait(30)
                if fail:
                    raise OSError("the index's disk failed")
            return original(index, entries, before_commit=before_commit)

        monkeypatch.setattr(Index, "commit", commit)

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


def test_what_the_applier_failed_to_index_is_replayed_at_the_next_open(tmp_path):
    # An index map too small for a single instance: every C-STORE is acknowledged (its record
    # is durable in the pack log), none is indexed until the map is enlarged.
    server = Server(tmp_path, {}, sections={"index": {"map_size": 65536}}).start()
    corpus = ct_corpus(tmp_path / "ct", 3, rows=32, columns=32)
    try:
        result = storescu(server, [c.path for c in corpus])
        assert result.stderr.count("Received Store Response (Success)") == 3
        assert server.logged("replayed at the next open")
    finally:
        assert server.stop() == 0
    elsewhere = tmp_path / "elsewhere"  # away from the server's ./dicomvault.toml
    elsewhere.mkdir()
    cli = Cli(server.root, elsewhere)  # the default map size
    listed = cli.ls("instances")
    assert {i["key"] for i in listed} == {c.sop_instance_uid for c in corpus}
    assert cli.run("verify").returncode == 0


def test_a_failed_batch_is_not_passed_by_the_marks_of_later_ones(serving, tmp_path, monkeypatch):
    archive, peer = serving
    corpus = ct_corpus(tmp_path / "ct", 3, rows=32, columns=32)
    original = Index.commit
    calls: list[int] = []

    def commit(index: Index, entries, before_commit=None):  # type: ignore[no-untyped-def]
        if threading.current_thread().name == "index-applier":
            calls.append(len(entries))
            if len(calls) == 1:
                raise OSError("the index's disk failed")
        return original(index, entries, before_commit=before_commit)

    monkeypatch.setattr(Index, "commit", commit)
    for instance in corpus:  # one association each: one batch each
        storescu(peer, [instance.path])
    indexed = {r.key for r in archive.instances()}
    assert indexed == {c.sop_instance_uid for c in corpus[1:]}
    # The marks stayed before the failed record: opening the archive replays from there.
    pending = archive.store.history(archive.index.applied())
    assert len(pending) == 3
    archive.replay(archive.index.applied())
    assert {r.key for r in archive.instances()} == {c.sop_instance_uid for c in corpus}
    with pytest.raises(RuntimeError, match="restart"):
        archive.repack("none", 3)


def test_a_kill_right_after_the_responses_loses_nothing_acknowledged(tmp_path):
    server = Server(tmp_path, {}).start()
    corpus = ct_corpus(tmp_path / "ct", 20, rows=64, columns=64)
    result = storescu(server, [c.path for c in corpus])
    assert result.stderr.count("Received Store Response (Success)") == 20
    assert server.proc is not None
    server.proc.send_signal(signal.SIGKILL)  # the index may not have applied the last ones
    server.proc.wait()
    server.proc = None
    server.log_file.close()
    server.start()
    try:
        listed = {i["key"] for i in server.cli.ls("instances")}
        assert listed == {c.sop_instance_uid for c in corpus}
        assert server.run("verify").returncode == 0
    finally:
        assert server.stop() == 0
