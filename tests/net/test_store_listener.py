"""The store-only listener a migration's C-MOVE sends to (``net/listener.py``), against
pynetdicom as the peer: C-ECHO and C-STORE as ``serve`` takes them, every query/retrieve
presentation context rejected at negotiation (PS3.8 9.3.3.2: result 3, abstract syntax not
supported), a storage commitment request refused (0x0124, PS3.7 10.1.4.1.10); and `migrate
pacs --method move` saying why when its port is taken."""

from __future__ import annotations

import socket

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (
    CTImageStorage,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dicomvault import config
from dicomvault.bench.corpus import ct_corpus
from dicomvault.bench.peers import free_port
from dicomvault.index import Level
from dicomvault.net.listener import StoreListener
from dicomvault.net.status import NOT_AUTHORIZED, SUCCESS
from dicomvault.store import Archive
from tests.conftest import Cli

QUERY_RETRIEVE = (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)


@pytest.fixture
def listening(tmp_path):
    settings = config.load(None, root=tmp_path / "archive")
    settings["dicom"]["host"] = "127.0.0.1"
    settings["dicom"]["port"] = free_port()
    archive = Archive(settings)
    listener = StoreListener(archive, settings)
    _, port = listener.start()
    try:
        yield archive, port
    finally:
        listener.stop()
        archive.close()


def test_it_stores_and_echoes_and_rejects_query_retrieve_and_commitment(tmp_path, listening):
    archive, port = listening
    [instance] = ct_corpus(tmp_path / "corpus", 1, rows=16, columns=16)
    ae = AE(ae_title="SOURCE")
    for sop_class in (Verification, CTImageStorage, StorageCommitmentPushModel, *QUERY_RETRIEVE):
        ae.add_requested_context(sop_class)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMVAULT")
    assert assoc.is_established
    try:
        rejected = {str(cx.abstract_syntax) for cx in assoc.rejected_contexts}
        assert rejected == {str(uid) for uid in QUERY_RETRIEVE}
        assert assoc.send_c_echo().Status == SUCCESS
        ds = pydicom.dcmread(instance.path)
        assert assoc.send_c_store(ds).Status == SUCCESS
        request = Dataset()
        request.TransactionUID = generate_uid()
        reference = Dataset()
        reference.ReferencedSOPClassUID = ds.SOPClassUID
        reference.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        request.ReferencedSOPSequence = [reference]
        status, _ = assoc.send_n_action(
            request, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1"
        )
        assert status.Status == NOT_AUTHORIZED
    finally:
        assoc.release()
    archive.wait_until_indexed()
    [held] = archive.matches(Level.IMAGE, {}, ["SOPInstanceUID"])
    assert held["SOPInstanceUID"] == instance.sop_instance_uid


def test_a_move_migration_whose_port_is_taken_says_so(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        conf = tmp_path / "dicomvault.toml"
        conf.write_text(
            f'[dicom]\nhost = "127.0.0.1"\nport = {port}\n'
            f'[modalities.pacs]\naet = "PACS"\nhost = "127.0.0.1"\nport = {free_port()}\n'
        )
        cli = Cli(tmp_path / "archive", tmp_path)
        result = cli.run(
            "migrate", "pacs", "pacs", "--method", "move", "--config", conf, check=False
        )
    assert result.returncode == 1
    assert f"cannot listen for the source's C-STOREs on port {port}" in result.stderr
    assert "is `dicomvault serve` running?" in result.stderr
