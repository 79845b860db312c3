"""Misbehaving peers against a live listener (issue 13): scripted PDU sequences that break
the Upper Layer protocol one way each — out of order, lengths that lie, PDVs that overrun,
fragments never finished, contexts never negotiated — and random sequences. Each is answered
as PS3.8 says (A-ABORT with its reason, 9.3.8; a release, 9.3.6), logged with why, and the
listener goes on serving everyone else."""

from __future__ import annotations

import random
import struct
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from dicomvault.bench.corpus import ct_corpus
from tests.net.conftest import Server, dcmtk, storescu
from tests.net.peer import (
    A_ABORT,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_RELEASE_RP,
    INVALID_PDU_PARAMETER_VALUE,
    P_DATA_TF,
    RELEASE_RQ,
    UNEXPECTED_PDU,
    UNRECOGNIZED_PDU,
    Peer,
    abort_reason,
    echo_command,
    p_data,
    pdu,
    pdv,
)
from tests.net.test_robustness import associate_rq

TIMEOUT_S = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(
        tmp_path_factory.mktemp("misbehaving"),
        {},
        sections={
            "dicom": {
                "association_timeout_s": TIMEOUT_S,
                "dimse_timeout_s": TIMEOUT_S,
                "max_pdu": 65536,
                "max_associations_per_ae": 64,
                "max_associations": 64,
            }
        },
    ).start()
    yield srv
    assert srv.alive
    assert srv.stop() == 0


# Before the association (PS3.8 9.2 state Sta2: anything but an A-ASSOCIATE-RQ is aborted).
OPENINGS = {
    "P-DATA-TF before A-ASSOCIATE-RQ": (
        p_data(pdv(1, echo_command())),
        UNEXPECTED_PDU,
        "a PDU of type 0x04 before any A-ASSOCIATE-RQ",
    ),
    "A-RELEASE-RQ before A-ASSOCIATE-RQ": (
        RELEASE_RQ,
        UNEXPECTED_PDU,
        "a PDU of type 0x05 before any A-ASSOCIATE-RQ",
    ),
    "unknown PDU type": (
        pdu(0x42, b"\x00" * 8),
        UNRECOGNIZED_PDU,
        "a PDU of type 0x42 before any A-ASSOCIATE-RQ",
    ),
    "A-ASSOCIATE-RQ of 16 MiB announced": (
        struct.pack(">BBI", 0x01, 0, 16 << 20) + b"\x00" * 64,
        INVALID_PDU_PARAMETER_VALUE,
        "an A-ASSOCIATE-RQ of 16777216 bytes",
    ),
    "A-ASSOCIATE-RQ whose items overrun it": (
        associate_rq()[:-6] + b"\x51\x00\xff\xff\x00\x00",
        INVALID_PDU_PARAMETER_VALUE,
        "runs past its PDU",
    ),
}


@pytest.mark.parametrize("case", OPENINGS, ids=list(OPENINGS))
def test_what_comes_before_an_association_is_aborted(server, case):
    payload, reason, logged = OPENINGS[case]
    with Peer(server.port) as peer:
        peer.send(payload)
        received, _ = peer.ending()
    assert abort_reason(received) == reason, received
    assert server.logged(logged)


# Within an association (Sta6).
ASSOCIATED = {
    "a second A-ASSOCIATE-RQ": (
        [associate_rq()],
        UNEXPECTED_PDU,
        "aborted (unexpected PDU of type 0x01)",
    ),
    "an A-RELEASE-RP never asked for": (
        [pdu(A_RELEASE_RP, bytes(4))],
        UNEXPECTED_PDU,
        "aborted (unexpected PDU of type 0x06)",
    ),
    "an unknown PDU type": (
        [pdu(0x09, bytes(4))],
        UNRECOGNIZED_PDU,
        "aborted (unexpected PDU of type 0x09)",
    ),
    "a PDV that overruns its PDU": (
        [pdu(P_DATA_TF, struct.pack(">IBB", 500, 1, 3) + b"\x00" * 10)],
        INVALID_PDU_PARAMETER_VALUE,
        "aborted (malformed PDU: PDV item of 500 bytes",
    ),
    "a PDV shorter than its header": (
        [pdu(P_DATA_TF, struct.pack(">IBB", 1, 1, 3))],
        INVALID_PDU_PARAMETER_VALUE,
        "aborted (malformed PDU: PDV item of 1 bytes",
    ),
    "a command on a context never negotiated": (
        [p_data(pdv(99, echo_command()))],
        INVALID_PDU_PARAMETER_VALUE,
        "aborted (PDV on presentation context 99, not accepted)",
    ),
    "a data set before any command": (
        [p_data(pdv(1, b"\x08\x00\x18\x00\x02\x00\x00\x00ab", command=False))],
        UNEXPECTED_PDU,
        "aborted (data set without a command)",
    ),
    "a command set that cannot be read": (
        [p_data(pdv(1, b"\x00\x00\x00\x01\xff\xff\xff\x7f"))],
        UNEXPECTED_PDU,
        "aborted (unreadable command)",
    ),
    "a P-DATA-TF over the maximum length": (
        [p_data(pdv(1, bytes(70000)))],
        INVALID_PDU_PARAMETER_VALUE,
        "aborted (PDU larger than the 65536 bytes negotiated)",
    ),
    "a command fragment, then silence": (
        [p_data(pdv(1, echo_command()[:20], last=False))],
        0,  # not specified: the DIMSE timeout
        "aborted (peer silent past the DIMSE timeout)",
    ),
}


