"""The Rust SCU (``net/bulk.py``) against Orthanc: C-FIND answers decoded in Rust, C-GET
sub-operations checked and stored through the listener's receive path, C-MOVE; and the
vocabulary it shares with pynetdicom without importing it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydicom.uid import (
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.presentation import AllStoragePresentationContexts, StoragePresentationContexts

from dicomvault import config
from dicomvault.bench.corpus import ct_corpus
from dicomvault.index import Level
from dicomvault.net import query, vocabulary
from dicomvault.net.bulk import BulkScu
from dicomvault.net.policy import Modality
from dicomvault.net.vocabulary import ScuError
from dicomvault.store import Archive
from tests.net.conftest import Orthanc, dcmtk


def test_the_vocabulary_is_pynetdicoms_and_pydicoms():
    assert (
        tuple(str(cx.abstract_syntax) for cx in StoragePresentationContexts)
        == vocabulary.STORAGE_SOP_CLASSES
    )
    # Every storage SOP class pynetdicom knows, the retired ones of its usual list included
    # (DCMTK's storescp and Orthanc take them too: old archives hold retired US images).
    every = {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}
    every |= set(vocabulary.STORAGE_SOP_CLASSES)
    assert sorted(vocabulary.ALL_STORAGE_SOP_CLASSES) == sorted(every)
    assert query.STUDY_ROOT == vocabulary.STUDY_ROOT
    # The listener's order: Explicit VR Little Endian, then the encapsulated syntaxes (kept as
    # sent), then the other native ones.
    native = [
        ExplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        ImplicitVRLittleEndian,
    ]
    encapsulated = [str(ts) for ts in AllTransferSyntaxes if ts not in native]
    assert (
        tuple([str(native[0]), *encapsulated, *map(str, native[1:])])
        == vocabulary.ACCEPTED_SYNTAXES
    )


def test_a_migration_never_imports_pydicom_or_pynetdicom(tmp_path):
    """They cost a migration's start-up more than half a second; the SCU, the store-only
    listener and the pipeline do without them."""
    code = (
        "import sys; from dicomvault import config; from dicomvault.store import Archive; "
        "import dicomvault.cli.app, dicomvault.migrate.pacs, dicomvault.net.bulk; "
        "from dicomvault.net.listener import StoreListener; "
        f"settings = config.load(None, root={str(tmp_path / 'a')!r}); "
        "settings['dicom']['port'] = 0; archive = Archive(settings); "
        "listener = StoreListener(archive, settings); listener.start(); listener.stop(); "
        "archive.close(); "
        "loaded = [m for m in ('pydicom', 'pynetdicom', 'numpy') if m in sys.modules]; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


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
            got = scu.get(Level.STUDY, {"StudyInstanceUID": first}, studies=[first])
            assert got.ok and got.completed == 3 and not got.refused
            # Another study's instances are refused (0xA900), none stored.
            refused = scu.get(Level.STUDY, {"StudyInstanceUID": other}, studies=[first])
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
