"""Regenerates the fuzz targets' seed corpora (rust/fuzz/corpus/<target>/) from real captures.

Real peers (DCMTK's echoscu, storescu, findscu and getscu, and pynetdicom) talk to a real
`dicomvault serve` through a recording TCP proxy; the recorded streams are split into PDUs
(A-ASSOCIATE-RQ/AC bodies, P-DATA-TF bodies, reassembled command sets, the data sets they
carry). pydicom's test files seed the scanner and the deflate target; the archive's own packs
(the files imported, stored raw and with zstd) give pack images and manifest payloads. Each
seed is named by its SHA-1, as libFuzzer names corpus entries; run `python benches/fuzz.py
--minimize` afterwards to keep only what adds coverage.

    python benches/fuzz_seeds.py
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.filewriter import write_dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)

ROOT = Path(__file__).resolve().parents[1]
# Debian's DCMTK (pynetdicom installs apps of the same names on PATH).
DCMTK = Path("/usr/bin")
CORPUS = ROOT / "rust" / "fuzz" / "corpus"
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
# Small files of every kind: native and encapsulated pixel data, the three native syntaxes,
# sequences, character sets, a deflated one.
NETWORK_FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm"]
SYNTAX_CONTROL = {"1.2.840.10008.1.2": 1, "1.2.840.10008.1.2.1": 2, "1.2.840.10008.1.2.2": 3}
HEAD = 4096  # larger files are kept as their first bytes (scanned as truncated)
MAX_SEED = 8192


def save(target: str, data: bytes) -> None:
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Recorder:
    """A TCP proxy that records both directions of every connection it relays."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections: list[tuple[bytearray, bytearray]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.server.accept()
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            sent, received = bytearray(), bytearray()
            self.connections.append((sent, received))
            threading.Thread(target=self._copy, args=(client, upstream, sent), daemon=True).start()
            threading.Thread(
                target=self._copy, args=(upstream, client, received), daemon=True
            ).start()

    @staticmethod
    def _copy(source: socket.socket, sink: socket.socket, record: bytearray) -> None:
        try:
            while chunk := source.recv(1 << 16):
                record += chunk
                sink.sendall(chunk)
        except OSError:
            pass
        for s in (sink, source):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def pdus(stream: bytes) -> list[tuple[int, bytes]]:
    out, at = [], 0
    while at + 6 <= len(stream):
        kind, length = stream[at], struct.unpack(">I", stream[at + 2 : at + 6])[0]
        out.append((kind, stream[at + 6 : at + 6 + length]))
        at += 6 + length
    return out


def items(body: bytes) -> list[tuple[int, bytes]]:
    out, at = [], 0
    while at + 4 <= len(body):
        length = struct.unpack(">H", body[at + 2 : at + 4])[0]
        out.append((body[at], body[at + 4 : at + 4 + length]))
        at += 4 + length
    return out


def accepted_syntaxes(ac_body: bytes) -> dict[int, str]:
    syntaxes = {}
    for kind, item in items(ac_body[68:]):
        if kind == 0x21 and item[2] == 0:
            for sub, value in items(item[4:]):
                if sub == 0x40:
                    syntaxes[item[0]] = value.decode().rstrip("\0 ")
    return syntaxes


def split_stream(stream: bytes, syntaxes: dict[int, str]) -> None:
    """Seeds from one direction of an association: its PDUs, commands and data sets."""
    messages: dict[tuple[int, bool], bytearray] = {}
    for kind, body in pdus(stream):
        if kind in (0x01, 0x02):
            save("associate", body)
        if kind != 0x04:
            continue
        if len(body) <= MAX_SEED:
            save("pdata", bytes([len(body) % 256]) + body)
        at = 0
        while at + 6 <= len(body):
            length = struct.unpack(">I", body[at : at + 4])[0]
            context, header = body[at + 4], body[at + 5]
            message = messages.setdefault((context, bool(header & 1)), bytearray())
            message += body[at + 6 : at + 4 + length]
            at += 4 + length
            if header & 2:
                if header & 1:
                    save("dimse", bytes(message))
                elif syntaxes.get(context) in SYNTAX_CONTROL:
                    save("scan", bytes([SYNTAX_CONTROL[syntaxes[context]]]) + message[:HEAD])
                message.clear()


def drive_peers(port: int, files: list[Path], study_uid: str, out: Path) -> None:
    env = dict(os.environ, TCP_NODELAY="1")
    host = ["127.0.0.1", str(port)]
    aec = ["-aec", "DICOMVAULT"]
    commands = [
        ["echoscu", *aec, *host],
        ["echoscu", "--abort", *aec, *host],
        ["storescu", *aec, "-pdu", "4096", *host, *map(str, files)],
        ["storescu", "-xi", *aec, *host, str(files[0])],
        ["findscu", "-S", *aec, "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName", *host],
        ["findscu", "-P", *aec, "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=*", *host],
        ["getscu", "-S", *aec, "-k", "QueryRetrieveLevel=STUDY", "-k",
         f"StudyInstanceUID={study_uid}", "-od", str(out), *host],
    ]  # fmt: skip
    for tool, *argv in commands:
        subprocess.run([str(DCMTK / tool), *argv], env=env, capture_output=True, timeout=60)
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1.99")
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    role = build_role(CTImageStorage, scp_role=True)
    handlers = [(evt.EVT_C_STORE, lambda event: 0x0000)]
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMVAULT", ext_neg=[role],
                         evt_handlers=handlers)  # fmt: skip
    if assoc.is_established:
        assoc.send_c_echo()
        query = pydicom.Dataset()
        query.QueryRetrieveLevel = "PATIENT"
        query.PatientName = "*"
        list(assoc.send_c_find(query, PatientRootQueryRetrieveInformationModelFind))
        query = pydicom.Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid
        list(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet))
        assoc.release()


