"""The index, through the ``Index`` protocol for every backend (LMDB, PostgreSQL): hierarchy,
counts, duplicates, conflicts, lookup, queries, deletion and the replay marks."""

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from dicomvault import _native
from dicomvault.index import Index, InstanceEntry, Level, LmdbIndex
from dicomvault.index.pg_index import PgIndex
from dicomvault.index.planner import CHUNK

# Each backend of the ``Index`` protocol: every test here holds for each.
BACKENDS = ["lmdb", "postgresql"]


def entry(
    sop,
    study,
    series,
    pid="P1",
    issuer="",
    name="Doe^John",
    date="20200101",
    modality="CT",
    accession="",
    size=100,
    **extra,
):
    tags = {
        "SOPInstanceUID": sop,
        "StudyInstanceUID": study,
        "SeriesInstanceUID": series,
        "PatientID": pid,
        "PatientName": name,
        "StudyDate": date,
        "Modality": modality,
        "AccessionNumber": accession,
        "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
        **extra,
    }
    if issuer:
        tags["IssuerOfPatientID"] = issuer
    return InstanceEntry(
        tags, f"manifest-{sop}".encode(), size, "2026-01-01T00:00:00.000000Z", "test"
    )


@pytest.fixture(params=BACKENDS)
def open_index(request) -> Callable[[Path], AbstractContextManager[Index]]:
    """Opens the backend's index: LMDB's in a directory, PostgreSQL's in a fresh database
    (the same one every time a test opens it)."""
    if request.param == "lmdb":
        return LmdbIndex
    url = request.getfixturevalue("pg_url")
    return lambda _path: PgIndex(url, store="test-store")


@pytest.fixture
def index(open_index, tmp_path):
    with open_index(tmp_path / "index") as ix:
        yield ix


@pytest.fixture
def archive(index):
    """Three patients (two share PatientID 12345 under different issuers), four studies."""
    index.commit(
        [
            entry(
                "1.1.1",
                "1.1",
                "1.1.S1",
                pid="12345",
                issuer="HOSP_A",
                name="Smith^John",
                date="20150312",
                accession="A1",
                size=10,
            ),
            entry(
                "1.1.2",
                "1.1",
                "1.1.S1",
                pid="12345",
                issuer="HOSP_A",
                name="Smith^John",
                date="20150312",
                accession="A1",
                size=20,
            ),
            entry(
                "1.1.3",
                "1.1",
                "1.1.S2",
                pid="12345",
                issuer="HOSP_A",
                name="Smith^John",
                date="20150312",
                modality="MR",
                accession="A1",
                size=30,
            ),
            entry(
                "2.1.1",
                "2.1",
                "2.1.S1",
                pid="12345",
                issuer="HOSP_B",
                name="Smith^Jane",
                date="20180704",
                modality="MR",
                accession="B1",
                size=40,
            ),
            entry(
                "3.1.1",
                "3.1",
                "3.1.S1",
                pid="GR1",
                name="Διονυσιος^Κωστας",
                date="20211231",
                accession="C1",
                size=50,
            ),
            entry(
                "3.2.1",
                "3.2",
                "3.2.S1",
                pid="GR1",
                name="Διονυσιος^Κωστας",
                date="",
                modality="US",
                accession="C2",
                size=60,
            ),
        ]
    )
    return index


def keys(results):
    return sorted(r["_key"] for r in results)


def test_hierarchy_counts_and_sizes(archive):
    assert archive.stats() == {
        "patients": 3,
        "studies": 4,
        "series": 5,
        "instances": 6,
        "size": 210,
        "patient_conflicts": 0,
    }
    a = archive.get(Level.PATIENT, "12345\x00HOSP_A")
    b = archive.get(Level.PATIENT, "12345\x00HOSP_B")
    assert a.tags["PatientName"] == "Smith^John" and b.tags["PatientName"] == "Smith^Jane"
    assert a.counts == {"studies": 1, "series": 2, "instances": 3} and a.size == 60
    study = archive.get(Level.STUDY, "1.1")
    assert study.counts == {"series": 2, "instances": 3}
    assert study.tags["ModalitiesInStudy"] == "CT\\MR"
    assert [r.key for r in archive.children(Level.STUDY, "1.1")] == ["1.1.S1", "1.1.S2"]
    assert sorted(r.key for r in archive.instances_under(Level.PATIENT, a.key)) == [
        "1.1.1",
        "1.1.2",
        "1.1.3",
    ]


