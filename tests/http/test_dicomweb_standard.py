"""DICOMweb as PS3.18 has it, status codes included: WADO-RS content negotiation (8.7.3),
STOW-RS checks and response (10.5, Annex I), QIDO-RS parameters and results (8.3, 10.6)."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import httpx
import jpeg_ls
import libjpeg
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomvault.bench.corpus import GeneratedInstance
from tests.net.conftest import storescu
from tests.net.test_integrity import dataset_bytes

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LS = "1.2.840.10008.1.2.4.80"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
RLE = "1.2.840.10008.1.2.5"
DICOM = 'multipart/related; type="application/dicom"'
# PS3.18 Table I.2-2 Failure Reasons (the C-STORE statuses); PS3.7 Annex C's 0111 "Duplicate
# SOP Instance" (Table I.2-2 allows more).
CANNOT_UNDERSTAND, DATA_SET_DOES_NOT_MATCH, SOP_CLASS_NOT_SUPPORTED = 0xC000, 0xA900, 0x0122
DUPLICATE_SOP_INSTANCE = 0x0111
# A UID of no transfer syntax the archive knows (the stranger's): as long as Explicit VR
# Little Endian's.
NOT_A_SYNTAX = "1.2.840.10008.1.2.9"
RETRIEVE_URL, FAILED_SOP, REFERENCED_SOP, FAILURE_REASON = (
    "00081190",
    "00081198",
    "00081199",
    "00081197",
)


def instance_url(url: str, g: GeneratedInstance) -> str:
    return (
        f"{url}/studies/{g.study_instance_uid}/series/{g.series_instance_uid}"
        f"/instances/{g.sop_instance_uid}"
    )


def parts_with_types(response: httpx.Response) -> list[tuple[str, bytes]]:
    """(Content-Type as sent, payload) of each part of a multipart/related response."""
    boundary = response.headers["content-type"].split("boundary=")[1].strip('"')
    parts = []
    for chunk in response.content.split(f"--{boundary}".encode())[1:-1]:
        head, _, payload = chunk.partition(b"\r\n\r\n")
        media = next(
            line.split(b":", 1)[1].strip().decode()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-type:")
        )
        parts.append((media, payload.removesuffix(b"\r\n")))
    return parts


def pick(corpus: list[GeneratedInstance], syntax: str, frames: int = 1) -> GeneratedInstance:
    return next(g for g in corpus if g.transfer_syntax == syntax and g.number_of_frames >= frames)


def pixels(data: bytes) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data))
        if ds.file_meta.TransferSyntaxUID == JPEG_BASELINE:
            ds.pixel_array_options(decoding_plugin="pillow")
        return ds.pixel_array


# WADO-RS ------------------------------------------------------------------------------------


def test_wado_rs_instances_default_to_explicit_vr_little_endian_and_star_is_as_stored(served):
    _, corpus, url = served
    jpeg = pick(corpus, JPEG_BASELINE)
    # No transfer-syntax: Explicit VR Little Endian (PS3.18 Table 8.7.3-2), decoded.
    response = httpx.get(instance_url(url, jpeg), headers={"Accept": DICOM})
    assert response.status_code == 200
    [(media, part)] = parts_with_types(response)
    assert media == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
    decoded = pydicom.dcmread(io.BytesIO(part))
    assert decoded.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert decoded.LossyImageCompression == "01"  # PS3.3 C.7.6.1.1.5: once lossy, always
    assert decoded.LossyImageCompressionMethod == "ISO_10918_1"
    assert (pixels(part) == pixels(jpeg.path.read_bytes())).all()
    # transfer-syntax=*: as stored, byte for byte.
    response = httpx.get(instance_url(url, jpeg), headers={"Accept": f"{DICOM}; transfer-syntax=*"})
    [(media, part)] = parts_with_types(response)
    assert media == f"application/dicom; transfer-syntax={JPEG_BASELINE}"
    assert pydicom.dcmread(io.BytesIO(part)).PixelData == pydicom.dcmread(jpeg.path).PixelData


def test_wado_rs_makes_lossless_syntaxes_and_refuses_lossy_ones_with_406(served):
    _, corpus, url = served
    native = pick(corpus, EXPLICIT_LE)
    accept = f"{DICOM}; transfer-syntax={JPEG_LS}"
    response = httpx.get(instance_url(url, native), headers={"Accept": accept})
    assert response.status_code == 200
    [(media, part)] = parts_with_types(response)
    assert media == f"application/dicom; transfer-syntax={JPEG_LS}"
    assert (pixels(part) == pixels(native.path.read_bytes())).all()
    # A lossy syntax from native pixels: only a lossy encoder could make it (8.7.3.5: 406).
    lossy = f"{DICOM}; transfer-syntax={JPEG_BASELINE}"
    assert httpx.get(instance_url(url, native), headers={"Accept": lossy}).status_code == 406
    study = f"{url}/studies/{native.study_instance_uid}"
    assert httpx.get(study, headers={"Accept": lossy}).status_code == 406
    assert httpx.get(study, headers={"Accept": "text/html"}).status_code == 406
    # The second choice is taken when the first cannot be made.
    either = f"{lossy}; q=0.9, {DICOM}; transfer-syntax=1.2.840.10008.1.2; q=0.5"
    response = httpx.get(instance_url(url, native), headers={"Accept": either})
    assert response.status_code == 200
    [(media, _)] = parts_with_types(response)
    assert media.endswith("transfer-syntax=1.2.840.10008.1.2")
    bad = f"{DICOM}; transfer-syntax=JPEG"
    assert httpx.get(instance_url(url, native), headers={"Accept": bad}).status_code == 400


def test_wado_rs_bare_application_dicom_is_an_instance_alone(served):
    _, corpus, url = served
    rle = pick(corpus, RLE)
    # PS3.18 10.4.4: single part application/dicom is for an instance resource, its Part 10
    # file the whole response (Explicit VR Little Endian by default, Table 8.7.3-2).
    response = httpx.get(instance_url(url, rle), headers={"Accept": "application/dicom"})
    assert response.status_code == 200
    assert response.headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
    made = pydicom.dcmread(io.BytesIO(response.content))
    assert made.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert made.SOPInstanceUID == rle.sop_instance_uid
    assert (pixels(response.content) == pixels(rle.path.read_bytes())).all()
    star = httpx.get(
        instance_url(url, rle), headers={"Accept": "application/dicom; transfer-syntax=*"}
    )
    assert star.headers["content-type"] == f"application/dicom; transfer-syntax={RLE}"
    as_stored = pydicom.dcmread(io.BytesIO(star.content))
    assert as_stored.PixelData == pydicom.dcmread(rle.path).PixelData
    # A study or series is never one part: the range is ignored, and with none left, 406
    # (8.7.8.1); a multipart range next to it is taken.
    series = f"{url}/studies/{rle.study_instance_uid}/series/{rle.series_instance_uid}"
    for resource in (series, f"{url}/studies/{rle.study_instance_uid}"):
        refused = httpx.get(resource, headers={"Accept": "application/dicom"})
        assert refused.status_code == 406, resource
        either = httpx.get(resource, headers={"Accept": f"application/dicom, {DICOM}; q=0.5"})
        assert either.status_code == 200
        assert len(parts_with_types(either)) == 3


def test_wado_rs_transfer_syntax_is_a_transfer_syntax_uid(served, tmp_path):
    _, _, url = served
    # An RT Plan has no Pixel Data: every transfer syntax carries it, no other UID does
    # (PS3.18 8.7.3.5.2: a UID of PS3.6 Table A-1 of type Transfer Syntax).
    ds = pydicom.dcmread(PYDICOM_FILES / "rtplan.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "rtplan.dcm", enforce_file_format=True)
    assert stow(url, [(tmp_path / "rtplan.dcm").read_bytes()]).status_code == 200
    plan = f"{url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    plan += f"/instances/{ds.SOPInstanceUID}"
    for not_a_syntax in ("1.2.3.4", ds.SOPClassUID):
        for accept in (
            f"{DICOM}; transfer-syntax={not_a_syntax}",
            f"application/dicom; transfer-syntax={not_a_syntax}",
        ):
            response = httpx.get(plan, headers={"Accept": accept})
            assert response.status_code == 406, (accept, response.headers)
    response = httpx.get(plan, headers={"Accept": f"{DICOM}; transfer-syntax={JPEG_LS}"})
    assert response.status_code == 200
    [(media, part)] = parts_with_types(response)
    assert media == f"application/dicom; transfer-syntax={JPEG_LS}"
    assert pydicom.dcmread(io.BytesIO(part)).SOPInstanceUID == ds.SOPInstanceUID


def test_wado_rs_frames_have_their_real_media_types_and_are_made_when_asked(served):
    _, corpus, url = served
    rle = pick(corpus, RLE, frames=50)
    original = pixels(rle.path.read_bytes())
    # Default: uncompressed (application/octet-stream, Explicit VR Little Endian).
    response = httpx.get(f"{instance_url(url, rle)}/frames/1,50")
    assert response.status_code == 200
    frames = parts_with_types(response)
    assert [m for m, _ in frames] == [
        f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    ] * 2
    assert frames[1][1] == original[49].astype("<u2").tobytes()
    # As stored: the RLE frames, labelled as such (PS3.18 Table 8.7.3-5).
    star = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    [(media, frame)] = parts_with_types(
        httpx.get(f"{instance_url(url, rle)}/frames/2", headers={"Accept": star})
    )
    assert media == f"image/dicom-rle; transfer-syntax={RLE}"
    jpeg = pick(corpus, JPEG_BASELINE)
    [(media, frame)] = parts_with_types(
        httpx.get(f"{instance_url(url, jpeg)}/frames/1", headers={"Accept": star})
    )
    assert media == f"image/jpeg; transfer-syntax={JPEG_BASELINE}" and frame[:2] == b"\xff\xd8"
    # image/jls asked of native frames: JPEG-LS made losslessly.
    native = pick(corpus, EXPLICIT_LE, frames=50)
    jls = 'multipart/related; type="image/jls"'
    response = httpx.get(f"{instance_url(url, native)}/frames/3", headers={"Accept": jls})
    assert response.status_code == 200
    [(media, frame)] = parts_with_types(response)
    assert media == f"image/jls; transfer-syntax={JPEG_LS}"
    assert (
        jpeg_ls.decode(np.frombuffer(frame, np.uint8)) == pixels(native.path.read_bytes())[2]
    ).all()
    # image/jpeg of native frames: its default, JPEG Lossless SV1, made losslessly; never
    # JPEG baseline, which would be lossy (406).
    jpeg_any = 'multipart/related; type="image/jpeg"'
    response = httpx.get(f"{instance_url(url, native)}/frames/1", headers={"Accept": jpeg_any})
    assert response.status_code == 200
    [(media, frame)] = parts_with_types(response)
    assert media == f"image/jpeg; transfer-syntax={JPEG_LOSSLESS_SV1}"
    expected = pixels(native.path.read_bytes())[0]
    assert (libjpeg.decode(frame).astype(expected.dtype) == expected).all()
    lossy = f"{jpeg_any}; transfer-syntax={JPEG_BASELINE}"
    assert (
        httpx.get(f"{instance_url(url, native)}/frames/1", headers={"Accept": lossy}).status_code
        == 406
    )


# STOW-RS ------------------------------------------------------------------------------------


def stow(url: str, parts: list[bytes], study: str | None = None) -> httpx.Response:
    boundary = "dicomvault-standard"
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
        for p in parts
    )
    body += f"--{boundary}--\r\n".encode()
    target = f"{url}/studies" + (f"/{study}" if study else "")
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return httpx.post(target, content=body, headers={"Content-Type": content_type}, timeout=60)


def variant(g: GeneratedInstance, tmp_path: Path, **changes: object) -> tuple[bytes, str]:
    """A copy of ``g`` as a new instance, with attributes changed (None deletes); its UID."""
    ds = pydicom.dcmread(g.path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid = generate_uid()
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    out = tmp_path / f"{uid}.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out.read_bytes(), uid


def failures(response: httpx.Response) -> list[tuple[str, str, int]]:
    return [
        (
            item["00081150"].get("Value", [""])[0],
            item["00081155"].get("Value", [""])[0],
            item[FAILURE_REASON]["Value"][0],
        )
        for item in response.json().get(FAILED_SOP, {}).get("Value", [])
    ]


def found(url: str, uid: str) -> bool:
    return bool(httpx.get(f"{url}/instances", params={"SOPInstanceUID": uid}).json())


def test_stow_rs_refuses_each_instance_the_archive_cannot_store_and_stores_nothing_of_it(
    served, tmp_path
):
    _, corpus, url = served
    multiframe = pick(corpus, EXPLICIT_LE, frames=50)
    whole, cut_uid = variant(multiframe, tmp_path)
    truncated = stow(url, [whole[:-5000]])
    assert truncated.status_code == 409  # PS3.18 Table 10.5.3-1: none stored
    [(sop_class, sop_instance, reason)] = failures(truncated)
    assert (sop_class, sop_instance, reason) == (
        multiframe_class(multiframe),
        cut_uid,
        CANNOT_UNDERSTAND,
    )
    g = pick(corpus, EXPLICIT_LE)
    no_sop_uid, _ = variant(g, tmp_path, SOPInstanceUID=None)
    no_series, no_series_uid = variant(g, tmp_path, SeriesInstanceUID=None)
    not_storage, not_storage_uid = variant(g, tmp_path, SOPClassUID="1.2.840.10008.5.1.4.31")
    good, good_uid = variant(g, tmp_path)
    mixed = stow(url, [no_sop_uid, no_series, not_storage, good])
    assert mixed.status_code == 202  # some stored, some failed
    reasons = {uid: reason for _, uid, reason in failures(mixed)}
    assert reasons == {
        "": DATA_SET_DOES_NOT_MATCH,
        no_series_uid: DATA_SET_DOES_NOT_MATCH,
        not_storage_uid: SOP_CLASS_NOT_SUPPORTED,
    }
    [stored] = mixed.json()[REFERENCED_SOP]["Value"]
    assert stored["00081155"]["Value"] == [good_uid]
    assert stored[RETRIEVE_URL]["Value"][0].endswith(
        f"/studies/{g.study_instance_uid}/series/{g.series_instance_uid}/instances/{good_uid}"
    )
    assert mixed.json()[RETRIEVE_URL]["Value"] == [f"{url}/studies/{g.study_instance_uid}"]
    assert found(url, good_uid)
    for uid in (cut_uid, no_series_uid, not_storage_uid):
        assert not found(url, uid)


def multiframe_class(g: GeneratedInstance) -> str:
    return str(pydicom.dcmread(g.path, stop_before_pixels=True).SOPClassUID)


def test_stow_rs_to_a_study_refuses_instances_of_another(served, tmp_path):
    _, corpus, url = served
    g = corpus[0]
    other = next(c for c in corpus if c.study_instance_uid != g.study_instance_uid)
    data, uid = variant(g, tmp_path)
    refused = stow(url, [data], study=other.study_instance_uid)
    assert refused.status_code == 409
    assert failures(refused)[0][1:] == (uid, DATA_SET_DOES_NOT_MATCH)
    assert refused.json()[RETRIEVE_URL]["Value"] == [f"{url}/studies/{other.study_instance_uid}"]
    assert not found(url, uid)
    accepted = stow(url, [data], study=g.study_instance_uid)
    assert accepted.status_code == 200
    assert accepted.json()[RETRIEVE_URL]["Value"] == [f"{url}/studies/{g.study_instance_uid}"]
    assert found(url, uid)


def unknown_syntax(data: bytes) -> bytes:
    """The instance (in Explicit VR Little Endian) with its File Meta naming no syntax."""
    return data.replace(EXPLICIT_LE.encode(), NOT_A_SYNTAX.encode(), 1)


def test_an_instance_in_a_syntax_no_decoder_knows_is_kept_and_served_as_held(served, tmp_path):
    """An instance whose File Meta names a syntax the archive cannot decode (a vendor's
    private one) is stored as received, as Orthanc keeps it: WADO-RS serves it as stored when
    asked for as stored, and answers 406 where it would have to decode it (PS3.18 8.7.3.5.2:
    the default is Explicit VR Little Endian); it was a 500, "UID is not a transfer syntax"."""
    _, corpus, url = served
    g = pick(corpus, EXPLICIT_LE)
    data, uid = variant(g, tmp_path)
    stored = stow(url, [unknown_syntax(data)])
    assert stored.status_code == 200, stored.text
    at = f"{url}/studies/{g.study_instance_uid}/series/{g.series_instance_uid}/instances/{uid}"
    held = httpx.get(at, headers={"Accept": f"{DICOM}; transfer-syntax=*"})
    assert held.status_code == 200
    [(media, part)] = parts_with_types(held)
    assert media == f"application/dicom; transfer-syntax={NOT_A_SYNTAX}"
    assert dataset_bytes(part) == dataset_bytes(unknown_syntax(data))
    for resource in (at, f"{at}/frames/1"):
        assert httpx.get(resource).status_code == 406, resource


def test_uids_the_archive_holds_can_be_read_and_deleted_over_http(served, tmp_path):
    """A SOP Instance UID past PS3.5 9.1's 64 characters, a Study UID with an empty component:
    stored (by STOW-RS as by the listener, as Orthanc and dcm4chee do), so the WADO-RS and
    REST routes take them too (they answered 400 "is not a UID")."""
    _, corpus, url = served
    g = pick(corpus, EXPLICIT_LE)
    long_uid = (generate_uid() + "." + "9" * 72)[:72]
    study, series = generate_uid()[:60].replace(".", "..", 1), generate_uid()
    ds = pydicom.dcmread(g.path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = long_uid
    ds.SeriesInstanceUID = series
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's, about the UIDs this test is about
        ds.StudyInstanceUID = study
        ds.save_as(tmp_path / "long.dcm", enforce_file_format=True)
    long_data = (tmp_path / "long.dcm").read_bytes()
    assert stow(url, [long_data]).status_code == 200
    retrieved = httpx.get(
        f"{url}/studies/{study}/series/{series}/instances/{long_uid}",
        headers={"Accept": f"{DICOM}; transfer-syntax=*"},
    )
    assert retrieved.status_code == 200, retrieved.text
    assert [payload for _, payload in parts_with_types(retrieved)] == [long_data]
    rest = url.removesuffix("/dicom-web")
    assert httpx.get(f"{rest}/instances/{long_uid}/file").content == long_data
    assert httpx.delete(f"{rest}/studies/{study}").status_code == 200
    assert not found(url, long_uid)
    assert httpx.get(f"{rest}/instances/1.2.3abc/tags").status_code == 400  # not UI's characters


def test_stow_rs_of_other_bytes_under_a_stored_uid_is_a_failure(served, tmp_path):
    """Under [storage] on_duplicate = "keep" the archive keeps what it holds: the instance
    sent is not stored, so it is a Failed SOP item (PS3.18 I.1), 0111 Duplicate SOP Instance,
    not a success (the new bytes were dropped silently). The same bytes again are a success."""
    _, corpus, url = served
    data, uid = variant(pick(corpus, EXPLICIT_LE), tmp_path)
    assert stow(url, [data]).status_code == 200
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PatientName = "CORRECTED^NAME"
    ds.save_as(tmp_path / "other.dcm", enforce_file_format=True)
    other = stow(url, [(tmp_path / "other.dcm").read_bytes()])
    assert other.status_code == 409
    assert failures(other)[0][1:] == (uid, DUPLICATE_SOP_INSTANCE)
    assert REFERENCED_SOP not in other.json()
    again = stow(url, [data])
    assert again.status_code == 200
    assert again.json()[REFERENCED_SOP]["Value"][0]["00081155"]["Value"] == [uid]


def test_stow_rs_of_metadata_and_bulk_data_is_415(served, tmp_path):
    """PS3.18 Table 10.5.3-1: 415 for a media type the origin server does not support (it was
    a 409 with Failed SOP items of no UIDs)."""
    _, corpus, url = served
    g = pick(corpus, EXPLICIT_LE)
    metadata = json.dumps([pydicom.dcmread(g.path, stop_before_pixels=True).to_json_dict()])
    body = (
        b"--m\r\nContent-Type: application/dicom+json\r\n\r\n"
        + metadata.encode()
        + b"\r\n--m\r\nContent-Type: application/octet-stream\r\n\r\n"
        + b"\0" * 512
        + b"\r\n--m--\r\n"
    )
    for content_type in (
        'multipart/related; type="application/dicom+json"; boundary=m',
        "multipart/related; boundary=m",  # said by the parts alone
    ):
        response = httpx.post(
            f"{url}/studies", content=body, headers={"Content-Type": content_type}
        )
        assert response.status_code == 415, response.text


@pytest.mark.parametrize("cut", ["in Pixel Data", "before Pixel Data"])
def test_stow_rs_names_a_part_the_body_ends_inside(served, tmp_path, cut):
    """A part the body ends inside is refused, the data set read whole or not (cut where an
    element begins, it scans as complete), and its Failed SOP Sequence item carries the
    UIDs its header holds (PS3.3 Table 10-11: both are Type 1)."""
    _, corpus, url = served
    g = pick(corpus, EXPLICIT_LE, frames=50)
    good, good_uid = variant(pick(corpus, EXPLICIT_LE), tmp_path)
    whole, cut_uid = variant(g, tmp_path)
    pixel_data = whole.index(b"\xe0\x7f\x10\x00")  # (7FE0,0010), little endian
    at = len(whole) // 2 if cut == "in Pixel Data" else pixel_data
    body = b"".join(
        b"--cut\r\nContent-Type: application/dicom\r\n\r\n" + p
        for p in (good + b"\r\n", whole[:at])
    )
    response = httpx.post(
        f"{url}/studies",
        content=body,
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=cut'},
    )
    assert response.status_code == 202
    assert failures(response) == [(multiframe_class(g), cut_uid, CANNOT_UNDERSTAND)]
    assert found(url, good_uid)
    assert not found(url, cut_uid)


def test_import_refuses_what_stow_rs_refuses(cli, tmp_path):
    from dicomvault.bench.corpus import clinical_corpus

    corpus = clinical_corpus(tmp_path / "corpus")
    g = next(c for c in corpus if c.number_of_frames > 1)
    files = tmp_path / "in"
    files.mkdir()
    whole, cut_uid = variant(g, files)
    (files / f"{cut_uid}.dcm").write_bytes(whole[:-5000])
    variant(g, files, StudyInstanceUID=None)
    result = cli.run("import", files, check=False)
    assert result.returncode != 0
    assert "cut short" in result.stdout + result.stderr
    assert "StudyInstanceUID" in result.stdout + result.stderr
    assert cli.ls("instances") == []


# QIDO-RS ------------------------------------------------------------------------------------


def test_qido_rs_bad_parameters_are_400_with_the_reason(served):
    """PS3.18 8.3: a supported parameter with an invalid value is a 400."""
    _, _, url = served
    for params, named in (
        ({"limit": "-1"}, "limit"),
        ({"offset": "1_0"}, "offset"),
        ({"includefield": "Nonsense"}, "Nonsense"),
        ({"fuzzymatching": "perhaps"}, "fuzzymatching"),
        ({"emptyvaluematching": "yes"}, "emptyvaluematching"),
        ({"multiplevaluematching": "1"}, "multiplevaluematching"),
        # Not a DA (PS3.5 6.2: YYYYMMDD), nor a range of them: these matched nothing, 200 [].
        ({"StudyDate": "20041301"}, "StudyDate"),
        ({"StudyDate": "2004-01-19"}, "StudyDate"),
        ({"PatientBirthDate": "19700101-2000"}, "PatientBirthDate"),
        ({"StudyDate": "-"}, "StudyDate"),
    ):
        response = httpx.get(f"{url}/studies", params=params)
        assert response.status_code == 400, params
        assert named in response.json()["error"]
    assert httpx.get(f"{url}/studies", params={"StudyDate": "20150101-"}).json()


def test_qido_rs_ignores_unsupported_parameters_with_a_warning(served):
    """PS3.18 8.3: an unsupported parameter is ignored, the search made as if it were not
    there; 8.3.4.5/8.3.4.6: Empty and Multiple Value Matching, which this archive does not
    perform, are answered the same way with the Warning the standard gives."""
    _, _, url = served
    everything = httpx.get(f"{url}/studies").json()
    for params, said in (
        ({"foo": "bar"}, "The foo parameter is not supported"),
        ({"00090010": "GEMS_IDEN_01"}, "Matching on 00090010"),  # private: not matched
        ({"emptyvaluematching": "true"}, "The emptyvaluematching parameter is not supported"),
        (
            {"multiplevaluematching": "true"},
            "The multiplevaluematching parameter is not supported",
        ),
    ):
        response = httpx.get(f"{url}/studies", params=params)
        assert response.status_code == 200 and response.json() == everything, params
        assert (
            response.headers["Warning"].startswith("299 ") and said in response.headers["Warning"]
        )
    quiet = httpx.get(f"{url}/studies", params={"emptyvaluematching": "false"})
    assert quiet.json() == everything and "Warning" not in quiet.headers


def test_qido_rs_uid_lists_by_comma_or_backslash_and_empty_items(served):
    """PS3.18 8.3.4.1 uid-list-match: 1#value, a comma-separated list (RFC 7230 7), as well
    as C-FIND's backslash; PS3.4 C.2.2.2.2: an empty item is no UID and matches nothing (it
    was a 500, MDB_BAD_VALSIZE, on LMDB)."""
    _, corpus, url = served
    studies = sorted({g.study_instance_uid for g in corpus})[:2]
    series = corpus[0].series_instance_uid
    instance = corpus[0].sop_instance_uid

    def uids(level: str, params: dict[str, str], tag: str) -> list[str]:
        response = httpx.get(f"{url}/{level}", params=params)
        assert response.status_code == 200, response.text
        return sorted(r[tag]["Value"][0] for r in response.json())

    for value in (",".join(studies), "\\".join(studies), f"{studies[0]},{studies[1]}\\"):
        assert uids("studies", {"StudyInstanceUID": value}, "0020000D") == studies
    assert uids("studies", {"StudyInstanceUID": f"{studies[0]}\\"}, "0020000D") == studies[:1]
    assert uids("studies", {"StudyInstanceUID": "\\"}, "0020000D") == []
    assert uids("series", {"SeriesInstanceUID": f"\\{series}"}, "0020000E") == [series]
    assert uids("series", {"SeriesInstanceUID": "\\"}, "0020000E") == []
    assert uids("instances", {"SOPInstanceUID": f"{instance},"}, "00080018") == [instance]
    assert uids("instances", {"SOPInstanceUID": "\\"}, "00080018") == []
    # The REST API's lists: the same engine.
    rest = url.removesuffix("/dicom-web")
    for level in ("studies", "series"):
        response = httpx.get(f"{rest}/{level}", params={"StudyInstanceUID": "\\"})
        assert response.status_code == 200 and response.json() == []


def test_qido_rs_and_rest_take_any_whole_number_as_limit_and_offset(served):
    """PS3.18 Table 8.3.4-1: limit and offset are uints; 10**20 is one (it was a 500). A limit
    past every match returns them all, an offset past them none."""
    _, _, url = served
    huge = str(10**20)
    everything = httpx.get(f"{url}/studies").json()
    assert httpx.get(f"{url}/studies", params={"limit": huge}).json() == everything
    assert httpx.get(f"{url}/studies", params={"offset": huge}).json() == []
    assert len(httpx.get(f"{url}/studies", params={"limit": huge, "offset": "1"}).json()) == (
        len(everything) - 1
    )
    rest = url.removesuffix("/dicom-web")
    for params in ({"limit": huge}, {"offset": huge}):
        assert httpx.get(f"{rest}/series", params=params).status_code == 200


def test_qido_rs_includefield_takes_private_tags_from_the_stored_header(served, tmp_path):
    """PS3.18 8.3.4.3: includefield = 1#attribute, attribute a tag (8 hex digits) or a keyword;
    a private tag has no keyword, and was refused as neither. Its Private Creator comes with
    it (PS3.5 7.8.1)."""
    server, corpus, url = served
    ds = pydicom.dcmread(corpus[0].path)
    ds.StudyInstanceUID = study = generate_uid()
    ds.AccessionNumber = "PRIVATE1"  # a study of its own for the module's other tests
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.private_block(0x0009, "DICOMVAULT TEST", create=True).add_new(0x01, "LO", "private value")
    path = tmp_path / "private.dcm"
    ds.save_as(path, enforce_file_format=True)
    storescu(server, [path], corpus[0].transfer_syntax)
    for level in ("studies", "series", "instances"):
        [found] = httpx.get(
            f"{url}/{level}", params={"StudyInstanceUID": study, "includefield": "00091001"}
        ).json()
        assert found["00091001"] == {"vr": "LO", "Value": ["private value"]}, level
        assert found["00090010"] == {"vr": "LO", "Value": ["DICOMVAULT TEST"]}


def test_qido_rs_fuzzymatching_searches_literally_with_a_warning(served):
    _, _, url = served
    response = httpx.get(
        f"{url}/studies", params={"fuzzymatching": "true", "PatientName": "Smith*"}
    )
    assert response.status_code == 200 and response.json()
    assert response.headers["Warning"].startswith("299 ")  # PS3.18 8.3.4.2


def test_qido_rs_results_have_what_each_level_requires(served):
    _, corpus, url = served
    [study] = httpx.get(f"{url}/studies", params={"AccessionNumber": "ACC1001"}).json()
    uid = study["0020000D"]["Value"][0]
    assert study[RETRIEVE_URL]["Value"] == [f"{url}/studies/{uid}"]
    assert "00080052" not in study  # QueryRetrieveLevel is C-FIND's, not QIDO-RS's
    assert {"00080020", "00080050", "00080061", "00100010", "00201206"} <= set(study)
    # /series without a study: the study's attributes too (PS3.18 Table 10.6.3-4).
    series = httpx.get(f"{url}/series", params={"StudyInstanceUID": uid}).json()
    assert all(
        {"00100010", "00080020", "00080060", "00201209", RETRIEVE_URL} <= set(s) for s in series
    )
    # Instances: Rows, Columns, Bits Allocated, Number of Frames (Table 10.6.3-5).
    multiframe = pick(corpus, EXPLICIT_LE, frames=50)
    [instance] = httpx.get(
        f"{url}/studies/{multiframe.study_instance_uid}/instances",
        params={"SOPInstanceUID": multiframe.sop_instance_uid},
    ).json()
    assert instance["00280010"]["Value"] == [32] and instance["00280100"]["Value"] == [16]
    assert instance["00280008"]["Value"] == ["50"] or instance["00280008"]["Value"] == [50]
    assert instance[RETRIEVE_URL]["Value"][0].endswith(f"/instances/{multiframe.sop_instance_uid}")


def test_qido_rs_matches_and_returns_attributes_the_index_does_not_keep(served):
    _, corpus, url = served
    ct = {g.sop_instance_uid for g in corpus if g.modality == "CT" and g.number_of_frames == 1}
    matched = httpx.get(
        f"{url}/instances", params={"KVP": "120.0", "includefield": "Manufacturer,PatientPosition"}
    ).json()
    corpus_uids = {g.sop_instance_uid for g in corpus}  # not what other tests stored
    assert {i["00080018"]["Value"][0] for i in matched} & corpus_uids == ct
    assert all(i["00080070"]["Value"] == ["dicomvault"] for i in matched)
    assert all(i["00185100"]["Value"] == ["HFS"] for i in matched)
    everything = httpx.get(f"{url}/studies", params={"includefield": "all", "limit": "1"}).json()
    assert {"00081030", "00080080"} <= set(everything[0])  # StudyDescription, InstitutionName
    [one] = httpx.get(
        f"{url}/instances",
        params={"SOPInstanceUID": corpus[0].sop_instance_uid, "includefield": "all"},
    ).json()
    assert one["00080008"]["Value"] == ["ORIGINAL", "PRIMARY", "AXIAL"]  # from the header


@pytest.mark.parametrize("level", ["studies", "series", "instances"])
def test_qido_rs_levels_answer_json_arrays(served, level):
    _, _, url = served
    response = httpx.get(f"{url}/{level}", params={"limit": "2"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+json")
    assert len(response.json()) == 2
