"""The Rust SCU (``net/bulk.py``) against Orthanc: C-FIND answers decoded in Rust, C-GET
sub-operations checked and stored through the listener's receive path, C-MOVE; and the
vocabulary it shares with pynetdicom without importing it."""

from __future__ import annotations

import pytest
from pynetdicom.presentation import StoragePresentationContexts

from dicomvault import config
from dicomvault.bench.corpus import ct_corpus
from dicomvault.index import Level
from dicomvault.net import query, vocabulary
from dicomvault.net.bulk import BulkScu
from dicomvault.net.policy import Modality
from dicomvault.net.vocabulary import ScuError
from dicomvault.store import Archive
from tests.net.conftest import Orthanc, dcmtk


def test_the_vocabulary_is_pynetdicoms():
    assert (
        tuple(str(cx.abstract_syntax) for cx in StoragePresentationContexts)
        == vocabulary.STORAGE_SOP_CLASSES
    )
    assert query.STUDY_ROOT == vocabulary.STUDY_ROOT


@pytest.fixture
def orthanc(tmp_path):
    corpus = ct_corpus(tmp_path / "corpus", 6, rows=16, columns=16, studies=2)
    peer = Orthanc(tmp_path, {"vault": ["DICOMVAULT", "127.0.0.1", 1]})
    dcmtk("storescu", "-aec", "ORTHANC", "127.0.0.1", peer.dicom_port, *[g.path for g in corpus])
    yield peer, corpus
    peer.stop()


def test_find_get_and_refusals_against_orthanc(tmp_path, orthanc):
    peer, corpus = orthanc
    settings = config.load(None, root=tmp_path / "archive")
    source = Modality("pacs", "ORTHANC", "127.0.0.1", peer.dicom_port)
    with Archive(settings) as archive:
        scu = BulkScu(settings, source, archive)
        try:
            studies = scu.find(Level.STUDY, {"StudyInstanceUID": "", "PatientID": ""})
            assert {m["StudyInstanceUID"] for m in studies.matches} == {
                g.study_instance_uid for g in corpus
            }
            assert not studies.cancelled
            first, other = sorted({g.study_instance_uid for g in corpus})
            # A study's instances come back through the receive path, checked against it.
            got = scu.get(Level.STUDY, {"StudyInstanceUID": first}, study=first)
            assert got.ok and got.completed == 3 and not got.refused
            # Another study's instances are refused (0xA900), none stored.
            refused = scu.get(Level.STUDY, {"StudyInstanceUID": other}, study=first)
            assert refused.failed == 3 and len(refused.refused) == 3
            assert all("asked for study" in why for _, why in refused.refused)
            with pytest.raises(ScuError, match="unknown DICOM keyword"):
                scu.find(Level.STUDY, {"NotAKeyword": ""})
        finally:
            scu.close()
        held = {
            m["SOPInstanceUID"]
            for m in archive.index.find(Level.IMAGE, {}, ["SOPInstanceUID", "StudyInstanceUID"])
        }
    assert held == {g.sop_instance_uid for g in corpus if g.study_instance_uid == first}
