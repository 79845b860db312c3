"""The archive CLI end to end, as a user runs it: import, export, ls, verify, reindex, delete,
gc, and a SIGKILL in the middle of an import."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pydicom
import pytest

from dicomvault import _native
from dicomvault.bench.corpus import clinical_corpus, small_corpus
from dicomvault.testdata import pydicom_test_files, readable_pydicom_test_files


def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._~-]", "_", key)


def _pydicom_tree(dest: Path) -> dict[Path, Path]:
    """Copies pydicom's test files under ``dest``; returns copy -> original."""
    data_root = Path(pydicom.__file__).parent / "data"
    copies = {}
    for original in pydicom_test_files():
        copy = dest / original.relative_to(data_root)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(original, copy)
        copies[copy] = original
    return copies


def _not_storable(path: Path) -> bool:
    """Whether pydicom reads a file without one of the UIDs every instance has, or of a SOP
    class that is not a storage one."""
    from dicomvault.dicom.acceptance import storage_sop_classes

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    keys = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
    return not all(str(ds.get(k, "")).strip() for k in keys) or (
        str(ds.SOPClassUID) not in storage_sop_classes()
    )


def _report(path: Path) -> dict[str, dict]:
    return {line["path"]: line for line in map(json.loads, path.read_text().splitlines())}


def test_every_readable_pydicom_file_round_trips_byte_identical(cli, tmp_path):
    copies = _pydicom_tree(tmp_path / "src")
    readable = {str(c) for c, o in copies.items() if o in set(readable_pydicom_test_files())}
    result = cli.run(
        "import", tmp_path / "src", "--report", tmp_path / "report.jsonl", "--quiet", check=False
    )
    report = _report(tmp_path / "report.jsonl")
    assert set(report) == {str(c) for c in copies}
    refused = {p for p in readable if report[p]["status"] == "rejected"}
    for path in readable - refused:
        # pydicom ships variants of one instance (MR_small, MR_small_padded...): the first
        # is kept, the others are "different" (on_duplicate = "keep").
        assert report[path]["status"] in ("stored", "duplicate", "different"), report[path]
    # Readable, but not an instance the archive may store (PS3.4 C.2.2.1.1): cut short,
    # without its UIDs, or of no storage SOP class (a DICOMDIR).
    for path in refused:
        assert _not_storable(Path(path)) or "cut short" in report[path]["reason"], report[path]
    assert any("DICOMDIR" in p for p in refused)
    readable -= refused
    not_dicom = {p for p, line in report.items() if line["status"] == "not-dicom"}
    assert str(tmp_path / "src/test_files/README.txt") in not_dicom
    assert "skipped (not DICOM)" in result.stderr

    cli.run("export", "--out", tmp_path / "out")
    exported = {p.stem: p.read_bytes() for p in (tmp_path / "out").rglob("*.dcm")}
    by_key: dict[str, set[bytes]] = defaultdict(set)
    for path in readable:
        by_key[report[path]["key"]].add(Path(path).read_bytes())
    for key, originals in by_key.items():
        assert exported[_safe(key)] in originals, key
        if len(originals) == 1:
            assert exported[_safe(key)] == next(iter(originals))
    stored = {line["key"] for line in report.values() if line["status"] == "stored"}
    assert set(exported) == {_safe(k) for k in stored}

    verify = cli.run("verify")
    assert "0 damaged records, 0 defects" in verify.stdout

    # The hierarchy, recomputed with pydicom from the exported files.
    studies: dict[str, int] = defaultdict(int)
    patients = set()
    for key in stored:
        ds = pydicom.dcmread(next((tmp_path / "out").rglob(_safe(key) + ".dcm")), force=True)
        study = ds.get("StudyInstanceUID") or "~" + key
        studies[str(study)] += 1
        patients.add((str(ds.get("PatientID", "")), str(ds.get("IssuerOfPatientID", ""))))
    listed = {s["key"]: s["counts"]["instances"] for s in cli.ls("studies")}
    assert listed == dict(studies)
    assert len(cli.ls("patients")) == len(patients)
    assert len(cli.ls("instances")) == len(stored)


@pytest.fixture
def clinical(cli, tmp_path):
    corpus = clinical_corpus(tmp_path / "clinical")
    cli.run("import", tmp_path / "clinical", "--quiet")
    return corpus


