"""`dicomvault serve` against DCMTK's echoscu, storescu, findscu, getscu, movescu and storescp:
storage in every transfer syntax, C-FIND matching per kind and level, byte-identical C-GET
and C-MOVE, the refusals and their statuses, restart with nothing lost; on the embedded
backends and on S3 with PostgreSQL."""

from __future__ import annotations

import re
from pathlib import Path

import pydicom
import pytest
from pynetdicom.dsutils import split_dataset

from dicomvault.bench.corpus import GeneratedInstance, clinical_corpus
from tests.conftest import BACKENDS, backend_sections
from tests.net.conftest import PREFER, Server, StoreSCP, dcmtk, movescu, store_corpus

CALLER = "MODALITY"  # unknown to the server: may echo and store only
QR = "WORKSTATION"  # known, with every service


def dataset_bytes(path: Path) -> bytes:
    """A Part 10 file's data set, after its File Meta (which every writer makes its own)."""
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


@pytest.fixture(params=BACKENDS)
def server(request, tmp_path, storescp):
    srv = Server(
        tmp_path,
        {
            "WORKSTATION": {"aet": QR, "host": "127.0.0.1", "port": 1},
            "STORESCP": {"aet": storescp.aet, "host": "127.0.0.1", "port": storescp.port},
            "NOFIND": {"aet": "NOFIND", "host": "127.0.0.1", "port": 1, "allow": ["echo", "store"]},
        },
        sections=backend_sections(request),
    ).start()
    yield srv
    if srv.alive:
        assert srv.stop() == 0


@pytest.fixture
def corpus(tmp_path) -> list[GeneratedInstance]:
    return clinical_corpus(tmp_path / "corpus")


def exported(server: Server, out: Path) -> dict[str, Path]:
    server.run("export", "--out", out)
    return {p.stem: p for p in out.rglob("*.dcm")}


def test_echo_from_any_ae(server):
    assert (
        "Association Accepted"
        in dcmtk(
            "echoscu", "-v", "-aet", CALLER, "-aec", server.aet, "127.0.0.1", server.port
        ).stderr
    )
    assert server.logged("C-ECHO from MODALITY@127.0.0.1: status 0x0000")


def test_every_transfer_syntax_is_stored_as_sent_and_indexed(server, corpus):
    store_corpus(server, corpus)
    listed = {i["key"]: i for i in server.cli.ls("instances")}
    assert set(listed) == {g.sop_instance_uid for g in corpus}
    for g in corpus:
        # storescu proposed exactly the file's syntax and sends its data set unchanged.
        assert listed[g.sop_instance_uid]["tags"]["TransferSyntaxUID"] == g.transfer_syntax
    files = exported(server, server.workdir / "out")
    for g in corpus:
        ours = pydicom.dcmread(files[g.sop_instance_uid])
        original = pydicom.dcmread(g.path)
        assert ours.SOPInstanceUID == original.SOPInstanceUID
        assert ours.file_meta.TransferSyntaxUID == g.transfer_syntax
        assert (ours.pixel_array == original.pixel_array).all()
    assert server.run("verify").returncode == 0


# getscu offers each SOP class in one presentation context holding its preferred syntax and
# the uncompressed ones; the archive takes the requestor's first choice (tests/net/
# test_transcoding.py fetches with every preference).
def getscu(
    server: Server, out: Path, *options: str, check: bool = True, **keys: str
) -> dict[str, Path]:
    out.mkdir(parents=True)
    argv = []
    for k, v in keys.items():
        argv += ["-k", f"{k}={v}"]
    dcmtk(
        "getscu",
        "-aet",
        QR,
        "-aec",
        server.aet,
        "-S",
        *options,
        "-od",
        out,
        *argv,
        "127.0.0.1",
        server.port,
        check=check,
    )
    return {pydicom.dcmread(p).SOPInstanceUID: p for p in out.iterdir()}


