"""DICOMweb against `dicomvault serve` with [http] enabled, driven by dicomweb-client and plain
HTTP: QIDO-RS equals C-FIND (DCMTK's findscu), WADO-RS is byte-identical, STOW-RS stores what
C-GET (DCMTK's getscu) then retrieves."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

from dicomvault.testdata import readable_pydicom_test_files
from tests.net.test_dcmtk_peers import findscu, getscu

QR = "WORKSTATION"
# What asks WADO-RS for instances as stored, byte for byte (PS3.18 8.7.3.5.2).
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAMES_AS_STORED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def multipart_parts(response: httpx.Response) -> list[bytes]:
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = email.message_from_bytes(head + response.content, policy=email.policy.HTTP)
    return [part.get_payload(decode=True) for part in message.iter_parts()]


@pytest.mark.parametrize(
    "filters",
    [
        {"PatientName": "smith*"},
        {"StudyDate": "20150101-20191231"},
        {"AccessionNumber": "ACC1002"},
        {},
    ],
)
def test_qido_studies_equal_c_find(served, tmp_path, filters):
    server, _, url = served
    found = DICOMwebClient(url).search_for_studies(search_filters=filters)
    qido = sorted(pydicom.Dataset.from_json(d).StudyInstanceUID for d in found)
    cfind = findscu(server, "STUDY", {**filters, "StudyInstanceUID": ""}, tmp_path)
    assert qido == sorted(ds.StudyInstanceUID for ds in cfind)
    assert qido


def test_qido_series_instances_paging_and_bad_requests(served):
    _, corpus, url = served
    client = DICOMwebClient(url)
    study = corpus[0].study_instance_uid
    series = client.search_for_series(study_instance_uid=study)
    expected = {g.series_instance_uid for g in corpus if g.study_instance_uid == study}
    assert {pydicom.Dataset.from_json(s).SeriesInstanceUID for s in series} == expected
    everything = client.search_for_instances()
    assert len(everything) == len(corpus)
    page = client.search_for_instances(limit=5, offset=5)
    uids = [pydicom.Dataset.from_json(i).SOPInstanceUID for i in everything]
    assert [pydicom.Dataset.from_json(i).SOPInstanceUID for i in page] == uids[5:10]
    assert httpx.get(f"{url}/studies", params={"limit": "many"}).status_code == 400


def test_wado_rs_is_byte_identical(served, tmp_path):
    server, corpus, url = served
    out = tmp_path / "export"
    server.run("export", "--out", out)
    exported = {pydicom.dcmread(p).SOPInstanceUID: p.read_bytes() for p in out.rglob("*.dcm")}
    for g in corpus:
        response = httpx.get(
            f"{url}/studies/{g.study_instance_uid}/series/{g.series_instance_uid}"
            f"/instances/{g.sop_instance_uid}",
            headers={"Accept": AS_STORED},
        )
        assert response.status_code == 200
        assert multipart_parts(response) == [exported[g.sop_instance_uid]]
    study = corpus[0].study_instance_uid
    whole = DICOMwebClient(url).retrieve_study(study)
    assert {ds.SOPInstanceUID for ds in whole} == {
        g.sop_instance_uid for g in corpus if g.study_instance_uid == study
    }
    assert httpx.get(f"{url}/studies/1.2.3.4").status_code == 404


def stow(url: str, paths: list[Path]) -> list[str]:
    """Stores Part 10 files with STOW-RS; returns the SOP Instance UIDs stored."""
    boundary = "dicomvault-test-boundary"
    part = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    body = b"".join(part + p.read_bytes() + b"\r\n" for p in paths)
    body += f"--{boundary}--\r\n".encode()
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    response = httpx.post(
        f"{url}/studies", content=body, headers={"Content-Type": content_type}, timeout=120
    )
    assert response.status_code in (200, 202), response.text
    return [i["00081155"]["Value"][0] for i in response.json()["00081199"]["Value"]]


def uids(path: Path) -> tuple[str, str] | None:
    """(StudyInstanceUID, SOPInstanceUID) of a Part 10 file that has the UIDs a retrieve needs."""
    if path.read_bytes()[128:132] != b"DICM":
        return None
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    keys = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    if not all(ds.get(k) for k in keys):
        return None
    return str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)


def test_stow_rs_stores_pydicom_files_that_c_get_then_retrieves(served, tmp_path):
    server, _, url = served
    files = {p: found for p in readable_pydicom_test_files() if (found := uids(p))}
    files = dict(list(files.items())[:20])
    stored = stow(url, list(files))
    expected = {sop for _, sop in files.values()}
    assert set(stored) == expected
    retrieved: set[str] = set()
    studies = {study for study, _ in files.values()}
    for i, study in enumerate(sorted(studies)):
        found = getscu(
            server, tmp_path / f"get{i}", QueryRetrieveLevel="STUDY", StudyInstanceUID=study
        )
        retrieved |= set(found)
    assert set(stored) <= retrieved


def test_wado_rs_frames_come_from_the_frame_blobs(served):
    _, corpus, url = served
    multiframe = [g for g in corpus if g.number_of_frames > 1]
    native = next(g for g in corpus if g.number_of_frames == 1 and g.transfer_syntax.endswith(".1"))
    assert multiframe
    for g in [*multiframe, native]:
        ds = pydicom.dcmread(g.path)
        if ds.file_meta.TransferSyntaxUID.is_encapsulated:
            expected = list(generate_frames(ds.PixelData, number_of_frames=g.number_of_frames))
        else:
            size = len(ds.PixelData) // g.number_of_frames
            expected = [ds.PixelData[i * size : (i + 1) * size] for i in range(g.number_of_frames)]
        wanted = sorted({1, g.number_of_frames, (g.number_of_frames + 1) // 2})
        instance = (
            f"{url}/studies/{g.study_instance_uid}/series/{g.series_instance_uid}"
            f"/instances/{g.sop_instance_uid}"
        )
        response = httpx.get(
            f"{instance}/frames/{','.join(map(str, wanted))}",
            headers={"Accept": FRAMES_AS_STORED},
        )
        assert response.status_code == 200, response.text
        assert multipart_parts(response) == [expected[n - 1] for n in wanted]
        beyond = httpx.get(f"{instance}/frames/{g.number_of_frames + 1}")
        assert beyond.status_code == 404
    assert httpx.get(f"{instance}/frames/0").status_code == 400


def test_wado_rs_metadata_is_the_header_in_dicom_json(served):
    _, corpus, url = served
    g = corpus[0]
    response = httpx.get(
        f"{url}/studies/{g.study_instance_uid}/series/{g.series_instance_uid}"
        f"/instances/{g.sop_instance_uid}/metadata"
    )
    assert response.status_code == 200
    [ours] = response.json()
    expected = pydicom.dcmread(g.path, stop_before_pixels=True).to_json_dict()
    pixel_data = ours.pop("7FE00010")
    assert ours == expected
    assert pixel_data["BulkDataURI"] == (
        f"{url}/studies/{g.study_instance_uid}/series/{g.series_instance_uid}"
        f"/instances/{g.sop_instance_uid}/bulkdata/7FE00010"
    )
    study = httpx.get(f"{url}/studies/{g.study_instance_uid}/metadata").json()
    assert len(study) == sum(c.study_instance_uid == g.study_instance_uid for c in corpus)


def _with_bulk_data(out: Path) -> Path:
    """A pydicom test file with a private OB value and an icon whose Pixel Data are both
    over the bulk data threshold, and a small OB value that stays inline."""
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    block = ds.private_block(0x0009, "DICOMVAULT TEST", create=True)
    block.add_new(0x10, "OB", bytes(range(256)) * 8)
    block.add_new(0x11, "OB", b"inline")
    icon = pydicom.Dataset()
    icon.Rows = icon.Columns = 64
    icon.BitsAllocated = icon.BitsStored = 8
    icon.PixelData = bytes(range(64)) * 64
    ds.IconImageSequence = [icon]
    path = out / "bulk.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def instance_metadata(url: str, study: str, series: str, instance: str) -> dict:
    """An instance's metadata, fetched with httpx: BulkDataURIs are made from the request's
    Host header, and dicomweb-client sends its host without the port."""
    response = httpx.get(f"{url}/studies/{study}/series/{series}/instances/{instance}/metadata")
    assert response.status_code == 200, response.text
    [metadata] = response.json()
    return metadata


def test_metadata_names_bulk_data_that_retrieve_bulkdata_returns(served, tmp_path):
    _, corpus, url = served
    client = DICOMwebClient(url)
    for g in [g for g in corpus if g.number_of_frames > 1][:2] + corpus[:1]:
        metadata = instance_metadata(
            url, g.study_instance_uid, g.series_instance_uid, g.sop_instance_uid
        )
        pixel_data = client.retrieve_bulkdata(
            metadata["7FE00010"]["BulkDataURI"], media_types=(("application/octet-stream", "*"),)
        )
        ds = pydicom.dcmread(g.path)
        if ds.file_meta.TransferSyntaxUID.is_encapsulated:
            frames = generate_frames(ds.PixelData, number_of_frames=g.number_of_frames)
            assert pixel_data == list(frames)
        else:
            assert pixel_data == [ds.PixelData]
        assert metadata["7FE00010"]["vr"] == ds["PixelData"].VR
    path = _with_bulk_data(tmp_path)
    stow(url, [path])
    ds = pydicom.dcmread(path)
    metadata = instance_metadata(url, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    private = metadata["00091010"]["BulkDataURI"]
    assert client.retrieve_bulkdata(private) == [ds[0x00091010].value]
    assert metadata["00091011"] == {"vr": "OB", "InlineBinary": "aW5saW5l"}
    icon = metadata["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"]
    assert icon.endswith("/bulkdata/00880200/0/7FE00010")
    assert client.retrieve_bulkdata(icon) == [ds.IconImageSequence[0].PixelData]
    base = private.removesuffix("/00091010")
    assert httpx.get(f"{base}/00880200/1/7FE00010").status_code == 404
    assert httpx.get(f"{base}/00100010").status_code == 404  # not binary
    assert httpx.get(f"{base}/0088020").status_code == 400
    assert httpx.get(f"{base}/00880200/x/7FE00010").status_code == 400
