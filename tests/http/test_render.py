"""Rendered and thumbnail resources and WADO-URI against `dicomvault serve`, on pydicom's test
files (and variants of them made here) stored over STOW-RS: grayscale output within one level of
DCMTK's dcmj2pnm for the same VOI, color equal to pydicom's pixel data, a frame rendered from
that frame, the right 4xx where a request cannot be honoured."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

from dicomvault.bench.peers import free_port
from dicomvault.dicom import ijg12
from tests.http.test_dicomweb import stow
from tests.net.conftest import Server, dcmtk

# The reference pixels decoded as the archive decodes them: pydicom without its GDCM plugin
# (dicom/ijg12.py), which decodes some JPEG one level off; else the comparison depends on
# whether a test before, in the same process, imported the archive's renderer.
ijg12.keep_gdcm_out_of_pydicom()

PYDICOM = Path(pydicom.__file__).parent / "data"
PRIVATE_SYNTAX = "1.2.826.0.1.3680043.8.498.77.1"


@dataclass
class Stored:
    """A test file as stored: where it is and what its WADO-RS instance URL is."""

    path: Path
    url: str

    @property
    def dataset(self) -> Dataset:
        return pydicom.dcmread(self.path)


def _variant(source: str, out: Path, change: object = None, **attributes: object) -> Path:
    """A copy of a pydicom test file under a new SOP Instance UID, changed as asked."""
    ds = pydicom.dcmread(PYDICOM / source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    if callable(change):
        change(ds)
    path = out / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _voi_lut(ds: Dataset) -> None:
    del ds.WindowCenter, ds.WindowWidth
    item = Dataset()
    item.LUTDescriptor = [2048, 100, 16]
    item.LUTData = (65535 * np.linspace(0, 1, 2048) ** 0.5).astype(int).tolist()
    item["LUTData"].VR = "US"
    ds.VOILUTSequence = [item]


def _modality_lut(ds: Dataset) -> None:
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.ModalityLUTType = "US"
    item.LUTData = (np.arange(4096) * 3 // 2).tolist()
    item["LUTData"].VR = "US"
    ds.ModalityLUTSequence = [item]
    ds.WindowCenter, ds.WindowWidth = 900, 2400


def _private_syntax(ds: Dataset) -> None:
    ds.file_meta.TransferSyntaxUID = PRIVATE_SYNTAX


def _files(out: Path) -> dict[str, Path]:
    mono1 = next((PYDICOM / "test_files" / "dicomdirtests").rglob("6154"))
    files = {
        name: PYDICOM / "test_files" / f
        for name, f in {
            "mr": "MR_small.dcm",
            "ct": "CT_small.dcm",
            "rgb": "SC_rgb_rle_2frame.dcm",
            "ybr": "examples_ybr_color.dcm",
            "palette": "examples_palette.dcm",
            "dose": "rtdose.dcm",
            "deflated": "image_dfl.dcm",
            "sr": "test-SR.dcm",
            "plan": "rtplan.dcm",
            "ecg": "waveform_ecg.dcm",
        }.items()
    }
    files["mono1"] = mono1
    files |= {
        "mr_j2k": _variant("test_files/MR_small_jp2klossless.dcm", out),
        "mr_jls": _variant("test_files/MR_small_jpeg_ls_lossless.dcm", out),
        "mr_private": _variant("test_files/MR_small.dcm", out, _private_syntax),
        "mr_implicit": _variant("test_files/MR_small_implicit.dcm", out),
        "mr_big_endian": _variant("test_files/MR_small_bigendian.dcm", out),
        "mr_sigmoid": _variant("test_files/MR_small.dcm", out, VOILUTFunction="SIGMOID"),
        "mr_voi_lut": _variant("test_files/MR_small.dcm", out, _voi_lut),
        "mr_modality_lut": _variant("test_files/MR_small.dcm", out, _modality_lut),
    }
    # A study of two series: series 2 holds five CT images, stored out of order, each
    # windowed differently so that their renderings differ; series 1 one MR image.
    study = generate_uid()
    series = generate_uid()
    for number in (4, 1, 5, 3, 2):
        files[f"ct{number}"] = _variant(
            "test_files/CT_small.dcm",
            out,
            StudyInstanceUID=study,
            SeriesInstanceUID=series,
            SeriesNumber=2,
            InstanceNumber=number,
            WindowCenter=number * 40,
            WindowWidth=400,
        )
    files["first_series"] = _variant(
        "test_files/MR_small.dcm",
        out,
        StudyInstanceUID=study,
        SeriesInstanceUID=generate_uid(),
        SeriesNumber=1,
    )
    return files


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("render")
    http_port = free_port()
    server = Server(
        tmp, {}, sections={"http": {"enabled": True, "host": "127.0.0.1", "port": http_port}}
    ).start()
    variants = tmp / "variants"
    variants.mkdir()
    paths = _files(variants)
    url = f"http://127.0.0.1:{http_port}/dicom-web"
    stow(url, list(paths.values()))
    stored = {}
    for name, path in paths.items():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        stored[name] = Stored(
            path,
            f"{url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}",
        )
    yield server, url, stored
    assert server.stop() == 0


def image(response: httpx.Response, media_type: str = "image/png") -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media_type
    return np.asarray(Image.open(io.BytesIO(response.content)))


def png(url: str, **params: str) -> np.ndarray:
    return image(httpx.get(url, params=params, headers={"Accept": "image/png"}, timeout=60))


def dcmj2pnm(path: Path, tmp_path: Path, *options: object, frame: int = 1) -> np.ndarray:
    out = tmp_path / "dcmj2pnm.png"
    dcmtk("dcmj2pnm", "+on", "+F", frame, *options, path, out)
    return np.asarray(Image.open(out))


def assert_within_one_level(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.shape == reference.shape
    difference = np.abs(ours.astype(int) - reference.astype(int))
    assert difference.mean() <= 1 and difference.max() <= 2, (difference.mean(), difference.max())


@pytest.mark.parametrize(
    ("name", "voi"),
    [
        ("mr", ["+Wi", 1]),  # MONOCHROME2, Window Center/Width
        ("ct", ["+Wm"]),  # Rescale Slope/Intercept, no window: the frame's range
        ("mono1", ["+Wi", 1]),  # MONOCHROME1, rescaled
        ("mr_sigmoid", ["+Wi", 1]),
        ("mr_voi_lut", ["+Wl", 1]),
        ("mr_modality_lut", ["+Wi", 1]),
        ("deflated", ["+Wm"]),  # frames not in blobs of their own: read whole
    ],
)
def test_grayscale_rendering_matches_dcmtk(served, tmp_path, name, voi):
    _, _, stored = served
    ours = png(f"{stored[name].url}/rendered")
    assert ours.std() > 0
    assert_within_one_level(ours, dcmj2pnm(stored[name].path, tmp_path, *voi))


def test_window_parameter(served, tmp_path):
    _, _, stored = served
    mr = stored["mr"]
    windowed = png(f"{mr.url}/rendered", window="100,400,linear")
    assert_within_one_level(windowed, dcmj2pnm(mr.path, tmp_path, "+Ww", 100, 400))
    assert not np.array_equal(windowed, png(f"{mr.url}/rendered"))
    ds = mr.dataset
    sigmoid = png(f"{mr.url}/rendered", window=f"{ds.WindowCenter},{ds.WindowWidth},sigmoid")
    assert np.array_equal(sigmoid, png(f"{stored['mr_sigmoid'].url}/rendered"))
    exact = png(f"{mr.url}/rendered", window="600,1600,linear-exact")
    assert_within_one_level(exact, png(f"{mr.url}/rendered", window="600,1600,linear"))
    for bad in ("abc", "100", "100,0,linear", "100,400,cubic", "nan,400,linear"):
        response = httpx.get(f"{mr.url}/rendered", params={"window": bad})
        assert response.status_code == 400, bad
        assert "window" in response.json()["error"]


def test_color_equals_pydicom_pixel_data(served, tmp_path):
    _, _, stored = served
    rgb = stored["rgb"].dataset.pixel_array
    frames = [png(f"{stored['rgb'].url}/frames/{n}/rendered") for n in (1, 2)]
    assert np.array_equal(frames[0], rgb[0]) and np.array_equal(frames[1], rgb[1])
    assert not np.array_equal(frames[0], frames[1])
    # YBR_FULL_422 JPEG: pydicom's pixel data, converted to RGB, frame by frame.
    ybr = stored["ybr"].dataset.pixel_array
    assert np.array_equal(png(f"{stored['ybr'].url}/frames/2/rendered"), ybr[1])
    palette = png(f"{stored['palette'].url}/rendered")
    assert palette.shape == (350, 800, 3)
    assert_within_one_level(palette, dcmj2pnm(stored["palette"].path, tmp_path))


def test_compressed_syntaxes_and_undecodable_ones(served):
    _, url, stored = served
    mr = png(f"{stored['mr'].url}/rendered")
    assert np.array_equal(png(f"{stored['mr_j2k'].url}/rendered"), mr)
    jpeg_ls = httpx.get(f"{stored['mr_jls'].url}/rendered", headers={"Accept": "image/png"})
    # pylibjpeg-libjpeg, a dependency, decodes JPEG-LS.
    assert np.array_equal(image(jpeg_ls), mr)
    private = httpx.get(f"{stored['mr_private'].url}/rendered")
    assert private.status_code == 415
    assert PRIVATE_SYNTAX in private.json()["error"]
    # No Pixel Data, no rendered image: none of the media types asked (PS3.18 8.7.4), a 406
    # (415 is about a request's own content).
    for name in ("sr", "plan", "ecg"):
        for no_pixels in (
            httpx.get(f"{stored[name].url}/rendered"),
            httpx.get(f"{stored[name].url}/thumbnail", headers={"Accept": "image/png"}),
            wado(url, stored[name], contentType="image/jpeg"),
        ):
            assert no_pixels.status_code == 406, name
            assert "no Pixel Data" in no_pixels.json()["error"]


def test_a_frame_is_rendered_from_that_frame(served, tmp_path):
    _, _, stored = served
    dose = stored["dose"]
    first, second = (png(f"{dose.url}/frames/{n}/rendered") for n in (1, 2))
    assert not np.array_equal(first, second)
    # Independently: frame 2's own range (no window in RT Dose) mapped onto 0..255.
    values = dose.dataset.pixel_array[1].astype(float)
    expected = np.rint((values - values.min()) * 255 / (values.max() - values.min()))
    assert np.array_equal(second, expected)
    assert_within_one_level(second, dcmj2pnm(dose.path, tmp_path, "+Wm", frame=2))
    assert httpx.get(f"{dose.url}/frames/16/rendered").status_code == 404
    assert httpx.get(f"{dose.url}/frames/1,2/rendered").status_code == 400
    assert httpx.get(f"{dose.url}/frames/0/rendered").status_code == 400
    assert httpx.get(f"{dose.url}/frames/x/rendered").status_code == 400


def test_media_types_viewport_and_quality(served):
    _, url, stored = served
    mr = stored["mr"]
    assert image(httpx.get(f"{mr.url}/rendered"), "image/jpeg").shape == (64, 64)
    assert image(httpx.get(f"{mr.url}/rendered", params={"accept": "image/gif"}), "image/gif").any()
    preferred = httpx.get(
        f"{mr.url}/rendered", headers={"Accept": "image/png;q=0.5, image/jpeg;q=0.9"}
    )
    assert preferred.headers["content-type"] == "image/jpeg"
    refused = httpx.get(f"{mr.url}/rendered", headers={"Accept": "application/xml"})
    assert refused.status_code == 406
    assert "image/jpeg" in refused.json()["error"]
    assert png(f"{mr.url}/rendered", viewport="32,16").shape == (16, 16)
    assert png(f"{mr.url}/rendered", viewport="128,256").shape == (128, 128)
    # A source region at its own size is a crop; a negative width flips it.
    whole = png(f"{mr.url}/rendered")
    assert np.array_equal(png(f"{mr.url}/rendered", viewport="32,16,8,0,32,16"), whole[:16, 8:40])
    flipped = png(f"{mr.url}/rendered", viewport="32,16,40,0,-32,16")
    assert np.array_equal(flipped, whole[:16, 8:40][:, ::-1])
    sizes = [
        len(httpx.get(f"{mr.url}/rendered", params={"quality": q}).content) for q in ("5", "95")
    ]
    assert sizes[0] < sizes[1]
    for params in ({"viewport": "0,10"}, {"viewport": "a,b"}, {"quality": "101"}):
        assert httpx.get(f"{mr.url}/rendered", params=params).status_code == 400, params
    client = DICOMwebClient(url)
    ds = mr.dataset
    rendered = client.retrieve_instance_rendered(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, media_types=("image/png",)
    )
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(rendered))), png(f"{mr.url}/rendered"))


def test_thumbnails(served):
    _, url, stored = served
    assert png(f"{stored['palette'].url}/thumbnail").shape == (56, 128, 3)
    assert png(f"{stored['mr'].url}/thumbnail").shape == (64, 64)  # never enlarged
    assert png(f"{stored['mr'].url}/thumbnail", viewport="32,32").shape == (32, 32)
    assert png(f"{stored['dose'].url}/frames/3/thumbnail").shape == (10, 10)
    ct3 = stored["ct3"].dataset
    series = f"{url}/studies/{ct3.StudyInstanceUID}/series/{ct3.SeriesInstanceUID}"
    # The series' middle instance by Instance Number; the study's first series by number.
    assert np.array_equal(png(f"{series}/thumbnail"), png(f"{stored['ct3'].url}/thumbnail"))
    assert not np.array_equal(png(f"{series}/thumbnail"), png(f"{stored['ct2'].url}/thumbnail"))
    study = f"{url}/studies/{ct3.StudyInstanceUID}/thumbnail"
    assert np.array_equal(png(study), png(f"{stored['first_series'].url}/thumbnail"))


def test_unknown_uids_are_not_found(served):
    _, url, stored = served
    mr = stored["mr"].dataset
    series = f"{url}/studies/{mr.StudyInstanceUID}/series/{mr.SeriesInstanceUID}"
    for path in (
        f"{series}/instances/1.2.3.4/rendered",
        f"{series}/instances/1.2.3.4/frames/1/rendered",
        f"{series}/instances/1.2.3.4/thumbnail",
        f"{url}/studies/1.2.3.4/series/{mr.SeriesInstanceUID}/thumbnail",
        f"{url}/studies/1.2.3.4/thumbnail",
    ):
        assert httpx.get(path).status_code == 404, path


def wado(url: str, stored: Stored, **params: str) -> httpx.Response:
    ds = pydicom.dcmread(stored.path, stop_before_pixels=True)
    uids = {
        "requestType": "WADO",
        "studyUID": ds.StudyInstanceUID,
        "seriesUID": ds.SeriesInstanceUID,
        "objectUID": ds.SOPInstanceUID,
    }
    return httpx.get(url.removesuffix("/dicom-web") + "/wado", params=uids | params, timeout=60)


def test_wado_uri(served, tmp_path):
    server, url, stored = served
    out = tmp_path / "export"
    server.run("export", "--out", out)
    exported = {pydicom.dcmread(p).SOPInstanceUID: p.read_bytes() for p in out.rglob("*.dcm")}
    # As stored, byte for byte, when its own syntax is asked.
    for name in ("mr", "ybr", "deflated", "rgb"):
        syntax = stored[name].dataset.file_meta.TransferSyntaxUID
        response = wado(url, stored[name], contentType="application/dicom", transferSyntax=syntax)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/dicom"
        assert response.content == exported[stored[name].dataset.SOPInstanceUID]
    # Without transferSyntax: Explicit VR Little Endian (PS3.18 9.4.2.4), the same pixels.
    for name in ("rgb", "mr_implicit", "mr_big_endian", "plan"):
        response = wado(url, stored[name], contentType="application/dicom")
        assert response.status_code == 200
        made, reference = pydicom.dcmread(io.BytesIO(response.content)), stored[name].dataset
        assert made.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian, name
        assert made.SOPInstanceUID == reference.SOPInstanceUID
        if "PixelData" in reference:
            assert np.array_equal(made.pixel_array, reference.pixel_array), name
    # Transcoded to a native syntax: the JPEG decoded as DCMTK's dcmdjpeg (IJG libjpeg) does,
    # which libjpeg-turbo (pydicom's Pillow plugin) matches to the bit.
    implicit = wado(
        url, stored["ybr"], contentType="application/dicom", transferSyntax=ImplicitVRLittleEndian
    )
    ds = pydicom.dcmread(io.BytesIO(implicit.content))
    assert ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    reference = pydicom.dcmread(stored["ybr"].path)
    reference.pixel_array_options(decoding_plugin="pillow")
    assert np.array_equal(ds.pixel_array, reference.pixel_array)
    # JPEG 2000 made losslessly from native pixels; JPEG baseline would be lossy: 406.
    j2k = wado(url, stored["mr"], contentType="application/dicom", transferSyntax=JPEG2000)
    assert j2k.status_code == 200
    made = pydicom.dcmread(io.BytesIO(j2k.content))
    assert np.array_equal(made.pixel_array, stored["mr"].dataset.pixel_array)
    lossy = wado(
        url, stored["mr"], contentType="application/dicom", transferSyntax=JPEGBaseline8Bit
    )
    assert lossy.status_code == 406
    # Rendered: the same images as WADO-RS renders.
    mr = stored["mr"]
    assert image(wado(url, mr), "image/jpeg").shape == (64, 64)
    windowed = wado(url, mr, contentType="image/png", windowCenter="100", windowWidth="400")
    assert np.array_equal(image(windowed), png(f"{mr.url}/rendered", window="100,400,linear"))
    assert image(wado(url, mr, contentType="image/png", rows="32")).shape == (32, 32)
    region = wado(url, mr, contentType="image/png", region="0,0,0.5,0.25")
    assert np.array_equal(image(region), png(f"{mr.url}/rendered")[:16, :32])
    dose = stored["dose"]
    second = wado(url, dose, contentType="image/png", frameNumber="2")
    assert np.array_equal(image(second), png(f"{dose.url}/frames/2/rendered"))
    # Bad requests.
    assert wado(url, mr, requestType="WADO-RS").status_code == 400
    assert wado(url, mr, objectUID="").status_code == 400
    assert wado(url, mr, windowCenter="100").status_code == 400
    assert wado(url, mr, contentType="application/dicom", rows="10").status_code == 400
    assert wado(url, mr, contentType="image/png", region="0.5,0,0.2,1").status_code == 400
    assert wado(url, mr, frameNumber="two").status_code == 400
    assert wado(url, mr, contentType="text/html").status_code == 406
    assert wado(url, mr, objectUID="1.2.3.4").status_code == 404
    assert wado(url, stored["mr_private"], contentType="image/png").status_code == 415


def test_wado_uri_refuses_what_it_cannot_honour(served):
    _, url, stored = served
    plan, mr = stored["plan"], stored["mr"]
    # transferSyntax is a Transfer Syntax UID (PS3.18 9.4.2.4: else a 400; one that cannot
    # be made is a 406): not any UID, even for an instance without Pixel Data.
    for not_a_syntax in ("1.2.3.4", plan.dataset.SOPClassUID):
        asked = {"contentType": "application/dicom", "transferSyntax": not_a_syntax}
        response = wado(url, plan, **asked)
        assert response.status_code == 400, not_a_syntax
        assert "Transfer Syntax UID" in response.json()["error"]
    # anonymize=yes: the archive cannot de-identify, so it refuses rather than send the
    # patient's data (9.4.2.3 lets it answer an error); a value other than yes is a 400.
    for content_type in ("application/dicom", "image/png"):
        refused = wado(url, mr, contentType=content_type, anonymize="yes")
        assert refused.status_code == 501, content_type
        assert "de-identify" in refused.json()["error"]
    assert wado(url, mr, contentType="application/dicom", anonymize="no").status_code == 400


def test_malformed_requests_get_a_4xx_and_the_server_stays_up(served):
    server, url, stored = served
    mr, dose = stored["mr"], stored["dose"]
    requests = [
        (f"{mr.url}/rendered", {"viewport": "10,10,0,0,99999999,5"}, {}),
        (f"{mr.url}/rendered", {"viewport": "10,10,0,0,0,5"}, {}),
        (f"{mr.url}/rendered", {"window": "1e400,1,linear"}, {}),
        (f"{mr.url}/rendered", {"window": ",,"}, {}),
        (f"{mr.url}/rendered", {"quality": "-1"}, {}),
        (f"{mr.url}/rendered", {}, {"Accept": ";;;,q=,image/png;q=abc"}),
        (f"{mr.url}/rendered", {"accept": "multipart/related; type=image/png"}, {}),
        (f"{dose.url}/frames/99999999999/rendered", {}, {}),
        (f"{dose.url}/frames/999999999/rendered", {}, {}),
        (f"{mr.url}/bulkdata/7FE00010/0/00280010", {}, {}),
        (f"{mr.url}/bulkdata/", {}, {}),
        (f"{mr.url}/bulkdata/zzzzzzzz", {}, {}),
    ]
    for target, params, headers in requests:
        response = httpx.get(target, params=params, headers=headers)
        assert 400 <= response.status_code < 500, (target, params, headers, response.text)
        assert response.json()["error"]
    for params in (
        {"region": "a"},
        {"region": "0,0,1,1,1"},
        {"imageQuality": "0"},
        {"rows": "99999"},
        {"columns": "-3"},
        {"windowCenter": "x", "windowWidth": "1"},
        {"transferSyntax": "1.2.3", "contentType": "application/dicom"},
    ):
        response = wado(url, mr, **params)
        assert 400 <= response.status_code < 500, (params, response.text)
    assert server.alive