def test_c_get_sends_every_syntax_as_stored_to_a_peer_that_prefers_it(server, corpus, tmp_path):
    store_corpus(server, corpus)
    stored = exported(server, tmp_path / "ours")
    for series_uid, syntax in {(g.series_instance_uid, g.transfer_syntax) for g in corpus}:
        if syntax == "1.2.840.10008.1.2":
            continue  # DCMTK 3.6.7's getscu +xi proposes Explicit VR Little Endian only
        received = getscu(
            server,
            tmp_path / "get" / series_uid,
            PREFER[syntax],
            "+B",
            QueryRetrieveLevel="SERIES",
            SeriesInstanceUID=series_uid,
        )
        expected = {g.sop_instance_uid for g in corpus if g.series_instance_uid == series_uid}
        assert set(received) == expected, syntax
        for uid, path in received.items():
            assert dataset_bytes(path) == dataset_bytes(stored[uid]), (uid, syntax)
    assert "peer did not accept" not in server.log


def test_c_get_decompresses_jpeg2000_for_a_peer_that_wants_it_uncompressed(
    server, corpus, tmp_path
):
    store_corpus(server, corpus)
    j2k = next(g for g in corpus if g.transfer_syntax == "1.2.840.10008.1.2.4.90")
    received = getscu(
        server,
        tmp_path / "plain",
        "+xe",
        QueryRetrieveLevel="IMAGE",
        StudyInstanceUID=j2k.study_instance_uid,
        SeriesInstanceUID=j2k.series_instance_uid,
        SOPInstanceUID=j2k.sop_instance_uid,
    )
    decoded = pydicom.dcmread(received[j2k.sop_instance_uid])
    assert decoded.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert (decoded.pixel_array == pydicom.dcmread(j2k.path).pixel_array).all()


def test_c_move_to_storescp_is_byte_identical_in_every_syntax(
    server, corpus, storescp: StoreSCP, tmp_path
):
    store_corpus(server, corpus)
    stored = exported(server, tmp_path / "ours")
    for study in sorted({g.study_instance_uid for g in corpus}):
        expected = [g for g in corpus if g.study_instance_uid == study]
        result = movescu(
            server, QR, storescp.aet, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": study}
        )
        assert "Received Final Move Response (Success)" in result.stderr
        assert f"Received Move Response {len(expected)} (Pending)" in result.stderr
    received = {pydicom.dcmread(p).SOPInstanceUID: p for p in storescp.out.iterdir()}
    assert set(received) == {g.sop_instance_uid for g in corpus}
    for uid, path in received.items():
        assert dataset_bytes(path) == dataset_bytes(stored[uid])
    assert "peer did not accept" not in server.log


def findscu(
    server: Server,
    level: str,
    keys: dict[str, str],
    tmp_path: Path,
    model: str = "-S",
    aet: str = QR,
) -> list[pydicom.Dataset]:
    out = tmp_path / f"find-{len(list(tmp_path.glob('find-*')))}"
    out.mkdir()
    argv = [
        "-aet",
        aet,
        "-aec",
        server.aet,
        model,
        "-X",
        "-od",
        out,
        "-k",
        f"QueryRetrieveLevel={level}",
    ]
    for k, v in keys.items():
        argv += ["-k", f"{k}={v}"]
    dcmtk("findscu", *argv, "127.0.0.1", server.port)
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