def test_a_flipped_byte_in_a_pack_is_found_and_named(cli, tmp_path, clinical):
    victim = next(
        g
        for g in clinical
        if g.number_of_frames == 1 and g.transfer_syntax == "1.2.840.10008.1.2.1"
    )
    scan = _native.Scanner().scan_file(str(victim.path))
    frame = victim.path.read_bytes()[scan["pixel_data"]["value_offset"] :][
        : scan["pixel_data"]["frame_size"]
    ]
    for pack in (cli.root / "packs").iterdir():
        data = bytearray(pack.read_bytes())
        at = data.find(frame)
        if at >= 0:
            data[at + len(frame) // 2] ^= 0x40
            pack.write_bytes(bytes(data))
            break
    else:
        pytest.fail("the frame was not found in any pack")
    result = cli.run("verify", check=False)
    assert result.returncode == 1
    assert f"DEFECT {victim.sop_instance_uid}:" in result.stdout
    assert result.stdout.count("DEFECT") == 1


def test_reindex_from_the_packs_alone_reproduces_the_listing(cli, clinical):
    before = {level: cli.ls(level) for level in ("patients", "studies", "series", "instances")}
    shutil.rmtree(cli.root / "index")
    shutil.rmtree(cli.root / "blobs")
    result = cli.run("reindex")
    assert f"reindexed {len(clinical)} instances" in result.stdout
    after = {level: cli.ls(level) for level in before}
    assert after == before
    cli.run("verify")


def test_delete_then_gc_reclaims_space_and_keeps_the_rest(cli, tmp_path, clinical):
    studies = cli.ls("studies")
    victim = max(studies, key=lambda s: s["size"])
    pack_bytes = lambda: sum(p.stat().st_size for p in (cli.root / "packs").iterdir())  # noqa: E731
    before = pack_bytes()
    cli.run("delete", victim["key"], "--yes")
    assert victim["key"] not in {s["key"] for s in cli.ls("studies")}
    assert cli.run("lookup", victim["key"], check=False).returncode == 1
    cli.run("gc")
    assert pack_bytes() < before - victim["size"] // 2
    cli.run("verify")
    cli.run("export", "--out", tmp_path / "out")
    survivors = [g for g in clinical if g.study_instance_uid != victim["key"]]
    for g in survivors:
        exported = next((tmp_path / "out").rglob(_safe(g.sop_instance_uid) + ".dcm"), None)
        assert exported is not None, (g, sorted(p.name for p in (tmp_path / "out").rglob("*.dcm")))
        assert exported.read_bytes() == g.path.read_bytes()
    # Reindexing after gc must not resurrect the deleted study.
    cli.run("reindex")
    assert victim["key"] not in {s["key"] for s in cli.ls("studies")}


def test_sigkill_during_import_loses_nothing_reported_stored(cli, tmp_path):
    small_corpus(tmp_path / "small", 3000)
    report = tmp_path / "report.jsonl"
    proc = subprocess.Popen(
        cli.command(
            "import", tmp_path / "small", "--report", report, "--quiet", "--root", cli.root
        ),
        cwd=cli.cwd,
        env=cli.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if report.exists() and report.read_text().count("\n") >= 500:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lines = [json.loads(line) for line in report.read_text().splitlines() if line.endswith("}")]
    reported = {line["key"] for line in lines if line["status"] == "stored"}
    assert 500 <= len(reported) < 3000, "the kill must land in the middle of the import"
    cli.run("verify")
    held = {i["key"] for i in cli.ls("instances")}
    assert reported <= held
    # Importing again completes the archive; what was already there is a duplicate.
    cli.run("import", tmp_path / "small", "--quiet")
    assert len(cli.ls("instances")) == 3000
    cli.run("verify")


def test_show_lookup_and_stats(cli, clinical):
    g = clinical[0]
    shown = cli.run("show", g.sop_instance_uid).stdout
    assert g.sop_instance_uid in shown and "(0010,0020)" in shown
    looked = cli.run("lookup", g.patient_id).stdout
    assert "PATIENT" in looked
    stats = cli.json("stats")
    assert stats["instances"] == len(clinical)
    assert stats["pack_bytes"] > 0
    assert len(cli.json("ls", "instances", "--limit", "3")) == 3
    refused = cli.run("ls", "instances", "--limit", "-1", check=False)
    assert refused.returncode == 2 and "--limit" in refused.stderr


def test_config_file_and_environment_choose_the_root(cli, tmp_path):
    config = tmp_path / "site.toml"
    config.write_text(f'[archive]\nroot = "{tmp_path / "from-config"}"\n')
    cli.run("stats", "--config", config, with_root=False)
    assert (tmp_path / "from-config" / "packs").is_dir()
    cli.env["DICOMVAULT_ARCHIVE_ROOT"] = str(tmp_path / "from-env")
    cli.run("stats", with_root=False)
    assert (tmp_path / "from-env" / "packs").is_dir()


def test_an_index_that_lost_commits_catches_up_from_the_pack_log(cli, tmp_path):
    """The packs are the log: an index rolled back to an earlier state (as after a power cut
    between checkpoints) replays the manifests and deletions it missed when it opens."""
    corpus = clinical_corpus(tmp_path / "clinical")
    cli.run("import", tmp_path / "clinical" / "study0", tmp_path / "clinical" / "study1", "--quiet")
    snapshot = tmp_path / "index-snapshot"
    shutil.copytree(cli.root / "index", snapshot)
    cli.run("import", tmp_path / "clinical", "--quiet")
    deleted = corpus[0].study_instance_uid
    cli.run("delete", deleted, "--yes")
    expected = cli.ls("instances")
    shutil.rmtree(cli.root / "index")
    shutil.copytree(snapshot, cli.root / "index")
    result = cli.run("ls", "instances", "--json")
    assert "replayed" in result.stderr
    assert json.loads(result.stdout) == expected
    assert deleted not in {s["key"] for s in cli.ls("studies")}
    assert "replayed" not in cli.run("stats").stderr  # once is enough
    cli.run("verify")