def test_get_many_finds_the_records_there_in_one_read(archive):
    found = archive.get_many(Level.IMAGE, ["1.1.2", "9.9.9", "1.1.1"])
    assert set(found) == {"1.1.1", "1.1.2"}
    assert found["1.1.1"] == archive.get(Level.IMAGE, "1.1.1")
    assert archive.get_many(Level.STUDY, ["1.1"])["1.1"].counts == {"series": 2, "instances": 3}
    assert archive.get_many(Level.IMAGE, []) == {}


def test_duplicates_keep_the_first_copy_across_and_within_batches(archive):
    outcomes = archive.commit(
        [
            entry("1.1.1", "1.1", "1.1.S1", size=999),
            entry("9.9.9", "9.9", "9.9.S", size=1),
            entry("9.9.9", "9.9", "9.9.S", size=2),
        ]
    )
    assert [o.status for o in outcomes] == ["duplicate", "stored", "duplicate"]
    assert archive.get(Level.IMAGE, "1.1.1").size == 10
    assert archive.get(Level.IMAGE, "9.9.9").size == 1


def test_a_study_arriving_under_another_patient_is_logged_not_merged(archive, caplog):
    with caplog.at_level(logging.WARNING, logger="dicomvault.index"):
        archive.commit([entry("1.1.9", "1.1", "1.1.S1", pid="OTHER")])
    assert "kept under the existing patient" in caplog.text
    instance = archive.get(Level.IMAGE, "1.1.9")
    assert instance.patient_conflict == "OTHER\x00"
    assert archive.get(Level.PATIENT, "OTHER\x00") is None
    assert archive.stats()["patient_conflicts"] == 1


def test_lookup_by_each_identifier(archive):
    assert {(r.level, r.key) for r in archive.lookup("12345")} == {
        (Level.PATIENT, "12345\x00HOSP_A"),
        (Level.PATIENT, "12345\x00HOSP_B"),
    }
    assert [(r.level, r.key) for r in archive.lookup("B1")] == [(Level.STUDY, "2.1")]
    assert [(r.level, r.key) for r in archive.lookup("1.1")] == [(Level.STUDY, "1.1")]
    assert [(r.level, r.key) for r in archive.lookup("1.1.S2")] == [(Level.SERIES, "1.1.S2")]
    assert [(r.level, r.key) for r in archive.lookup("3.1.1")] == [(Level.IMAGE, "3.1.1")]
    assert archive.lookup("nothing") == []


@pytest.mark.parametrize(
    ("level", "filters", "expected"),
    [
        (Level.PATIENT, {"PatientID": "12345"}, ["12345\x00HOSP_A", "12345\x00HOSP_B"]),
        (Level.PATIENT, {"PatientName": "smith*"}, ["12345\x00HOSP_A", "12345\x00HOSP_B"]),
        (Level.PATIENT, {"PatientName": "ΔΙΟΝΥΣΙΟΣ*"}, ["GR1\x00"]),
        (Level.STUDY, {"PatientName": "Smith^J?hn"}, ["1.1"]),
        (Level.STUDY, {"StudyDate": "20150101-20181231"}, ["1.1", "2.1"]),
        (Level.STUDY, {"StudyDate": "20180101-"}, ["2.1", "3.1"]),
        (Level.STUDY, {"StudyDate": "-20160101"}, ["1.1"]),
        (Level.STUDY, {"StudyDate": "20211231"}, ["3.1"]),
        (Level.STUDY, {"AccessionNumber": "C*"}, ["3.1", "3.2"]),
        (Level.STUDY, {"ModalitiesInStudy": "MR"}, ["1.1", "2.1"]),
        (Level.STUDY, {"ModalitiesInStudy": "US\\MR"}, ["1.1", "2.1", "3.2"]),
        (Level.STUDY, {"StudyInstanceUID": "1.1\\3.2"}, ["1.1", "3.2"]),
        (Level.STUDY, {"PatientID": "12345", "StudyDate": "2018*"}, []),  # no wildcards on DA
        (Level.STUDY, {"PatientID": "12345", "StudyDate": "20180704"}, ["2.1"]),
        (Level.STUDY, {"StudyDescription": ""}, ["1.1", "2.1", "3.1", "3.2"]),
        (Level.SERIES, {"Modality": "CT"}, ["1.1.S1", "3.1.S1"]),
        (Level.SERIES, {"StudyInstanceUID": "1.1", "Modality": "MR"}, ["1.1.S2"]),
        (Level.IMAGE, {"SeriesInstanceUID": "1.1.S1"}, ["1.1.1", "1.1.2"]),
        (Level.IMAGE, {"StudyDate": "20150312"}, ["1.1.1", "1.1.2", "1.1.3"]),
        (Level.IMAGE, {"PatientID": "GR1"}, ["3.1.1", "3.2.1"]),
        (Level.IMAGE, {"NumberOfFrames": "", "PatientName": "*Jane"}, ["2.1.1"]),
    ],
)
def test_find_matches_exactly_the_expected_records(archive, level, filters, expected):
    assert keys(archive.find(level, filters)) == expected


