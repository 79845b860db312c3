"""No HTTP path holds an instance whole in memory (issue 13): a few hundred MB POSTed to
/instances (raw or as a form), stored by STOW-RS, or read back as all its frames or its Pixel
Data bulk data, raise the server's peak resident memory by a small fraction of their size. A
body cut short stores nothing (a STOW-RS body too, past its limit); a STOW-RS body whose
boundary never comes is a 400."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from dicomvault.bench.corpus import multiframe_instance
from dicomvault.bench.peers import free_port
from tests.net.conftest import Server

SIZE_MB = 300
# What an upload may add to the server's peak RSS: pieces in flight, not the instance.
BUDGET_MB = 64


def peak_rss_mb(server: Server) -> float:
    assert server.proc is not None
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def pieces(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while piece := f.read(1 << 20):
            yield piece


def test_uploads_stream_into_the_store(tmp_path):
    instance = multiframe_instance(tmp_path / "big", size_mb=SIZE_MB)
    http_port = free_port()
    server = Server(
        tmp_path, {}, sections={"http": {"enabled": True, "host": "127.0.0.1", "port": http_port}}
    ).start()
    base = f"http://127.0.0.1:{http_port}"
    try:
        with httpx.Client(base_url=base, timeout=600) as client:
            client.get("/statistics")  # the server as it serves: modules loaded, pools made
            before = peak_rss_mb(server)
            raw = client.post(
                "/instances",
                content=pieces(instance.path),
                headers={"Content-Type": "application/dicom"},
            )
            assert raw.status_code == 200, raw.text
            assert raw.json()["results"][0]["status"] == "stored"
            assert peak_rss_mb(server) - before < BUDGET_MB

            # The same instance with another Patient's Name, as a form upload (the browser's).
            ds = pydicom.dcmread(instance.path, stop_before_pixels=True)
            assert ds.SOPInstanceUID == instance.sop_instance_uid
            with instance.path.open("rb") as f:
                form = client.post("/instances", files={"files": ("big.dcm", f)})
            assert form.status_code == 200, form.text
            assert form.json()["results"][0]["status"] == "duplicate"
            assert peak_rss_mb(server) - before < BUDGET_MB

            # A body cut short (the client goes away half-way) stores nothing.
            with socket.create_connection(("127.0.0.1", http_port)) as s:
                head = (
                    "POST /instances HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    "Content-Type: application/dicom\r\nContent-Length: 100000000\r\n\r\n"
                )
                s.sendall(head.encode() + next(pieces(instance.path)))
            stats = client.get("/statistics").json()
            assert stats["instances"] == 1

            # STOW-RS of the same instance, its multipart body split as it arrives.
            boundary = "dicomvault-test-boundary"

            def stow_body() -> Iterator[bytes]:
                yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                yield from pieces(instance.path)
                yield f"\r\n--{boundary}--\r\n".encode()

            related = f'multipart/related; type="application/dicom"; boundary={boundary}'
            stow = client.post(
                "/dicom-web/studies", content=stow_body(), headers={"Content-Type": related}
            )
            assert stow.status_code == 200, stow.text
            assert peak_rss_mb(server) - before < BUDGET_MB
            # PS3.18 10.5: a body that is not multipart/related as it says is a 400.
            for broken in (b"no boundary anywhere", f"--{boundary}\r\n\r\nDICM".encode()):
                refused = client.post(
                    "/dicom-web/studies", content=broken, headers={"Content-Type": related}
                )
                assert refused.status_code == 400, refused.text

            # Every frame, and Pixel Data as bulk data, read back one frame at a time.
            frames = instance.number_of_frames
            url = (
                f"/dicom-web/studies/{instance.study_instance_uid}/series/"
                f"{instance.series_instance_uid}/instances/{instance.sop_instance_uid}"
            )
            numbers = ",".join(str(n) for n in range(1, frames + 1))
            for path in (f"{url}/frames/{numbers}", f"{url}/bulkdata/7FE00010"):
                received = 0
                with client.stream("GET", path) as response:
                    assert response.status_code == 200, path
                    for chunk in response.iter_bytes():
                        received += len(chunk)
                assert received > SIZE_MB * 900_000
                assert peak_rss_mb(server) - before < BUDGET_MB, path
        file = httpx.get(f"{base}/instances/{instance.sop_instance_uid}/file", timeout=600)
        assert file.content == instance.path.read_bytes()
    finally:
        assert server.stop() == 0


def test_bodies_and_headers_over_their_limits_are_refused(tmp_path):
    http_port = free_port()
    section = {"enabled": True, "host": "127.0.0.1", "port": http_port, "max_body_mb": 1}
    server = Server(tmp_path, {}, sections={"http": section}).start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=60) as client:
            big = b"\0" * (2 << 20)
            dicom = {"Content-Type": "application/dicom"}
            declared = client.post("/instances", content=big, headers=dicom)
            assert declared.status_code == 413, declared.text  # by its Content-Length
            chunked = client.post("/instances", content=iter([big]), headers=dicom)
            assert chunked.status_code == 413, chunked.text  # once past the limit
            # A STOW-RS body without a length, an instance and then the limit passed: the
            # first is stored as it came, the rest is one failure, a 202 (PS3.18 Table
            # 10.5.3-1: a 4xx says no instance was stored).
            small = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
            large = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
            large.SOPInstanceUID = large.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            large.private_block(0x0009, "DICOMVAULT TEST", create=True).add_new(0x01, "OB", big)
            body = b""
            for ds in (small, large):
                part = io.BytesIO()
                ds.save_as(part, enforce_file_format=True)
                body += b"--XX\r\nContent-Type: application/dicom\r\n\r\n" + part.getvalue()
                body += b"\r\n"
            body += b"--XX--\r\n"
            related = 'multipart/related; type="application/dicom"; boundary=XX'
            stow = client.post(
                "/dicom-web/studies",
                content=(body[at : at + (64 << 10)] for at in range(0, len(body), 64 << 10)),
                headers={"Content-Type": related},
            )
            assert stow.status_code == 202, stow.text
            stored = stow.json()["00081199"]["Value"]  # Referenced SOP Sequence
            assert [i["00081155"]["Value"] for i in stored] == [[small.SOPInstanceUID]]
            assert len(stow.json()["00081198"]["Value"]) == 1  # Failed SOP Sequence
            # Headers past [http] max_header_kb are never buffered whole: the request fails.
            huge_header = client.get("/statistics", headers={"X-Padding": "a" * (4 << 20)})
            assert huge_header.status_code in (400, 431)
            assert client.get("/statistics").json()["instances"] == 1
    finally:
        assert server.stop() == 0
