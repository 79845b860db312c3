"""A raw DICOM Upper Layer peer for the listener tests: PDUs built and read byte by byte
(PS3.8 9.3), so that a test can send what no toolkit would."""

from __future__ import annotations

import socket
import struct
import time

from tests.net.test_robustness import associate_rq

# PDU types (PS3.8 9.3.1).
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

# A-ABORT reasons of the service provider (PS3.8 Table 9-26).
UNRECOGNIZED_PDU = 1
UNEXPECTED_PDU = 2
INVALID_PDU_PARAMETER_VALUE = 6

RELEASE_RQ = struct.pack(">BBI", A_RELEASE_RQ, 0, 4) + bytes(4)


def pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBI", kind, 0, len(body)) + body


def pdv(context_id: int, data: bytes, command: bool = True, last: bool = True) -> bytes:
    """One PDV item: its length counts the context ID and header bytes."""
    header = int(command) | (int(last) << 1)
    return struct.pack(">IBB", len(data) + 2, context_id, header) + data


def p_data(*pdvs: bytes) -> bytes:
    return pdu(P_DATA_TF, b"".join(pdvs))


def echo_command(message_id: int = 1) -> bytes:
    """A C-ECHO-RQ command set (PS3.7 9.3.5), Implicit VR Little Endian."""

    def element(tag: int, value: bytes) -> bytes:
        return struct.pack("<HHI", 0, tag, len(value)) + value

    body = (
        element(0x0002, b"1.2.840.10008.1.1\x00")
        + element(0x0100, struct.pack("<H", 0x0030))
        + element(0x0110, struct.pack("<H", message_id))
        + element(0x0800, struct.pack("<H", 0x0101))
    )
    return element(0x0000, struct.pack("<I", len(body))) + body


class Peer:
    """One connection to the listener."""

    def __init__(self, port: int, timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def associate(self, calling: bytes = b"RAW") -> None:
        """A-ASSOCIATE-RQ proposing Verification on context 1; asserts it is accepted."""
        self.send(associate_rq(calling=calling))
        kind, _ = self.receive()
        assert kind == A_ASSOCIATE_AC

    def receive(self) -> tuple[int, bytes]:
        """The next PDU (type, body); (0, b"") when the listener closed the connection."""
        header = self._exactly(6)
        if len(header) < 6:
            return 0, b""
        kind, _, length = struct.unpack(">BBI", header)
        return kind, self._exactly(length)

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            try:
                chunk = self.sock.recv(n - len(data))
            except ConnectionResetError:
                return data
            if not chunk:
                break
            data += chunk
        return data

    def ending(self) -> tuple[list[tuple[int, bytes]], float]:
        """Every PDU until the listener closes, and how long that took."""
        started = time.monotonic()
        received = []
        while True:
            kind, body = self.receive()
            if kind == 0:
                return received, time.monotonic() - started
            received.append((kind, body))


def abort_reason(received: list[tuple[int, bytes]]) -> int | None:
    """The reason of the service provider's A-ABORT among ``received`` (source 2), if any."""
    for kind, body in received:
        if kind == A_ABORT and len(body) == 4 and body[2] == 2:
            return body[3]
    return None