@pytest.mark.parametrize(
    ("level", "keys", "select"),
    [
        # Single value, and universal matching of a return key.
        (
            "STUDY",
            {"AccessionNumber": "ACC1002", "StudyDescription": ""},
            lambda ds: ds.AccessionNumber == "ACC1002",
        ),
        # Wildcards; PatientName is case-insensitive by default.
        ("STUDY", {"PatientName": "smith*"}, lambda ds: str(ds.PatientName).startswith("Smith")),
        ("STUDY", {"StudyDescription": "CT?CHEST"}, lambda ds: ds.StudyDescription == "CT CHEST"),
        # Date ranges, closed and open; an empty StudyDate never matches a range.
        (
            "STUDY",
            {"StudyDate": "20150101-20181231"},
            lambda ds: "20150101" <= ds.StudyDate <= "20181231",
        ),
        ("STUDY", {"StudyDate": "20210101-"}, lambda ds: ds.StudyDate >= "20210101"),
        (
            "STUDY",
            {"StudyDate": "-20160101"},
            lambda ds: ds.StudyDate != "" and ds.StudyDate <= "20160101",
        ),
        # UID list.
        ("SERIES", {"Modality": "MR"}, lambda ds: ds.Modality == "MR"),
        # Two patients share PatientID 12345 under different issuers: both match.
        ("PATIENT", {"PatientID": "12345"}, lambda ds: ds.PatientID == "12345"),
        ("IMAGE", {"PatientID": "GR001"}, lambda ds: ds.PatientID == "GR001"),
        # Queries without the higher-level unique keys are accepted (as Orthanc does).
        ("SERIES", {"SeriesDescription": "MR*"}, lambda ds: ds.SeriesDescription.startswith("MR")),
    ],
)
def test_c_find_result_sets_per_matching_kind_and_level(
    server, corpus, tmp_path, level, keys, select
):
    store_corpus(server, corpus)
    originals = [pydicom.dcmread(g.path, stop_before_pixels=True) for g in corpus]
    unique = {
        "PATIENT": lambda d: (d.PatientID, d.get("IssuerOfPatientID", "")),
        "STUDY": lambda d: d.StudyInstanceUID,
        "SERIES": lambda d: d.SeriesInstanceUID,
        "IMAGE": lambda d: d.SOPInstanceUID,
    }[level]
    expected = {unique(d) for d in originals if select(d)}
    model = "-P" if level == "PATIENT" else "-S"
    found = findscu(
        server,
        level,
        {**keys, **({"IssuerOfPatientID": ""} if level == "PATIENT" else {})},
        tmp_path,
        model=model,
    )
    assert {unique(d) for d in found} == expected
    assert all(d.QueryRetrieveLevel == level and d.RetrieveAETitle == server.aet for d in found)


def test_c_find_uid_lists_computed_keys_and_character_sets(server, corpus, tmp_path):
    store_corpus(server, corpus)
    studies = sorted({g.study_instance_uid for g in corpus})[:3]
    found = findscu(
        server,
        "STUDY",
        {
            "StudyInstanceUID": "\\".join(studies),
            "ModalitiesInStudy": "",
            "NumberOfStudyRelatedInstances": "",
            "NumberOfStudyRelatedSeries": "",
            "PatientName": "",
        },
        tmp_path,
    )
    assert sorted(d.StudyInstanceUID for d in found) == studies
    for d in found:
        instances = [g for g in corpus if g.study_instance_uid == d.StudyInstanceUID]
        assert int(d.NumberOfStudyRelatedInstances) == len(instances)
        assert int(d.NumberOfStudyRelatedSeries) == len({g.series_instance_uid for g in instances})
        modalities = (
            d.ModalitiesInStudy
            if isinstance(d.ModalitiesInStudy, list | pydicom.multival.MultiValue)
            else [d.ModalitiesInStudy]
        )
        assert sorted(modalities) == sorted({g.modality for g in instances})
    # A Japanese name comes back in a character set that holds it.
    [japanese] = findscu(
        server, "PATIENT", {"PatientID": "JP001", "PatientName": ""}, tmp_path, model="-P"
    )
    assert str(japanese.PatientName).startswith("Yamada^Tarou=山田^太郎")
    # And can be searched by its ideographic group, in the query's own character set.
    hits = findscu(
        server,
        "PATIENT",
        {"SpecificCharacterSet": "ISO_IR 192", "PatientName": "山田*"},
        tmp_path,
        model="-P",
    )
    assert [str(h.PatientID) for h in hits] == ["JP001"]


def test_c_find_uid_list_with_an_empty_item_finds_the_others(server, corpus, tmp_path):
    """PS3.4 C.2.2.2.2: an empty item of a List of UID Matching ("1.2\\", "\\1.2") is no UID
    and matches nothing; the other items match as ever (it failed the C-FIND: LMDB refused
    the empty key, MDB_BAD_VALSIZE)."""
    store_corpus(server, corpus)
    studies = sorted({g.study_instance_uid for g in corpus})[:2]
    for uids, expected in (
        (f"{studies[0]}\\", studies[:1]),
        (f"\\{studies[0]}\\\\{studies[1]}", studies),
        ("\\", []),
    ):
        found = findscu(server, "STUDY", {"StudyInstanceUID": uids}, tmp_path)
        assert sorted(d.StudyInstanceUID for d in found) == expected
    series = corpus[0].series_instance_uid
    found = findscu(server, "SERIES", {"SeriesInstanceUID": f"{series}\\"}, tmp_path)
    assert [d.SeriesInstanceUID for d in found] == [series]
    assert "Traceback" not in server.log


