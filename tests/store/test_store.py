"""The Rust store through its Python binding: frames straight from the blobs, chunked reads,
streaming writes in any chunk size, de-duplication, and the scanner on pydicom's files."""

from __future__ import annotations

import threading

import msgpack
import pydicom
import pytest
from pydicom.encaps import generate_frames

from dicomvault import _native
from dicomvault.bench.corpus import clinical_corpus, multiframe_instance
from dicomvault.testdata import readable_pydicom_test_files


@pytest.fixture
def store(tmp_path):
    return _native.Store(str(tmp_path / "archive"))


def ingest(store, path):
    result = store.ingest_file(str(path))
    store.persist([(result["manifest"], b"")])
    return result


def test_frames_come_from_the_blobs_native_and_encapsulated(store, tmp_path):
    corpus = clinical_corpus(tmp_path / "corpus")
    for g in [g for g in corpus if g.number_of_frames == 50]:
        result = ingest(store, g.path)
        info = _native.manifest_info(result["manifest"])
        assert info.frames == 50 and info.frames_resolved
        ds = pydicom.dcmread(g.path)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            expected = list(generate_frames(ds.PixelData, number_of_frames=50))
        else:
            size = ds.Rows * ds.Columns * 2
            expected = [ds.PixelData[i * size : (i + 1) * size] for i in range(50)]
        for i in (0, 1, 25, 49):
            assert store.read_frame(result["manifest"], i) == expected[i]
        with pytest.raises(FileNotFoundError):
            store.read_frame(result["manifest"], 50)


def test_every_readable_pydicom_file_streams_in_any_chunk_size(store):
    for path in readable_pydicom_test_files():
        data = path.read_bytes()
        whole = store.ingest_file(str(path))
        for chunk in (1, 7, 4096):
            if chunk == 1 and len(data) > 20000:
                continue
            writer = store.writer()
            for i in range(0, len(data), chunk):
                writer.write(data[i : i + chunk])
            streamed = writer.finish()
            assert streamed["manifest"] == whole["manifest"], (path.name, chunk)
            assert streamed["elements"] == whole["elements"]
        store.persist([(whole["manifest"], b"")])
        assert store.read(whole["manifest"]) == data
        assert b"".join(store.chunks(whole["manifest"])) == data
        offset = whole["dataset_offset"]
        assert b"".join(store.chunks(whole["manifest"], offset)) == data[offset:]


def test_a_resent_instance_adds_no_bytes(store, tmp_path):
    g = clinical_corpus(tmp_path / "c")[0]
    first = ingest(store, g.path)
    again = ingest(store, g.path)
    assert first["new_bytes"] == first["size"] and again["new_bytes"] == 0


def test_a_large_multiframe_streams_frame_by_frame(store, tmp_path):
    g = multiframe_instance(tmp_path, size_mb=20, frame_rows=256, frame_columns=256)
    result = ingest(store, g.path)
    info = _native.manifest_info(result["manifest"])
    assert info.frames == g.number_of_frames
    # One blob per frame (128 KB each) plus header: never a blob of the whole instance.
    assert max(blob.length for blob in info.blobs) <= 256 * 256 * 2
    assert store.read(result["manifest"]) == g.path.read_bytes()


def test_threads_ingest_in_parallel_and_share_commits(store, tmp_path):
    corpus = clinical_corpus(tmp_path / "c")
    errors = []

    def worker(items):
        try:
            for g in items:
                ingest(store, g.path)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(corpus[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.history({})) == len(corpus)
    assert store.verify().damaged == []


def test_scanner_errors_name_the_offset(tmp_path):
    scanner = _native.Scanner()
    bad = tmp_path / "bad.dcm"
    meta = b"\x02\x00\x10\x00UI\x14\x00" + b"1.2.840.10008.1.2.1\x00"
    first = b"\x08\x00\x16\x00UI\x04\x001.2\x00"  # at 160, valid
    second = b"\x08\x00\x18\x00??\x04\x001.2\x00"  # at 172, no such VR
    bad.write_bytes(b"\x00" * 128 + b"DICM" + meta + first + second)
    with pytest.raises(_native.ScanError, match=r"at byte 172: invalid VR"):
        scanner.scan_file(str(bad))


@pytest.mark.parametrize("length", [0, 31, 32, 255, 256, 70_000])
def test_annotations_decode_as_messagepack_whatever_the_source_s_length(length):
    source = "A" * length
    decoded = msgpack.unpackb(_native.annotations("2026-11-29T19:14:34.123456Z", source))
    assert decoded == {"received_at": "2026-11-29T19:14:34.123456Z", "source": source}
