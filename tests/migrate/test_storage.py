"""`dicomvault migrate orthanc-storage` on the StorageDirectory of a real Orthanc that
compresses its attachments: every instance comes over byte for byte as Orthanc holds it."""

from __future__ import annotations

import io

import pydicom

from dicomvault.bench.corpus import ct_corpus
from dicomvault.config import load
from dicomvault.migrate.journal import rows_of
from dicomvault.migrate.storage import source_name
from tests.conftest import Cli
from tests.net.conftest import Orthanc, dcmtk


def test_orthanc_storage_comes_over_byte_identical_and_resumes(tmp_path):
    corpus = ct_corpus(tmp_path / "corpus", 20, rows=16, columns=16, studies=4)
    orthanc = Orthanc(tmp_path, {}, options={"StorageCompression": True})
    try:
        dcmtk(
            "storescu",
            "-aec",
            "ORTHANC",
            "127.0.0.1",
            orthanc.dicom_port,
            *[g.path for g in corpus],
        )
        held = {}
        for orthanc_id in orthanc.rest("/instances"):
            data = orthanc.rest(f"/instances/{orthanc_id}/file")
            held[pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID] = data
    finally:
        orthanc.stop()
    storage = orthanc.dir / "storage"
    compressed = [p for p in storage.rglob("*") if p.is_file()]
    assert all(p.read_bytes()[128:132] != b"DICM" for p in compressed)
    (storage / "notes.json").write_text("{}")
    cli = Cli(tmp_path / "archive", tmp_path)

    index = orthanc.dir / "index"
    result = cli.run("migrate", "orthanc-storage", storage, "--index", index)
    assert f"{len(corpus)} files verified" in result.stdout
    # Orthanc's instances up to Pixel Data, and a file it does not list.
    assert f"{len(corpus) + 1} files skipped" in result.stdout
    out = tmp_path / "out"
    cli.run("export", "--out", out)
    exported = {pydicom.dcmread(p).SOPInstanceUID: p.read_bytes() for p in out.rglob("*.dcm")}
    assert exported == held
    assert cli.run("verify").returncode == 0

    cli.run("migrate", "orthanc-storage", storage, "--index", index)
    rows = rows_of(load(None, root=cli.root), source_name(storage))
    assert all(r.attempts == 1 for r in rows)
    assert sum(r.state == "verified" for r in rows) == len(corpus)
