"""12-bit JPEG is decoded as DCMTK's dcmdjpeg decodes it, to the bit, and a code stream GDCM
cannot decode is refused without taking the archive's process down (``dicom/ijg12.py``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGExtended12Bit

from dicomvault.dicom.transcode import CannotTranscode, transcode
from tests.net.test_dcmtk_peers import dataset_bytes


@pytest.mark.parametrize("name", ["JPGExtended.dcm", "JPEG-lossy.dcm"])
def test_12bit_jpeg_gives_dcmdjpegs_pixels(tmp_path: Path, name: str) -> None:
    stored = Path(get_testdata_file(name))
    reference = tmp_path / "dcmdjpeg.dcm"
    subprocess.run(["dcmdjpeg", "+te", stored, reference], check=True, capture_output=True)
    native = transcode(dataset_bytes(stored), JPEGExtended12Bit, ExplicitVRLittleEndian)
    received = tmp_path / "ours.dcm"
    ds = pydicom.dcmread(stored)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    received.write_bytes(b"\0" * 128 + b"DICM")  # a Part 10 preamble for pydicom to read
    with received.open("ab") as f:
        pydicom.filewriter.write_file_meta_info(f, ds.file_meta)
        f.write(native)
    ours = pydicom.dcmread(received)
    assert ours.PixelData == pydicom.dcmread(reference).PixelData
    assert ours.LossyImageCompression == "01"  # PS3.3 C.7.6.1.1.5: once lossy, always


def test_a_code_stream_gdcm_cannot_decode_is_refused(tmp_path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("JPGExtended.dcm"))
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc1\x00\x0bnot a frame"])
    damaged = tmp_path / "damaged.dcm"
    ds.save_as(damaged)
    with pytest.raises(CannotTranscode, match="cannot decode"):
        transcode(dataset_bytes(damaged), JPEGExtended12Bit, ExplicitVRLittleEndian)
