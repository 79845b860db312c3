"""12-bit JPEG (Extended, Process 4) decoded by GDCM, whose 12-bit decoder is IJG libjpeg's, as
DCMTK's ``dcmdjpeg`` is: the same pixels to the bit.

pydicom's own choices do not give them: pylibjpeg's decoder differs from IJG's by one here and
there (both within the IDCT accuracy ISO 10918-2 allows), pydicom's GDCM plugin refuses 12-bit
JPEG, and Pillow has no 12-bit decoder. GDCM runs in a child process (``gdcm_child``: a Part 10
file this process writes and removes, the pixels on stdout): its codecs throw C++ exceptions
its binding does not catch, which abort the process, and a damaged code stream must not take
the archive down. For the same reason pydicom may not use GDCM in this process (it aborted on
valid streams: RLE of a 3x3 RGB image, JPEG Lossless of 8-bit signed samples with Bits Stored
below 8).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.pixels import get_decoder, get_encoder
from pydicom.uid import AllTransferSyntaxes, JPEGExtended12Bit

TIMEOUT_S = 120
# At most this many GDCM children at once (each holds the data set and its pixels).
_CHILDREN = threading.BoundedSemaphore(os.cpu_count() or 2)


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
    # The file is this process's to remove, whatever becomes of the child (an abort, a kill on
    # timeout): patient data is never left behind. The child runs in that directory, so that
    # nothing in the server's working directory is imported.
    with _CHILDREN, tempfile.TemporaryDirectory(prefix="dicomvault-ijg12-") as work:
        path = Path(work, "instance.dcm")
        path.write_bytes(part10.getvalue())
        try:
            child = subprocess.run(
                [sys.executable, "-m", "dicomvault.dicom.gdcm_child", str(path)],
                cwd=work,
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
