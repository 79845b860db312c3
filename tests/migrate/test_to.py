"""`dicomvault migrate to DEST.toml`: a local archive (packs + LMDB) copied into S3 (a real
SeaweedFS) + PostgreSQL, every instance byte for byte with its provenance, found there by
C-FIND and QIDO-RS on a served node; run again, nothing is copied and everything is verified
again; SIGKILLed mid-copy and run again, it ends complete; an unreachable destination is a
clear error; an instance the destination holds other bytes of is listed, and the exit is 1."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pydicom
import pytest

from dicomvault import _native, config
from dicomvault.bench.corpus import clinical_corpus, ct_corpus, multiframe_instance
from dicomvault.bench.engines import PostgreSQL, SeaweedFs
from dicomvault.bench.peers import free_port
from dicomvault.index import Level, Record
from dicomvault.index.pg_schema import SCHEMA
from dicomvault.store import Archive
from dicomvault.testdata import readable_pydicom_test_files
from tests.conftest import Cli
from tests.net.conftest import Server
from tests.net.test_dcmtk_peers import QR, findscu

WORKSTATION = {"WORKSTATION": {"aet": QR, "host": "127.0.0.1", "port": 1}}
# What S3 keeps in the node's log segments rather than as objects of their own
# (rust/src/cas/object/log.rs, SEGMENT_BLOB_MAX).
SEGMENT_BLOB_MAX = 64 << 10


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Nine studies in every family of transfer syntax (JPEG 2000, JPEG-LS, RLE, JPEG
    baseline, deflated, big endian...), a 4 MB multi-frame of two 2 MB frames, and pydicom's
    readable test files."""
    out = tmp_path_factory.mktemp("corpus")
    clinical_corpus(out / "clinical")
    multiframe_instance(out / "large", size_mb=5, frame_rows=1024, frame_columns=1024)
    pydicom_files = _mk(out / "pydicom")
    for path in readable_pydicom_test_files():
        shutil.copyfile(path, pydicom_files / path.name)
    return out