def test_refusals_and_their_statuses(server, corpus, tmp_path):
    store_corpus(server, corpus)
    study = corpus[0].study_instance_uid
    # An unknown AE may store but not query or retrieve.
    refused = dcmtk(
        "findscu",
        "-v",
        "-aet",
        CALLER,
        "-aec",
        server.aet,
        "-S",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "StudyInstanceUID",
        "127.0.0.1",
        server.port,
        check=False,
    )
    # 0x0124 Refused: Not Authorized (PS3.7 C.5), which DCMTK 3.6.7 prints as "0x124".
    assert re.search(r"Final Find Response \(.*0x0?124\)", refused.stderr), refused.stderr
    assert "Pending" not in refused.stderr
    limited = dcmtk(
        "findscu",
        "-v",
        "-aet",
        "NOFIND",
        "-aec",
        server.aet,
        "-S",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "127.0.0.1",
        server.port,
        check=False,
    )
    assert re.search(r"0x0?124", limited.stderr)
    out = tmp_path / "refused-get"
    out.mkdir()
    dcmtk(
        "getscu",
        "-aet",
        CALLER,
        "-aec",
        server.aet,
        "-S",
        "-od",
        out,
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study}",
        "127.0.0.1",
        server.port,
        check=False,
    )
    assert list(out.iterdir()) == []
    # A move to a destination nobody configured.
    unknown = movescu(
        server,
        QR,
        "NOBODY",
        {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": study},
        check=False,
    )
    assert "Final Move Response (Refused: MoveDestinationUnknown)" in unknown.stderr
    assert server.logged("FIND from MODALITY@127.0.0.1 refused")
    assert server.logged("C-MOVE to unknown destination 'NOBODY'")


def test_restart_keeps_everything_acknowledged(server, corpus, tmp_path):
    store_corpus(server, corpus)
    before = server.cli.ls("instances")
    assert server.stop() == 0
    server.start()
    assert server.cli.ls("instances") == before
    found = findscu(server, "IMAGE", {"SOPInstanceUID": ""}, tmp_path)
    assert {d.SOPInstanceUID for d in found} == {g.sop_instance_uid for g in corpus}


def test_patient_study_only_model_refuses_series_level(server, corpus, tmp_path):
    store_corpus(server, corpus)
    studies = findscu(server, "STUDY", {"PatientID": "GR001"}, tmp_path, model="-O")
    assert {d.StudyInstanceUID for d in studies} == {
        g.study_instance_uid for g in corpus if g.patient_id == "GR001"
    }
    refused = dcmtk(
        "findscu",
        "-v",
        "-aet",
        QR,
        "-aec",
        server.aet,
        "-O",
        "-k",
        "QueryRetrieveLevel=SERIES",
        "127.0.0.1",
        server.port,
        check=False,
    )
    # 0xA900, which DCMTK names "DataSetDoesNotMatchSOPClass".
    assert "Final Find Response (Error: DataSetDoesNotMatchSOPClass)" in refused.stderr


def test_person_name_matching_can_be_made_case_sensitive(tmp_path, corpus):
    srv = Server(
        tmp_path,
        {"WORKSTATION": {"aet": QR, "host": "127.0.0.1", "port": 1}},
        sections={"index": {"case_insensitive_pn": False}},
    ).start()
    try:
        store_corpus(srv, corpus)
        assert findscu(srv, "STUDY", {"PatientName": "smith*"}, tmp_path) == []
        assert len(findscu(srv, "STUDY", {"PatientName": "Smith*"}, tmp_path)) == 3
        # A retrieve selects as the query matches (it once used the index's default).
        smiths = {g.sop_instance_uid for g in corpus if g.patient_id == "12345"}
        keys = {"QueryRetrieveLevel": "STUDY", "PatientName": "smith*"}
        assert getscu(srv, tmp_path / "lower", **keys) == {}
        keys["PatientName"] = "Smith*"
        assert set(getscu(srv, tmp_path / "upper", **keys)) == smiths
    finally:
        assert srv.stop() == 0
