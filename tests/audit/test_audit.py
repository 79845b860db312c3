"""The audit trail against a running server: each C-STORE, C-FIND, C-GET, C-MOVE, REST and
DICOMweb read, export, delete and command has its record naming the right patient, studies
and user (or calling AE title and address); `dicomvault audit` filters them; the records reach
a syslog collector as RFC 5424 messages carrying DICOM Audit Messages (PS3.15 A.5); a SIGKILL
right after an acknowledged C-STORE keeps its record, and a store the log has but the index
had not applied gets its record when the archive opens, once."""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import socket
import threading
import xml.etree.ElementTree as ET

import pydicom
import pytest

from dicomvault import _native
from dicomvault.audit import read_records
from dicomvault.bench.corpus import clinical_corpus, small_corpus
from dicomvault.config import load
from dicomvault.security.accounts import Role
from dicomvault.store import Archive
from tests.conftest import Cli
from tests.net.conftest import Server, StoreSCP, movescu, storescu
from tests.net.test_dcmtk_peers import QR, findscu, getscu
from tests.security.helpers import Secured


class Collector:
    """A syslog collector on TCP (RFC 6587 octet counting): the messages it received."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.messages: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(connection,), daemon=True).start()

    def _read(self, connection: socket.socket) -> None:
        buffer = b""
        with connection:
            while chunk := connection.recv(65536):
                buffer += chunk
                while (space := buffer.find(b" ")) > 0 and len(buffer) >= space + 1 + int(
                    buffer[:space]
                ):
                    length = int(buffer[:space])
                    self.messages.append(buffer[space + 1 : space + 1 + length])
                    buffer = buffer[space + 1 + length :]


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audit")
    storescp = StoreSCP(tmp)
    collector = Collector()
    secured = Secured(
        tmp,
        modalities={
            "WORKSTATION": {"aet": QR, "host": "127.0.0.1", "port": 1},
            "STORESCP": {"aet": storescp.aet, "host": "127.0.0.1", "port": storescp.port},
        },
        sections={"audit": {"syslog": f"tcp://127.0.0.1:{collector.port}"}},
    ).start()
    corpus = clinical_corpus(tmp / "corpus")
    yield secured, corpus, collector
    assert secured.server.stop() == 0
    storescp.stop()


def records(server: Server, **filters: str) -> list[dict]:
    argv = [arg for k, v in filters.items() for arg in (f"--{k}", v)]
    out = server.run("audit", "--json", *argv).stdout
    return [json.loads(line) for line in out.splitlines()]


def only(found: list[dict], **fields: object) -> list[dict]:
    return [r for r in found if all(r.get(k) == v for k, v in fields.items())]


def test_each_operation_has_its_record(audited, tmp_path):
    secured, corpus, collector = audited
    server = secured.server
    doe = [g for g in corpus if g.patient_id == "P0005"]
    study = doe[0].study_instance_uid
    for g in doe:
        storescu(server, [g.path], g.transfer_syntax, aet="MODALITY")
    others = [g for g in corpus if g.patient_id != "P0005"][:3]
    for g in others:
        storescu(server, [g.path], g.transfer_syntax, aet="MODALITY")

    # C-STORE: one record per instance, from the calling AE at its address.
    stores = only(records(server, patient="P0005"), event="store")
    assert {r["detail"]["instance"] for r in stores} == {g.sop_instance_uid for g in doe}
    assert all(r["ae"] == "MODALITY" and r["address"] == "127.0.0.1" for r in stores)
    assert {s for r in stores for s in r["studies"]} == {g.study_instance_uid for g in doe}
    assert stores[0]["patients"][0]["name"] == "Doe^Jane"

    # C-FIND, C-GET, C-MOVE by a known AE.
    findscu(server, "STUDY", {"PatientName": "doe*", "StudyInstanceUID": ""}, tmp_path)
    getscu(server, tmp_path / "got", QueryRetrieveLevel="STUDY", StudyInstanceUID=study)
    movescu(server, QR, "STORESCP", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": study})
    mine = records(server, patient="P0005", user=QR)
    (query,) = only(mine, event="query")
    assert query["detail"]["keys"]["PatientName"] == "doe*" and query["via"] == "dicom"
    assert set(query["studies"]) == {g.study_instance_uid for g in doe}
    get, move = only(mine, event="retrieve")
    assert get["what"] == "C-GET" and move["what"] == "C-MOVE"
    assert get["studies"] == [study] == move["studies"]
    assert move["detail"]["destination"].startswith("STORESCP@127.0.0.1")
    assert get["detail"]["instances"] == sum(g.study_instance_uid == study for g in doe)

    # An unknown AE is refused C-FIND: a denied record.
    findscu(server, "STUDY", {"PatientID": "P0005"}, tmp_path, aet="STRANGER")
    assert only(records(server, user="STRANGER"), event="query", outcome="denied")

    # REST and DICOMweb reads, an export, a delete: by user.
    reader = secured.client(Role.READ)
    series = doe[0].series_instance_uid
    instance = doe[0].sop_instance_uid
    assert reader.get(f"/studies/{study}").status_code == 200
    assert reader.get(f"/studies/{study}/archive").status_code == 200
    assert reader.get(f"/instances/{instance}/tags").status_code == 200
    metadata = f"/dicom-web/studies/{study}/series/{series}/instances/{instance}/metadata"
    assert reader.get(metadata).status_code == 200
    assert reader.get("/dicom-web/studies", params={"PatientID": "P0005"}).status_code == 200
    wado = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": instance}
    assert (
        reader.get("/wado", params=wado | {"contentType": "application/dicom"}).status_code == 200
    )
    by_reader = records(server, user="token:reader-token")
    events = [(r["event"], r["what"].split("?")[0]) for r in by_reader]
    assert events == [
        ("read", f"GET /studies/{study}"),
        ("export", f"GET /studies/{study}/archive"),
        ("read", f"GET /instances/{instance}/tags"),
        ("read", f"GET {metadata}"),
        ("query", "GET /dicom-web/studies"),
        ("read", "GET /wado"),
    ]
    assert all(r["patients"][0]["id"] == "P0005" for r in by_reader)
    assert all(r["studies"] == [study] for r in by_reader if r["event"] != "query")

    server.run("export", study, "--out", tmp_path / "exported")
    (export,) = only(records(server, patient="P0005"), event="export", via="cli")
    assert export["studies"] == [study] and export["user"]

    boss = secured.client(Role.ADMIN)
    assert boss.delete(f"/studies/{study}").status_code == 200
    (delete,) = only(records(server, patient="P0005"), event="delete")
    assert delete["user"] == "token:boss-token" and delete["studies"] == [study]

    # --since leaves out what came before.
    later = records(server, since=delete["time"])
    assert delete in later and not any(r["time"] < delete["time"] for r in later)

    # The same records reached syslog as DICOM Audit Messages.
    trail = list(read_records(server.root / "audit"))
    messages = collector.messages
    assert len(messages) == len(trail)
    header = re.compile(rb"<85>1 \S+Z \S+ dicomvault \d+ IHE\+RFC-3881 - \xef\xbb\xbf")
    assert all(header.match(m) for m in messages)
    parsed = [ET.fromstring(header.sub(b"", m, count=1)) for m in messages]
    deleted = [
        m for m in parsed if m.find("EventIdentification/EventID").get("csd-code") == "110105"
    ]
    assert len(deleted) == 1
    (event,) = deleted
    assert event.find("EventIdentification").get("EventActionCode") == "D"
    assert event.find("ActiveParticipant").get("UserID") == "token:boss-token"
    objects = {
        o.find("ParticipantObjectIDTypeCode").get("csd-code"): o.get("ParticipantObjectID")
        for o in event.findall("ParticipantObjectIdentification")
    }
    assert objects == {"2": "P0005", "110180": study}  # patient number, study UID
    stored = [m for m in parsed if m.find("EventIdentification").get("EventActionCode") == "C"]
    roles = {
        p.get("UserID"): p.find("RoleIDCode").get("csd-code")
        for p in stored[0].findall("ActiveParticipant")
    }
    assert roles["MODALITY"] == "110153"  # the modality was the source of the transfer


def test_a_sigkill_right_after_an_acknowledged_c_store_keeps_its_record(tmp_path):
    server = Server(tmp_path, {}).start()
    (instance,) = small_corpus(tmp_path / "corpus", 1, seed=14)
    storescu(server, [instance.path], instance.transfer_syntax, aet="KILLED")
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(timeout=30)
    found = only(records(server, patient=instance.patient_id), event="store")
    assert [r["detail"]["instance"] for r in found] == [instance.sop_instance_uid]
    assert found[0]["ae"] == "KILLED"
    server.start()
    assert server.stop() == 0
    assert len(only(records(server, patient=instance.patient_id), event="store")) == 1


def test_a_store_the_log_has_and_the_index_lacks_is_recorded_when_the_archive_opens(tmp_path):
    conf = load(None, root=tmp_path / "archive", environ={})
    (instance,) = small_corpus(tmp_path / "corpus", 1, seed=15)
    with Archive(conf) as archive:
        writer = archive.store.writer()
        writer.write(instance.path.read_bytes())
        entry = archive.entry(writer.finish(), "LISTENER@10.0.0.7")
        # What the listener does before its C-STORE-RSP: the manifest durable in the log.
        archive.store.persist(
            [(entry.manifest, _native.annotations(entry.received_at, entry.source))]
        )
    del archive, writer  # the store's lock goes with its last reference
    gc.collect()
    assert not list(read_records(conf.root / "audit"))
    cli = Cli(conf.root, tmp_path)
    for _ in range(2):  # opening replays it and records it; opening again adds nothing
        assert cli.run("stats", "--json").returncode == 0
    (record,) = read_records(conf.root / "audit")
    assert record["event"] == "store" and record["id"].startswith("log:")
    assert (record["ae"], record["address"]) == ("LISTENER", "10.0.0.7")
    assert record["patients"][0]["id"] == pydicom.dcmread(instance.path).PatientID
    assert record["time"] == entry.received_at