@pytest.mark.parametrize("case", ASSOCIATED, ids=list(ASSOCIATED))
def test_what_breaks_an_association_is_aborted_with_its_reason(server, case):
    pdus, reason, logged = ASSOCIATED[case]
    with Peer(server.port) as peer:
        peer.associate(calling=case[:16].upper().encode())
        for data in pdus:
            peer.send(data)
        received, took = peer.ending()
    assert abort_reason(received) == reason, received
    assert took < TIMEOUT_S + 1.5
    assert server.logged(logged)


def test_a_release_with_a_command_unfinished_is_released_and_logged(server):
    with Peer(server.port) as peer:
        peer.associate(calling=b"UNFINISHED")
        peer.send(p_data(pdv(1, echo_command()[:20], last=False)))
        peer.send(RELEASE_RQ)
        received, _ = peer.ending()
    assert [kind for kind, _ in received] == [A_RELEASE_RP]
    assert server.logged("UNFINISHED@127.0.0.1 released with a command unfinished (dropped)")


def test_a_well_behaved_association_is_answered(server):
    """The scripts' own baseline: the same bytes, in order, are a C-ECHO that succeeds."""
    with Peer(server.port) as peer:
        peer.associate(calling=b"GOOD")
        peer.send(p_data(pdv(1, echo_command(7))))
        kind, body = peer.receive()
        assert kind == P_DATA_TF
        # The C-ECHO-RSP's Status (0000,0900) is 0x0000.
        assert b"\x00\x00\x00\x09\x02\x00\x00\x00\x00\x00" in body
        peer.send(RELEASE_RQ)
        assert peer.receive()[0] == A_RELEASE_RP


def random_sequence(rng: random.Random) -> list[bytes]:
    """A valid start cut, mutated and followed by PDUs of random types and lying lengths."""
    pieces = [associate_rq(calling=b"FUZZ")]
    if rng.random() < 0.3:
        cut = rng.randrange(len(pieces[0]))
        pieces[0] = pieces[0][:cut] + bytes([rng.randrange(256)]) + pieces[0][cut + 1 :]
    for _ in range(rng.randrange(1, 5)):
        kind = rng.choice([0x01, 0x02, 0x03, 0x04, 0x04, 0x04, 0x05, 0x06, 0x07, 0x0A, 0xFF])
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
        if kind == 0x04 and rng.random() < 0.7:
            data = echo_command() if rng.random() < 0.5 else body
            body = pdv(rng.choice([1, 1, 3, 255]), data, rng.random() < 0.7, rng.random() < 0.7)
            if rng.random() < 0.3:  # the PDV's length lies
                body = struct.pack(">I", rng.randrange(1 << 32)) + body[4:]
        length = len(body) if rng.random() < 0.8 else rng.randrange(1 << 32)
        pieces.append(struct.pack(">BBI", kind, 0, length) + body)
    return pieces


def run_random(seed: int, port: int) -> float:
    rng = random.Random(seed)
    with Peer(port, timeout=TIMEOUT_S * 3 + 5) as peer:
        try:
            for piece in random_sequence(rng):
                peer.send(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        received, took = peer.ending()
    # Whatever was sent, the listener ends the connection: at once, or by a timeout.
    kinds = {kind for kind, _ in received}
    assert kinds <= {A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF, A_RELEASE_RP, A_ABORT}
    return took


def test_random_pdu_sequences_never_stop_the_others(server, tmp_path):
    corpus = ct_corpus(tmp_path / "ct", 4, rows=64, columns=64)
    served = threading.Event()

    def others() -> None:
        for g in corpus:
            storescu(server, [g.path], aet="BYSTANDER")
            dcmtk("echoscu", "-aet", "BYSTANDER", "-aec", server.aet, "127.0.0.1", server.port)
        served.set()

    bystander = threading.Thread(target=others)
    bystander.start()
    with ThreadPoolExecutor(8) as pool:
        took = list(pool.map(lambda seed: run_random(seed, server.port), range(160)))
    bystander.join(timeout=120)
    assert served.is_set()
    assert max(took) < TIMEOUT_S * 2 + 2
    stored = {i["key"] for i in server.cli.ls("instances")}
    assert {g.sop_instance_uid for g in corpus} <= stored
