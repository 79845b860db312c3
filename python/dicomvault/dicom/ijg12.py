"""12-bit JPEG (Extended, Process 4) decoded by GDCM, whose 12-bit decoder is IJG libjpeg's, as
DCMTK's ``dcmdjpeg`` is: the same pixels to the bit.

pydicom's own choices do not give them: pylibjpeg's decoder differs from IJG's by one here and
there (both within the IDCT accuracy ISO 10918-2 allows), pydicom's GDCM plugin refuses 12-bit
JPEG, and Pillow has no 12-bit decoder. GDCM runs in a child process (``gdcm_child``, the Part
10 file on stdin, the pixels on stdout): its codecs throw C++ exceptions its binding does not
catch, which abort the process, and a damaged code stream must not take the archive down. For
the same reason pydicom may not use GDCM in this process (it aborted on valid streams: RLE of a
3x3 RGB image, JPEG Lossless of 8-bit signed samples with Bits Stored below 8).
"""

from __future__ import annotations

import subprocess
import sys

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.pixels import get_decoder, get_encoder
from pydicom.uid import AllTransferSyntaxes, JPEGExtended12Bit

TIMEOUT_S = 300


class Undecodable(ValueError):
    """GDCM could not decode the code stream (the message says why)."""


def keep_gdcm_out_of_pydicom() -> None:
    """Removes GDCM from pydicom's decoders and encoders in this process (see above)."""
    for uid in AllTransferSyntaxes:
        for lookup in (get_decoder, get_encoder):
            try:
                coder = lookup(uid)
            except NotImplementedError:  # pydicom's way to say it has none for the syntax
                continue
            if "gdcm" in coder.available_plugins:
                coder.remove_plugin("gdcm")


def decode(dataset: bytes, size: int) -> bytes:
    """The pixels of a JPEG Extended data set (no File Meta) with 12-bit single-sample frames,
    as little endian 16-bit samples, ``size`` bytes of them (Undecodable if GDCM gives other)."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = JPEGExtended12Bit
    part10 = DicomBytesIO()
    part10.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(part10, meta, enforce_standard=False)
    part10.write(dataset)
    try:
        child = subprocess.run(
            [sys.executable, "-m", "dicomvault.dicom.gdcm_child"],
            input=part10.getvalue(),
            capture_output=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as e:
        raise Undecodable(f"GDCM took more than {TIMEOUT_S} s") from e
    if child.returncode != 0:
        why = child.stderr.decode(errors="replace").strip().splitlines()
        raise Undecodable(f"GDCM failed ({child.returncode}): {why[-1] if why else 'no message'}")
    if len(child.stdout) != size:
        raise Undecodable(f"GDCM gave {len(child.stdout)} bytes of pixels, not {size}")
    return child.stdout