def network_seeds(work: Path) -> None:
    files = [Path(get_testdata_file(name)) for name in NETWORK_FILES]
    study_uid = pydicom.dcmread(files[0]).StudyInstanceUID
    port = free_port()
    root = work / "network"
    server = subprocess.Popen(
        [sys.executable, "-m", "dicomvault", "serve", "--root", str(root), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        recorder = Recorder(port)
        drive_peers(recorder.port, files, study_uid, work / "got")
        time.sleep(1)
    finally:
        server.terminate()
        server.wait(timeout=60)
    for sent, received in recorder.connections:
        ac = next((body for kind, body in pdus(received) if kind == 0x02), b"")
        syntaxes = accepted_syntaxes(ac) if ac else {}
        split_stream(bytes(sent), syntaxes)
        split_stream(bytes(received), syntaxes)


def file_seeds() -> None:
    """Scanner and deflate seeds from pydicom's test files."""
    for n, path in enumerate(sorted(TEST_FILES.glob("*.dcm"))):
        data = path.read_bytes()
        chunk = (n % 16) << 4
        if len(data) > HEAD:
            save("scan", bytes([chunk | 4]) + data[:HEAD])
        else:
            save("scan", bytes([chunk]) + data)
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception:  # a test file pydicom itself cannot read
            continue
        syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
        if syntax == "1.2.840.10008.1.2.1.99":
            # The deflate stream as stored, bare and in the file the target wraps it in.
            # The data set starts after the 12-byte group length element and its group.
            stream = data[132 + 12 + ds.file_meta.FileMetaInformationGroupLength :]
            save("deflate", b"\x00" + stream[:HEAD])
            save("deflate", b"\x02" + stream[:HEAD])
        if syntax in SYNTAX_CONTROL and len(data) <= HEAD:
            for encoding in {syntax, "1.2.840.10008.1.2.1"}:
                bare = bare_data_set(ds, encoding)
                if bare is None:
                    continue
                if encoding == syntax and n % 3 == 0:
                    save("scan", bytes([SYNTAX_CONTROL[syntax]]) + bare)
                if encoding == "1.2.840.10008.1.2.1":
                    save("deflate", bytes([1 | (n % 4) << 1 | (n % 10) << 4]) + bare)


def bare_data_set(ds: pydicom.Dataset, syntax: str) -> bytes | None:
    """The data set without File Meta, in a native transfer syntax."""
    buffer = pydicom.filebase.DicomBytesIO()
    buffer.is_little_endian = syntax != "1.2.840.10008.1.2.2"
    buffer.is_implicit_VR = syntax == "1.2.840.10008.1.2"
    try:
        write_dataset(buffer, ds)
    except Exception:  # values pydicom cannot write in this syntax
        return None
    return buffer.getvalue()


def record_headers(pack: bytes) -> list[tuple[int, int, int, int]]:
    """(offset, kind, codec, stored length) of each record of a pack."""
    out, at = [], 16
    while at + 64 <= len(pack) and pack[at : at + 4] == b"DVRC":
        kind, codec = pack[at + 4], pack[at + 5]
        stored = struct.unpack("<Q", pack[at + 16 : at + 24])[0]
        out.append((at, kind, codec, stored))
        at += 64 + stored
    return out


def store_seeds(work: Path) -> None:
    """Pack images and manifest payloads from an archive the test files are imported into."""
    root = work / "store"
    files = sorted(TEST_FILES.glob("*.dcm"))[:40]
    env = dict(os.environ, DICOMVAULT_STORAGE_COMPRESSION="zstd")
    subprocess.run(
        [sys.executable, "-m", "dicomvault", "import", "--root", str(root), *map(str, files)],
        env=env,
        capture_output=True,
        check=True,
    )
    for pack_path in sorted((root / "packs").glob("pack-*.dvp")):
        pack = pack_path.read_bytes()
        records = record_headers(pack)
        for at, kind, codec, stored in records:
            payload = pack[at + 64 : at + 64 + stored]
            if kind == 1 and codec == 0:  # manifests are small: zstd rarely saves space
                save("manifest", payload)
        # Images of a few records each (up to 4 KiB of them, or one larger record), whole and
        # with a torn tail.
        start = 0
        while start < len(records):
            first = records[start][0]
            end = start + 1
            while end < len(records) and records[end][0] + 64 + records[end][3] - first < 4096:
                end += 1
            last = records[end - 1]
            image = pack[:16] + pack[first : last[0] + 64 + last[3]]
            save("pack", image[:MAX_SEED])
            torn = bytearray(image[: len(image) - 7])
            if len(torn) > 22:
                torn[22] |= 1  # the target recomputes checksums
            save("pack", bytes(torn))
            start = end


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    with tempfile.TemporaryDirectory(prefix="dicomvault-fuzz-seeds-") as work:
        file_seeds()
        store_seeds(Path(work))
        network_seeds(Path(work))
    for target in sorted(p.name for p in CORPUS.iterdir()):
        entries = list((CORPUS / target).iterdir())
        size = sum(p.stat().st_size for p in entries)
        print(f"{target:10} {len(entries):5} seeds {size / 1024:8.1f} KiB")


if __name__ == "__main__":
    main()