def test_find_returns_requested_and_computed_keys(archive):
    [study] = archive.find(
        Level.STUDY,
        {"AccessionNumber": "A1"},
        [
            "PatientName",
            "NumberOfStudyRelatedInstances",
            "NumberOfStudyRelatedSeries",
            "PatientComments",
        ],
    )
    assert study["PatientName"] == "Smith^John"
    assert study["NumberOfStudyRelatedInstances"] == "3"
    assert study["NumberOfStudyRelatedSeries"] == "2"
    assert study["PatientComments"] == ""
    assert study["StudyInstanceUID"] == "1.1" and study["PatientID"] == "12345"
    [patient] = archive.find(Level.PATIENT, {"PatientID": "GR1"}, ["NumberOfPatientRelatedStudies"])
    assert patient["NumberOfPatientRelatedStudies"] == "2"


def test_limit_and_offset_page_in_a_stable_order(archive):
    everything = keys(archive.find(Level.IMAGE, {}))
    pages = [keys(archive.find(Level.IMAGE, {}, limit=2, offset=o)) for o in (0, 2, 4)]
    assert [k for page in pages for k in page] == everything
    assert len(everything) == 6


@pytest.mark.parametrize(
    ("level", "filters", "expected"),
    [
        (Level.STUDY, {"StudyInstanceUID": "1.1\\"}, ["1.1"]),
        (Level.STUDY, {"StudyInstanceUID": "\\"}, []),
        (Level.STUDY, {"StudyInstanceUID": "\\ \\2.1 "}, ["2.1"]),
        (Level.SERIES, {"SeriesInstanceUID": "\\1.1.S2"}, ["1.1.S2"]),
        (Level.IMAGE, {"SOPInstanceUID": "3.1.1\\"}, ["3.1.1"]),
        (Level.IMAGE, {"SOPClassUID": "\\"}, []),
        (Level.STUDY, {"StudyInstanceUID": "1." * 400}, []),  # longer than an LMDB key
    ],
)
def test_an_empty_item_of_a_uid_list_matches_nothing(archive, level, filters, expected):
    """PS3.4 C.2.2.2.2: each item of a List of UID Matching is a UID; an empty one (a trailing
    backslash) names no entity, on every backend (LMDB refused it: MDB_BAD_VALSIZE)."""
    assert keys(archive.find(level, filters)) == expected


def test_a_limit_or_offset_past_any_count_is_all_or_nothing(archive):
    """Any whole number is a limit or offset (PS3.18 Table 8.3.4-1: uint), 10**20 too."""
    assert len(list(archive.find(Level.IMAGE, {}, limit=10**20))) == 6
    assert list(archive.find(Level.IMAGE, {}, offset=10**20)) == []
    assert len(list(archive.find(Level.IMAGE, {}, limit=10**20, offset=5))) == 1


