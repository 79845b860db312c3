"""The transcoder's JPEG Lossless (process 14, selection value 1, rust/src/jpeg_lossless.rs):
native instances of each kind made JPEG Lossless SV1 (.70) and JPEG Lossless (.57) are what
dcmdump says, and give back exactly their pixels to DCMTK's dcmdjpeg and to pydicom."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian

from dicomvault import _native
from dicomvault.dicom.transcode import CannotTranscode, producible, transcode
from tests.net.conftest import dcmtk
from tests.net.test_dcmtk_peers import dataset_bytes

TARGETS = ("1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.57")
# pydicom's native test files of each kind the encoder takes.
PYDICOM_FILES = {
    "CT_small.dcm": "16-bit signed",
    "MR_small.dcm": "16-bit signed",
    "examples_overlay.dcm": "16-bit unsigned, 12 stored",
    "SC_rgb_small_odd.dcm": "8-bit RGB, odd rows and columns",
    "examples_rgb_color.dcm": "8-bit RGB",
    "ExplVR_BigEnd.dcm": "8-bit RGB, planar configuration 1, big endian",
    "examples_palette.dcm": "8-bit palette color",
    "MR_small_bigendian.dcm": "16-bit signed, big endian",
}
RNG = numpy.random.default_rng(20240611)


def synthetic(path: Path, pixels: numpy.ndarray, bits_stored: int) -> Path:
    """CT_small.dcm with other pixels: ``pixels`` (frames, rows, columns[, samples])."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    color = pixels.ndim == 4
    ds.NumberOfFrames, ds.Rows, ds.Columns = pixels.shape[:3]
    ds.SamplesPerPixel = 3 if color else 1
    ds.PhotometricInterpretation = "RGB" if color else "MONOCHROME2"
    if color:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8 * pixels.itemsize, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OW" if pixels.itemsize == 2 else "OB"
    ds.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return path


def extremes() -> numpy.ndarray:
    """16-bit samples whose differences reach +-32768 (category 16), and noise."""
    pixels = RNG.integers(0, 65536, (1, 6, 8), dtype=numpy.uint16)
    pixels[0, 0] = [32768, 0, 65535, 0, 32768, 65535, 32767, 1]
    pixels[0, 1:, 0] = [0, 32768, 65535, 0, 32768]
    return pixels


SYNTHETIC = {
    "8-bit mono, 3 frames": lambda p: synthetic(
        p, RNG.integers(0, 256, (3, 10, 13), dtype=numpy.uint8), 8
    ),
    "8-bit signed, 5 stored": lambda p: synthetic(
        p, RNG.integers(-16, 16, (1, 9, 7)).astype(numpy.int8), 5
    ),
    "16-bit signed, 12 stored": lambda p: synthetic(
        p, RNG.integers(-2048, 2048, (1, 33, 17)).astype(numpy.int16), 12
    ),
    "16-bit unsigned, every category": lambda p: synthetic(p, extremes(), 16),
    "16-bit RGB, 2 frames": lambda p: synthetic(
        p, RNG.integers(0, 65536, (2, 5, 7, 3), dtype=numpy.uint16), 16
    ),
}


@pytest.fixture(params=[*PYDICOM_FILES, *SYNTHETIC])
def instance(request, tmp_path) -> Path:
    if request.param in SYNTHETIC:
        return SYNTHETIC[request.param](tmp_path / "synthetic.dcm")
    return Path(get_testdata_file(request.param))


def transcoded(path: Path, target: str, out: Path) -> Path:
    """The instance transcoded to ``target``, as a Part 10 file."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    dataset = transcode(dataset_bytes(path), str(ds.file_meta.TransferSyntaxUID), target)
    meta = _native.file_meta(ds.SOPClassUID, ds.SOPInstanceUID, target, "TEST", "1.2.3", "TEST")
    out.write_bytes(meta + dataset)
    return out


def native_pixels(path: Path, work: Path) -> pydicom.Dataset:
    """The instance in Explicit VR Little Endian, as DCMTK's dcmconv writes it."""
    out = work / "native.dcm"
    dcmtk("dcmconv", "+te", path, out)
    return pydicom.dcmread(out)


@pytest.mark.parametrize("target", TARGETS)
def test_dcmdjpeg_and_pydicom_decode_the_stored_pixels(instance, target, tmp_path):
    received = transcoded(instance, target, tmp_path / "jpeg.dcm")
    dump = dcmtk("dcmdump", "-Un", "+P", "TransferSyntaxUID", received).stdout
    assert f"[{target}]" in dump
    original = native_pixels(instance, tmp_path)
    frames = int(original.get("NumberOfFrames") or 1)
    encapsulated = pydicom.dcmread(received)
    # A code stream per frame, each a lossless SOF3 with predictor 1 (Ss in the SOS).
    streams = list(generate_frames(encapsulated.PixelData, number_of_frames=frames))
    assert len(streams) == frames
    for stream in streams:
        # SOI SOF3 ... EOI, and the item's padding to an even length.
        assert stream[:4] == b"\xff\xd8\xff\xc3" and stream.rstrip(b"\0")[-2:] == b"\xff\xd9"
        sos = stream.index(b"\xff\xda")
        assert stream[sos + 5 + 2 * stream[sos + 4]] == 1
    # Lossless: what the instance said of lossy compression stays as it was.
    assert encapsulated.get("LossyImageCompression") == original.get("LossyImageCompression")

    decoded = tmp_path / "dcmdjpeg.dcm"
    dcmtk("dcmdjpeg", received, decoded)
    by_dcmtk = pydicom.dcmread(decoded)
    assert by_dcmtk.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    if int(original.get("PlanarConfiguration", 0)) == 0:
        assert by_dcmtk.PixelData == original.PixelData
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert numpy.array_equal(by_dcmtk.pixel_array, original.pixel_array)
        # pydicom's decoder (GDCM, its other one, aborts the process on some valid streams
        # and is kept out of pydicom here: dicom/ijg12.py).
        encapsulated.pixel_array_options(decoding_plugin="pylibjpeg")
        assert numpy.array_equal(encapsulated.pixel_array, original.pixel_array)
    assert encapsulated.PhotometricInterpretation == original.PhotometricInterpretation


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("rtdose.dcm", "not 32"),
        ("liver_1frame.dcm", "not 1"),
        ("SC_ybr_full_422_uncompressed.dcm", "YBR_FULL_422"),
    ],
)
def test_what_jpeg_lossless_cannot_hold_is_refused_with_the_reason(name, why, target):
    path = Path(get_testdata_file(name))
    stored = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    assert producible(stored, target, True)
    with pytest.raises(CannotTranscode, match=why):
        transcode(dataset_bytes(path), stored, target)


def test_the_encoder_refuses_a_frame_of_the_wrong_size():
    with pytest.raises(ValueError, match="the frame is 8 bytes of samples, 7 were given"):
        _native.encode_jpeg_lossless(bytes(7), 2, 2, 1, 16, 16, 0)