def _mk(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def source_archive(tmp_path: Path, *dirs: Path) -> Cli:
    cli = Cli(tmp_path / "source", tmp_path)
    for d in dirs:
        cli.run("import", d, check=False)  # some of pydicom's files are refused: not copied
    return cli


def destination(
    tmp_path: Path,
    seaweedfs: SeaweedFs,
    postgresql: PostgreSQL,
    *,
    index_url: str | None = None,
    endpoint: str | None = None,
) -> Server:
    """A node on S3 + PostgreSQL (a prefix of its own, a fresh database), not started: its
    configuration is what ``migrate to`` is given (``endpoint``: S3's, else SeaweedFS)."""
    workdir = _mk(tmp_path / "destination")
    storage = {**seaweedfs.storage(), "node": 1}
    if endpoint is not None:
        storage["endpoint"] = endpoint
    return Server(
        workdir,
        WORKSTATION,
        sections={
            "storage": storage,
            "index": {"backend": "postgresql", "url": index_url or postgresql.database()},
            "http": {"enabled": True, "host": "127.0.0.1", "port": free_port()},
        },
    )


def migrate_to(
    source: Cli, dest: Server, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return source.run("migrate", "to", dest.config, check=check)


def summary(stdout: str) -> str:
    return stdout.strip().splitlines()[-1]


def open_archive(conf: Path | None = None, root: Path | None = None) -> Archive:
    return Archive(config.load(conf, root=root, environ={}))


@dataclass(frozen=True)
class Held:
    """A source instance: its record, and its bytes as the source gives them."""

    record: Record
    data: bytes


def held(source: Cli) -> tuple[dict[str, Held], set[str]]:
    """The source's instances by key, and its Study Instance UIDs (read at once: LMDB opens
    an archive once a process)."""
    with open_archive(root=source.root) as src:
        studies = {r.tags.get("StudyInstanceUID", "") for r in src.records(Level.STUDY, {})}
        return {i.key: Held(i, src.read(i)) for i in src.instances()}, studies


def assert_copied(source: dict[str, Held], dest: Server) -> None:
    """Every instance of the source is on the destination, the same bytes, received when and
    from where the source says."""
    with open_archive(dest.config) as dst:
        copies = dst.records_by_key(Level.IMAGE, list(source))
        assert set(copies) == set(source)
        for key, instance in source.items():
            copy = copies[key]
            assert dst.read(copy) == instance.data, key
            assert (copy.received_at, copy.source) == (
                instance.record.received_at,
                instance.record.source,
            )


def test_migrate_to_s3_and_postgresql_copies_every_instance_and_serves_them(
    tmp_path, corpus, seaweedfs, postgresql
):
    source = source_archive(tmp_path, corpus / "clinical", corpus / "large", corpus / "pydicom")
    dest = destination(tmp_path, seaweedfs, postgresql)
    instances, studies = held(source)
    n = len(instances)
    size = sum(i.record.size for i in instances.values())
    syntaxes = {i.record.tags["TransferSyntaxUID"] for i in instances.values()}
    assert n > 60
    assert {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.5"} <= syntaxes

    first = migrate_to(source, dest)
    assert summary(first.stdout) == (
        f"{n} instances ({size} bytes): {n} copied now, 0 already there, {n} verified"
    )
    assert_copied(instances, dest)
    # The largest instance's frames are objects of their own in the bucket, not in a segment.
    large = max((i.record for i in instances.values()), key=lambda r: r.size)
    assert large.size > 4_000_000
    blobs = _native.manifest_info(large.instance_manifest()).blobs
    assert max(b.length for b in blobs) > SEGMENT_BLOB_MAX
    assert not (dest.root / "packs").exists()

    again = migrate_to(source, dest)
    assert summary(again.stdout) == (
        f"{n} instances ({size} bytes): 0 copied now, {n} already there, {n} verified"
    )

    dest.start()
    try:
        found = findscu(dest, "STUDY", {"StudyInstanceUID": ""}, tmp_path)
        assert {str(ds.StudyInstanceUID) for ds in found} == studies
        port = config.load(dest.config, environ={})["http"]["port"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/dicom-web/studies") as r:
            assert {s["0020000D"]["Value"][0] for s in json.load(r)} == studies
    finally:
        assert dest.stop() == 0


def indexed(url: str) -> int:
    with psycopg.connect(url) as conn:
        [(count,)] = conn.execute(f"SELECT count(*) FROM {SCHEMA}.instances").fetchall()
    return int(count)


def test_migrate_to_killed_mid_copy_resumes_and_ends_verified(
    tmp_path, corpus, seaweedfs, postgresql
):
    ct_corpus(tmp_path / "ct", 400, rows=64, columns=64, studies=8)
    source = source_archive(tmp_path, tmp_path / "ct", corpus / "large")
    url = postgresql.database()
    dest = destination(tmp_path, seaweedfs, postgresql, index_url=url)

    run = subprocess.Popen(
        source.command("migrate", "to", dest.config, "--parallel", "2", "--root", source.root),
        cwd=source.cwd,
        env=source.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    try:
        while indexed_or_zero(url) == 0:
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "nothing reached the destination"
            time.sleep(0.01)
    finally:
        run.send_signal(signal.SIGKILL)
        run.communicate()
    at_kill = indexed(url)
    assert 0 < at_kill < 401, "the copy was not interrupted"

    resumed = migrate_to(source, dest)
    copied, there = re_counts(summary(resumed.stdout))
    assert copied > 0 and there >= at_kill and copied + there == 401
    assert summary(resumed.stdout).endswith(", 401 verified")
    assert_copied(held(source)[0], dest)


def indexed_or_zero(url: str) -> int:
    """Instances indexed, 0 until the destination has made its schema."""
    try:
        return indexed(url)
    except psycopg.errors.UndefinedTable:
        return 0


def re_counts(line: str) -> tuple[int, int]:
    """(copied now, already there) from the summary line."""
    counts = line.split(": ", 1)[1].split(", ")
    return int(counts[0].split()[0]), int(counts[1].split()[0])


def test_migrate_to_an_unreachable_or_unreadable_destination_fails_clearly(
    tmp_path, corpus, seaweedfs, postgresql
):
    source = source_archive(tmp_path, corpus / "large")
    closed = free_port()
    no_index = destination(
        tmp_path / "no-index",
        seaweedfs,
        postgresql,
        index_url=f"postgresql://postgres@127.0.0.1:{closed}/nothing",
    )
    no_bucket = destination(
        tmp_path / "no-bucket", seaweedfs, postgresql, endpoint=f"http://127.0.0.1:{closed}"
    )
    for conf, why in (
        (no_index, f"the index at postgresql://postgres@127.0.0.1:{closed}/nothing"),
        (no_bucket, "the archive cannot be opened"),
        (tmp_path / "missing.toml", "missing.toml does not exist"),
    ):
        path = conf.config if isinstance(conf, Server) else conf
        result = source.run("migrate", "to", path, check=False)
        assert result.returncode == 1
        assert result.stdout == ""  # nothing copied, nothing claimed
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("error: ") and why in line, line


def test_migrate_to_lists_an_instance_the_destination_holds_other_bytes_of(
    tmp_path, seaweedfs, postgresql
):
    made = ct_corpus(tmp_path / "ct", 6, rows=64, columns=64)
    source = source_archive(tmp_path, tmp_path / "ct")
    dest = destination(tmp_path, seaweedfs, postgresql)
    # The destination was given another version of one instance first (its SOP Instance UID,
    # other bytes): it keeps it, and the verification says so.
    other = pydicom.dcmread(made[0].path)
    other.ImageComments = "another version"
    other.save_as(tmp_path / "other.dcm", enforce_file_format=True)
    dest.run("import", tmp_path / "other.dcm")

    result = migrate_to(source, dest, check=False)
    assert result.returncode == 1
    assert "5 copied now, 1 already there, 5 verified" in result.stdout
    [listed] = [line for line in result.stdout.splitlines() if made[0].sop_instance_uid in line]
    assert listed.split(maxsplit=1) == [
        made[0].sop_instance_uid,
        "different bytes on the destination",
    ]
    assert result.stderr.endswith("error: 1 instances missing or different on the destination\n")