def test_more_candidates_than_a_page_come_every_one_in_key_order(index):
    """Past the first ``CHUNK`` candidates (which PostgreSQL reads in the same statement as
    their ancestors), from a range of the secondary index, a scan, and a page beyond."""
    n = 2 * CHUNK + 50
    index.commit(
        [
            entry(
                f"7.{i:04d}",
                f"7.{i // 2:04d}",
                f"7.{i // 2:04d}.S",
                date=f"2021{1 + i // 2 % 12:02d}01",
            )
            for i in range(n)
        ]
    )
    every = [f"7.{i:04d}" for i in range(n)]
    first_half = [f"7.{i:04d}" for i in range(n) if i // 2 % 12 < 6]

    def found(filters: dict[str, str], **paging: int) -> list[str]:
        return [m["_key"] for m in index.find(Level.IMAGE, filters, **paging)]

    assert found({"StudyDate": "20210101-20211231"}) == every
    assert found({"Modality": "CT"}) == every
    assert found({}) == every
    assert found({"StudyDate": "20210101-20210630"}) == first_half
    assert (
        found({"StudyDate": "20210101-"}, limit=30, offset=CHUNK - 10)
        == every[CHUNK - 10 : CHUNK + 20]
    )
    # The range narrows to every instance; the matcher keeps those of the first half year.
    assert found({"Modality": "CT", "StudyDate": "-20210630"}) == first_half


@pytest.mark.parametrize("open_index", ["lmdb"], indirect=True)  # LMDB's records_read
def test_indexed_keys_use_key_ranges_not_scans(index):
    index.commit(
        [
            entry(
                f"9.{i}",
                f"9.{i // 10}",
                f"9.{i // 10}.S",
                pid=f"P{i // 10:04d}",
                accession=f"ACC{i // 10}",
            )
            for i in range(5000)
        ]
    )
    index.records_read = 0
    assert len(list(index.find(Level.STUDY, {"PatientID": "P0042"}))) == 1
    assert index.records_read < 10
    index.records_read = 0
    assert len(list(index.find(Level.IMAGE, {"AccessionNumber": "ACC424"}))) == 10
    assert index.records_read < 60
    index.records_read = 0
    assert len(list(index.find(Level.STUDY, {"PatientName": "nobody*"}))) == 0
    assert index.records_read == 0


@pytest.mark.parametrize(
    ("level", "key", "gone", "left"),
    [
        (
            Level.IMAGE,
            "1.1.3",
            {"1.1.S2"},
            {"patients": 3, "studies": 4, "series": 4, "instances": 5},
        ),
        (Level.SERIES, "1.1.S1", set(), {"patients": 3, "studies": 4, "series": 4, "instances": 4}),
        (
            Level.STUDY,
            "2.1",
            {"12345\x00HOSP_B"},
            {"patients": 2, "studies": 3, "series": 4, "instances": 5},
        ),
        (
            Level.PATIENT,
            "GR1\x00",
            {"3.1", "3.2"},
            {"patients": 2, "studies": 2, "series": 3, "instances": 4},
        ),
    ],
)
def test_delete_at_each_level(archive, level, key, gone, left):
    removed = archive.delete(level, key)
    assert removed and all(r.manifest for r in removed)
    stats = archive.stats()
    assert {k: stats[k] for k in left} == left
    assert stats["size"] == 210 - sum(r.size for r in removed)
    for record in archive.iter_level(Level.PATIENT):
        instances = list(archive.instances_under(Level.PATIENT, record.key))
        assert record.counts["instances"] == len(instances)
        assert record.size == sum(i.size for i in instances)
    assert archive.lookup(key) == []
    for k in gone:
        assert archive.lookup(k.split("\x00")[0]) == [] or all(
            r.key != k for r in archive.lookup(k.split("\x00")[0])
        )


def test_delete_updates_modalities_and_secondary_indexes(archive):
    archive.delete(Level.SERIES, "1.1.S2")
    assert archive.get(Level.STUDY, "1.1").tags["ModalitiesInStudy"] == "CT"
    assert keys(archive.find(Level.STUDY, {"ModalitiesInStudy": "MR"})) == ["2.1"]
    archive.delete(Level.STUDY, "3.1")
    assert keys(archive.find(Level.STUDY, {"AccessionNumber": "C1"})) == []
    assert keys(archive.find(Level.STUDY, {"StudyDate": "20211231"})) == []


def test_before_commit_failure_leaves_the_index_unchanged(archive):
    def fail(_):
        raise OSError("disk full")

    with pytest.raises(OSError):
        archive.commit([entry("7.7.7", "7.7", "7.7.S")], before_commit=fail)
    assert archive.get(Level.IMAGE, "7.7.7") is None
    assert archive.stats()["instances"] == 6
    with pytest.raises(OSError):
        archive.delete(Level.STUDY, "1.1", before_commit=fail)
    assert archive.get(Level.STUDY, "1.1") is not None


def test_reopening_keeps_everything(open_index, tmp_path):
    with open_index(tmp_path / "ix") as ix:
        ix.commit([entry("1", "2", "3")])
    with open_index(tmp_path / "ix") as ix:
        assert ix.get(Level.IMAGE, "1").manifest == b"manifest-1"


def test_concurrent_commits_lose_nothing(index):
    def worker(t):
        for i in range(50):
            index.commit([entry(f"{t}.{i}", f"{t}", f"{t}.S", pid=f"P{t}")])

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert index.stats()["instances"] == 200
    assert all(index.get(Level.STUDY, str(t)).counts["instances"] == 50 for t in range(4))


def test_missing_uids_get_keys_of_their_own(index):
    bare = InstanceEntry({"PatientID": "X"}, b"m1", 5, "2026-01-01T00:00:00Z", "t")
    other = InstanceEntry({"PatientID": "X"}, b"m2", 5, "2026-01-01T00:00:00Z", "t")
    outcomes = index.commit([bare, other])
    assert [o.status for o in outcomes] == ["stored", "stored"]
    assert all(o.key.startswith("~") for o in outcomes)
    assert index.stats()["studies"] == 2


def test_replay_marks_advance_with_what_they_applied_until_frozen(index):
    assert index.applied() == {}
    index.commit([entry("1", "2", "3")], before_commit=lambda new: [(1, 100), (2, 50)])
    index.mark_applied([(1, 80), (2, 70)])  # a mark never moves back
    assert index.applied() == {1: 100, 2: 70}

    def fail(_):
        raise OSError("disk full")

    with pytest.raises(OSError):
        index.commit([entry("4", "5", "6")], before_commit=fail)
    assert index.applied() == {1: 100, 2: 70}
    index.delete(Level.IMAGE, "1", before_commit=lambda removed: [(3, 10)])
    assert index.applied() == {1: 100, 2: 70, 3: 10}
    index.set_applied({1: 40, 2: None})  # gc moved their records
    assert index.applied() == {1: 40, 3: 10}
    assert not index.marks_frozen
    index.freeze_marks()
    assert index.marks_frozen
    index.mark_applied([(1, 500)])
    index.commit([entry("7", "8", "9")], before_commit=lambda new: [(4, 20)])
    assert index.applied() == {1: 40, 3: 10}
    assert index.get(Level.IMAGE, "7") is not None


def test_unindexed_records_are_kept_until_their_instance_is_committed(index):
    index.record_unindexed(b"manifest-1", 3, 900, "header unreadable")
    index.record_unindexed(b"manifest-2", 4, 100, "header unreadable")
    assert index.unindexed() == {
        _native.manifest_hash(b"manifest-1"): {"pack": 3, "end": 900, "why": "header unreadable"},
        _native.manifest_hash(b"manifest-2"): {"pack": 4, "end": 100, "why": "header unreadable"},
    }
    index.commit([entry("1", "2", "3")])  # its manifest is b"manifest-1"
    assert list(index.unindexed()) == [_native.manifest_hash(b"manifest-2")]


def test_replaced_versions_are_kept_until_history_is_forgotten(index):
    index.commit([entry("1", "2", "3", size=10)])
    newer = InstanceEntry(
        entry("1", "2", "3").tags, b"other bytes", 20, "2026-02-01T00:00:00Z", "t", replace=True
    )
    assert [o.status for o in index.commit([newer])] == ["replaced"]
    record = index.get(Level.IMAGE, "1")
    assert record.size == 20 and [v["size"] for v in record.history] == [10]
    assert index.forget_history() == 1
    assert index.get(Level.IMAGE, "1").history is None
    assert index.stats()["size"] == 20


def test_clear_leaves_nothing(archive):
    archive.mark_applied([(1, 100)])
    archive.record_unindexed(b"m", 1, 50, "unreadable")
    archive.clear()
    assert archive.stats() == dict.fromkeys(
        ("patients", "studies", "series", "instances", "size", "patient_conflicts"), 0
    )
    assert list(archive.iter_level(Level.IMAGE)) == []
    assert archive.applied() == {} and archive.unindexed() == {}
    assert archive.lookup("12345") == []
    assert archive.headroom() > 0


def test_a_maintenance_job_is_held_by_one_holder_at_a_time(index):
    # Each call holds the job on its own: a lock file opened anew (LMDB), or another pooled
    # connection's session (PostgreSQL) — as another process, or another node, would.
    with index.exclusive("gc") as first:
        assert first
        with index.exclusive("gc") as second, index.exclusive("reindex") as other_job:
            assert not second
            assert other_job
    with index.exclusive("gc") as again:
        assert again
