"""The one transcoder every retrieve path uses (C-GET, C-MOVE, WADO-RS, its frames, WADO-URI):
an archived instance in a transfer syntax a peer can take, never with other pixels.

* native to native: ``recode``, element by element, the pixel bytes only byte-swapped;
* compressed to native: decoded by pydicom's pixel handlers (12-bit JPEG by GDCM: ``ijg12``),
  as DCMTK decodes them, the Lossy Image Compression attributes set when the stored encoding
  was lossy (PS3.3 C.7.6.1.1.5: once lossy, always);
* to a compressed syntax: lossless only (RLE, JPEG-LS, JPEG 2000 with the reversible
  wavelet, which the lossy-capable JPEG-LS and JPEG 2000 syntaxes also allow, and JPEG
  Lossless with selection value 1, which the process 14 syntax also allows, by our own encoder
  as pydicom has none); an encoder that could only be lossy (JPEG baseline and extended) is
  never used, so those syntaxes are produced only for instances stored in them;
* a data set without Pixel Data is encoded in an encapsulated syntax as in Explicit VR Little
  Endian (PS3.5 A.4), so any syntax carries it.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections.abc import Sequence
from typing import Any

import numpy
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from dicomvault import _native
from dicomvault.dicom import ijg12
from dicomvault.dicom.recode import NATIVE, PIXEL_DATA, RecodeError, Replacement, recode

# Syntaxes produced by a lossless encoder: (the syntax encoded, the encoder's options). The
# lossy-capable JPEG 2000 and JPEG-LS syntaxes carry a lossless code stream as well, the
# process 14 JPEG Lossless one a selection value 1 stream. The options are keyword arguments
# pydicom's ``compress`` passes on; JPEG Lossless is ours (``_JPEG_LOSSLESS``).
LOSSLESS_ENCODINGS: dict[str, tuple[UID, dict[str, Any]]] = {
    RLELossless: (RLELossless, {}),
    JPEG2000Lossless: (JPEG2000Lossless, {"use_mct": False}),
    JPEG2000: (JPEG2000Lossless, {"use_mct": False}),
    JPEGLSLossless: (JPEGLSLossless, {}),
    JPEGLSNearLossless: (JPEGLSLossless, {}),
    JPEGLosslessSV1: (JPEGLosslessSV1, {}),
    JPEGLossless: (JPEGLosslessSV1, {}),
}
# What rust/src/jpeg_lossless.rs encodes: JPEG Lossless, selection value 1.
_JPEG_LOSSLESS = JPEGLosslessSV1
# What pydicom's decoders and encoders may change besides Pixel Data, with their tags and VRs.
_PIXEL_MODULE = {
    "PhotometricInterpretation": (0x00280004, "CS"),
    "PlanarConfiguration": (0x00280006, "US"),
    "NumberOfFrames": (0x00280008, "IS"),
    "LossyImageCompression": (0x00282110, "CS"),
    "LossyImageCompressionRatio": (0x00282112, "DS"),
    "LossyImageCompressionMethod": (0x00282114, "CS"),
}
# Pillow decodes JPEG baseline with libjpeg-turbo, whose output is DCMTK's (IJG libjpeg) to
# the bit; pydicom's first choice, pylibjpeg-libjpeg, differs from it by one here and there.
# (GDCM, pydicom's first choice for JPEG Lossless, is kept out of pydicom: ``ijg12``.)
_DECODER: dict[str, str] = {JPEGBaseline8Bit: "pillow"}
# Syntaxes whose code streams are always lossy; those that may be either are inspected.
_LOSSY = frozenset(
    {f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 52, 53, 54, 55, 56, 59, 60, 61, 62, 63, 64)}
    | {f"1.2.840.10008.1.2.4.{n}" for n in range(100, 109)}
    | {"1.2.840.10008.1.2.4.100.1", "1.2.840.10008.1.2.4.101.1"}
    | {f"1.2.840.10008.1.2.4.{n}.1" for n in range(102, 107)}
)
_MAYBE_LOSSY = frozenset(
    {JPEG2000, JPEGLSNearLossless, "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.203"}
)
# Lossy Image Compression Method (PS3.3 C.7.6.1.1.5.1) by the family of the stored syntax.
_METHOD = (
    ("1.2.840.10008.1.2.4.8", "ISO_14495_1"),
    ("1.2.840.10008.1.2.4.9", "ISO_15444_1"),
    ("1.2.840.10008.1.2.4.20", "ISO_15444_15"),
    ("1.2.840.10008.1.2.4.10", "ISO_13818_2"),
    ("1.2.840.10008.1.2.4.", "ISO_10918_1"),
)

ijg12.keep_gdcm_out_of_pydicom()


class CannotTranscode(ValueError):
    """The instance cannot be given in any syntax asked for (the message says why)."""


def producible(stored: str, target: str, has_pixels: bool) -> bool:
    """Whether an instance stored in ``stored`` can be given in ``target`` without changing
    a pixel (decoding may still fail: ``transcode`` says so). One stored in a syntax pydicom
    does not know (a vendor's private one) only as stored: not even its data set's encoding
    is known."""
    if target == stored:
        return True
    if not UID(stored).is_transfer_syntax:
        return False
    if target in NATIVE or not has_pixels:
        return True
    return target in LOSSLESS_ENCODINGS


def _read(dataset: bytes, syntax: str, *, defer_size: int | None = None) -> Dataset:
    """A data set (no File Meta) in ``syntax`` (not deflated) read by pydicom."""
    meta = FileMetaDataset()
    uid = UID(syntax)
    meta.TransferSyntaxUID = uid
    ds = read_dataset(
        io.BytesIO(dataset),
        is_implicit_VR=uid.is_implicit_VR,
        is_little_endian=uid.is_little_endian,
        defer_size=defer_size,
    )
    ds.file_meta = meta
    return ds


def has_pixel_data(dataset: bytes, syntax: str) -> bool:
    """Whether the data set holds Pixel Data (its values over 1 KiB are not read)."""
    try:
        if syntax == DeflatedExplicitVRLittleEndian:
            dataset, syntax = zlib.decompress(dataset, -zlib.MAX_WBITS), ExplicitVRLittleEndian
        return "PixelData" in _read(dataset, syntax, defer_size=1024)
    except Exception:  # zlib's and pydicom's errors have many types; transcoding says why
        return True


def _pixel_module(ds: Dataset) -> dict[str, object]:
    return {k: ds[k].value for k in _PIXEL_MODULE if k in ds}


def _value(vr: str, value: object) -> bytes:
    """A value of ``_PIXEL_MODULE`` in Explicit VR Little Endian."""
    if vr == "US":
        return struct.pack("<H", int(value))  # type: ignore[call-overload]
    values = value if isinstance(value, list | tuple | MultiValue) else [value]
    text = "\\".join(str(v) for v in values).encode("ascii")
    return text + b" " * (len(text) % 2)


def _spliced(
    dataset: bytes, before: dict[str, object], after: Dataset, pixels: Replacement
) -> bytes:
    """The data set as stored (Explicit VR Little Endian, encapsulated or not) with only what
    a codec changed put in: Pixel Data and the pixel module attributes whose values changed.
    Nothing else is rewritten, so nothing else can change."""
    replace: dict[int, Replacement | None] = {PIXEL_DATA: pixels}
    for keyword, (tag, vr) in _PIXEL_MODULE.items():
        if keyword in after and after[keyword].value != before.get(keyword):
            replace[tag] = (vr, _value(vr, after[keyword].value), False)
    return recode(dataset, ExplicitVRLittleEndian, ExplicitVRLittleEndian, replace)


def _first_frame(ds: Dataset) -> bytes:
    from pydicom.encaps import generate_frames

    frames = generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames") or 1))
    return next(iter(frames), b"")


def _code_stream_lossy(syntax: str, frame: bytes) -> bool:
    """Whether a code stream of a syntax that may be either is lossy: JPEG 2000 with the
    irreversible wavelet (COD marker), JPEG-LS with NEAR > 0 (SOS marker)."""
    if syntax in (JPEGLSNearLossless,):
        at = frame.find(b"\xff\xda")
        if at < 0 or at + 5 > len(frame):
            return True
        components = frame[at + 4]
        near = at + 5 + 2 * components
        return near >= len(frame) or frame[near] != 0
    at = frame.find(b"\xff\x52")
    # Lcod(2) Scod(1) progression(1) layers(2) MCT(1) levels(1) xcb(1) ycb(1) style(1) wavelet
    wavelet = at + 2 + 11
    return at < 0 or wavelet >= len(frame) or frame[wavelet] != 1


def _was_lossy(ds: Dataset, syntax: str) -> bool:
    if syntax in _LOSSY or str(ds.get("LossyImageCompression", "")).strip() == "01":
        return True
    if syntax in _MAYBE_LOSSY:
        return _code_stream_lossy(syntax, _first_frame(ds))
    return False


def _mark_lossy(ds: Dataset, syntax: str, compressed_size: int, decoded_size: int) -> None:
    """Lossy Image Compression attributes for pixels decoded from a lossy code stream: the
    flag is set, the method and ratio added when the data set did not record them."""
    ds.LossyImageCompression = "01"
    if "LossyImageCompressionMethod" not in ds:
        ds.LossyImageCompressionMethod = next(
            m for prefix, m in _METHOD if syntax.startswith(prefix)
        )
    if "LossyImageCompressionRatio" not in ds and compressed_size:
        ds.LossyImageCompressionRatio = f"{decoded_size / compressed_size:.2f}"[:16]


def _is_12bit_jpeg(ds: Dataset, syntax: str) -> bool:
    """Whether the pixels are 12-bit JPEG of one sample, which GDCM decodes as DCMTK does."""
    return (
        syntax == JPEGExtended12Bit
        and int(ds.get("BitsStored", 8)) > 8
        and int(ds.get("SamplesPerPixel", 1)) == 1
    )


def _decoded(dataset: bytes, syntax: str) -> bytes:
    """An encapsulated data set decoded into Explicit VR Little Endian."""
    ds = _read(dataset, syntax)
    if "PixelData" not in ds:
        return dataset  # encoded as Explicit VR Little Endian already (PS3.5 A.4)
    before = _pixel_module(ds)
    lossy = _was_lossy(ds, syntax)
    compressed_size = len(ds.PixelData)
    try:
        if _is_12bit_jpeg(ds, syntax):
            frames = int(ds.get("NumberOfFrames") or 1)
            ds.PixelData = ijg12.decode(dataset, 2 * ds.Rows * ds.Columns * frames)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds.decompress(
                    as_rgb=True,
                    generate_instance_uid=False,
                    decoding_plugin=_DECODER.get(syntax, ""),
                )
    except Exception as e:  # the pixel handlers raise many types
        raise CannotTranscode(f"cannot decode {UID(syntax).name}: {e}") from e
    if lossy:
        _mark_lossy(ds, syntax, compressed_size, len(ds.PixelData))
    # Decoded pixels are OW whatever their depth, as DCMTK's decoders write them: a big
    # endian target then swaps 8-bit samples in pairs exactly as dcmdjpeg +tb does.
    return _spliced(dataset, before, ds, ("OW", ds.PixelData, False))


def _jpeg_lossless(ds: Dataset, pixels: numpy.ndarray) -> bytes:
    """Pixel Data encoded as JPEG Lossless with selection value 1, a code stream per frame,
    encapsulated as pydicom encapsulates its encoders' (with a Basic Offset Table).
    ``pixels`` are the data set's, color by pixel and not converted to RGB."""
    if ds.PhotometricInterpretation == "YBR_FULL_422":
        # The frame would be the upsampled one, not the samples stored.
        raise ValueError("YBR_FULL_422 would need chroma subsampling, not done by our encoder")
    rows, columns = int(ds.Rows), int(ds.Columns)
    samples_per_pixel = int(ds.get("SamplesPerPixel", 1))
    frames = pixels.astype(pixels.dtype.newbyteorder("<"), copy=False).reshape(
        -1, rows * columns * samples_per_pixel
    )
    depth = (int(ds.BitsAllocated), int(ds.BitsStored), int(ds.get("PixelRepresentation", 0)))
    return encapsulate(
        [
            _native.encode_jpeg_lossless(frame.tobytes(), rows, columns, samples_per_pixel, *depth)
            for frame in frames
        ]
    )


def _pixels(ds: Dataset) -> numpy.ndarray:
    """The pixels of a data set from ``_read``: sign-extended to their dtype, color by pixel,
    color spaces not converted (what an encoder must keep)."""
    syntax = ds.file_meta.TransferSyntaxUID
    ds.pixel_array_options(as_rgb=False, decoding_plugin=_DECODER.get(syntax, ""))
    return ds.pixel_array


def _encoded(dataset: bytes, target: str) -> bytes:
    """A native Explicit VR Little Endian data set with Pixel Data, losslessly compressed, and
    decoded back to check that it gives the same pixels (an encoder that would not is never
    trusted: CannotTranscode)."""
    encoding, options = LOSSLESS_ENCODINGS[target]
    ds = _read(dataset, ExplicitVRLittleEndian)
    if "PixelData" not in ds:
        return dataset  # the encapsulated syntaxes encode the rest as this one (PS3.5 A.4)
    before = _pixel_module(ds)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = _pixels(ds).copy()
            if int(ds.get("SamplesPerPixel", 1)) > 1 and int(ds.get("PlanarConfiguration", 0)):
                # The encoders take color by pixel: the same pixels, rearranged.
                ds.PixelData, ds.PlanarConfiguration = pixels.tobytes(), 0
            if encoding == _JPEG_LOSSLESS:
                ds.PixelData = _jpeg_lossless(ds, pixels)
            else:
                ds.compress(encoding, generate_instance_uid=False, **options)
            encoded = _spliced(dataset, before, ds, ("OB", ds.PixelData, True))
            again = _pixels(_read(encoded, target))
    except Exception as e:  # the encoders raise many types
        raise CannotTranscode(f"cannot encode as {UID(target).name}: {e}") from e
    if not numpy.array_equal(pixels, again):
        raise CannotTranscode(f"{UID(target).name}: the encoder did not give the same pixels back")
    return encoded


def transcode_to_any(dataset: bytes, stored: str, candidates: Sequence[str]) -> tuple[str, bytes]:
    """The data set in the first of ``candidates`` (the peer's order) it can be given in:
    (syntax, data set); CannotTranscode saying why for each when there is none."""
    if stored in candidates:
        return stored, dataset
    has_pixels = has_pixel_data(dataset, stored)
    why = []
    for target in candidates:
        if not producible(stored, target, has_pixels):
            if UID(stored).is_transfer_syntax:
                why.append(f"{UID(target).name}: only a lossy encoder could make it, never used")
            else:
                why.append(f"{UID(target).name}: no decoder here knows the stored syntax")
            continue
        try:
            return target, transcode(dataset, stored, target)
        except CannotTranscode as e:
            why.append(f"{UID(target).name}: {e}")
    raise CannotTranscode(
        f"stored as {UID(stored).name}, it cannot be given in any syntax the peer accepted"
        + (f" ({'; '.join(why)})" if why else "")
    )


def transcode(dataset: bytes, stored: str, target: str) -> bytes:
    """The data set ``dataset`` (no File Meta), stored in ``stored``, given in ``target``;
    CannotTranscode saying why when it cannot be without changing a pixel."""
    if target == stored:
        return dataset
    try:
        if stored in NATIVE and target in NATIVE:
            return recode(dataset, stored, target)
        explicit = (
            recode(dataset, stored, ExplicitVRLittleEndian)
            if stored in NATIVE
            else _decoded(dataset, stored)
        )
        if target in NATIVE:
            return recode(explicit, ExplicitVRLittleEndian, target)
        if target in LOSSLESS_ENCODINGS:
            return _encoded(explicit, target)
        if not has_pixel_data(explicit, ExplicitVRLittleEndian):
            return explicit  # the encapsulated syntaxes encode the rest as this one (PS3.5 A.4)
        raise CannotTranscode(f"no lossless encoder makes {UID(target).name}")
    except RecodeError as e:
        raise CannotTranscode(str(e)) from e
