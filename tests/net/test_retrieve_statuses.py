"""C-MOVE and C-GET statuses and their ends as PS3.4 C.4.2 and C.4.3 have them, with
pynetdicom as the requestor and as a destination that is slow on purpose: a known destination
that cannot be reached fails every sub-operation (0xA702, not 0xA801 "unknown destination");
a requestor that aborts ends the work at once; ``serve`` exits within 5 s of SIGTERM whatever
is in flight."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts, build_role
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicomvault.bench.corpus import clinical_corpus
from dicomvault.bench.peers import free_port
from tests.net.conftest import Server, store_corpus

QR = "WORKSTATION"
SUB_OPERATIONS_FAILED = 0xA702
# How long the slow peers take per C-STORE: far longer than any test waits.
SLOW = 60.0


class SlowStoreSCP:
    """A pynetdicom storage SCP that takes SLOW seconds to answer each C-STORE (until told to
    stop)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.receiving = threading.Event()
        self.release = threading.Event()
        ae = AE(ae_title="SLOWSCP")
        ae.supported_contexts = AllStoragePresentationContexts
        self.ae = ae

        def store(event: evt.Event) -> int:
            self.receiving.set()
            self.release.wait(SLOW)
            return 0x0000

        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, store)],
        )

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()


@pytest.fixture
def slow_scp() -> Iterator[SlowStoreSCP]:
    scp = SlowStoreSCP()
    yield scp
    scp.stop()


@pytest.fixture
def stored(tmp_path, slow_scp):
    """A server holding the clinical corpus, knowing a slow destination and one that is not
    there."""
    server = Server(
        tmp_path,
        {
            QR: {"aet": QR, "host": "127.0.0.1", "port": 1},
            "SLOW": {"aet": "SLOWSCP", "host": "127.0.0.1", "port": slow_scp.port},
            "GONE": {"aet": "GONE", "host": "127.0.0.1", "port": free_port()},
        },
    ).start()
    corpus = clinical_corpus(tmp_path / "corpus")
    store_corpus(server, corpus)
    yield server, corpus
    if server.alive:
        server.stop()


def study_identifier(study: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study
    return ds


def requestor(server: Server, *contexts: str, roles: list | None = None):
    ae = AE(ae_title=QR)
    for context in contexts:
        ae.add_requested_context(context)
    assoc = ae.associate("127.0.0.1", server.port, ae_title=server.aet, ext_neg=roles)
    assert assoc.is_established
    return assoc


def test_an_unreachable_destination_fails_every_sub_operation(stored):
    server, corpus = stored
    study = corpus[0].study_instance_uid
    count = sum(g.study_instance_uid == study for g in corpus)
    assoc = requestor(server, StudyRootQueryRetrieveInformationModelMove)
    responses = list(
        assoc.send_c_move(
            study_identifier(study), "GONE", StudyRootQueryRetrieveInformationModelMove
        )
    )
    assoc.release()
    final = responses[-1][0]
    # PS3.4 C.4.2.1.5: every sub-operation failed; the destination is known (not 0xA801).
    assert final.Status == SUB_OPERATIONS_FAILED
    assert final.NumberOfFailedSuboperations == count
    assert final.get("NumberOfCompletedSuboperations", 0) == 0
    assert server.logged("no association with GONE@127.0.0.1")


def test_a_requestor_abort_ends_a_c_move_at_once(stored, slow_scp):
    server, corpus = stored
    study = corpus[0].study_instance_uid
    assoc = requestor(server, StudyRootQueryRetrieveInformationModelMove)
    moving = threading.Thread(
        target=lambda: list(
            assoc.send_c_move(
                study_identifier(study), "SLOWSCP", StudyRootQueryRetrieveInformationModelMove
            )
        ),
        daemon=True,
    )
    moving.start()
    assert slow_scp.receiving.wait(30)  # the first sub-operation is under way, and slow
    aborted = time.monotonic()
    assoc.abort()
    # The association with the destination is aborted at once (the slow SCP, busy in its
    # handler, only notices later), and the requestor's association thread ends.
    assert server.logged("the requestor spoke or left", timeout=5)
    assert server.logged(f"association from {QR}@127.0.0.1 aborted", timeout=5)
    assert time.monotonic() - aborted < 5


def test_serve_exits_within_5_s_of_sigterm_during_a_long_c_get_and_c_move(stored, slow_scp):
    server, corpus = stored
    study = corpus[0].study_instance_uid
    # A C-GET whose requestor is slow to store: the archive waits for its C-STORE-RSP.
    getting = AE(ae_title=QR)
    getting.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for sop_class in (CTImageStorage, MRImageStorage):
        getting.add_requested_context(sop_class)
    roles = [build_role(c, scp_role=True) for c in (CTImageStorage, MRImageStorage)]
    slow_get = threading.Event()

    def store(event: evt.Event) -> int:
        slow_get.set()
        time.sleep(SLOW)
        return 0x0000

    get_assoc = getting.associate(
        "127.0.0.1",
        server.port,
        ae_title=server.aet,
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, store)],
    )
    assert get_assoc.is_established
    threading.Thread(
        target=lambda: list(
            get_assoc.send_c_get(study_identifier(study), StudyRootQueryRetrieveInformationModelGet)
        ),
        daemon=True,
    ).start()
    # And a C-MOVE to a destination slow to answer.
    move_assoc = requestor(server, StudyRootQueryRetrieveInformationModelMove)
    threading.Thread(
        target=lambda: list(
            move_assoc.send_c_move(
                study_identifier(study), "SLOWSCP", StudyRootQueryRetrieveInformationModelMove
            )
        ),
        daemon=True,
    ).start()
    assert slow_get.wait(30) and slow_scp.receiving.wait(30)
    assert server.proc is not None
    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(timeout=30)
    assert time.monotonic() - signalled < 5
    assert code == 0
    getting.shutdown()
