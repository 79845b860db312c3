"""What a DICOMweb retrieve sends: content negotiation as PS3.18 8.7.3 has it (the Accept
header or the ``accept`` query parameter, each media range with its ``type``, ``transfer-
syntax`` and ``q``) and the instances or frames in the syntax negotiated, made by the one
transcoder (``dicomvault.dicom.transcode``) when it is not the stored one.

Defaults (PS3.18 Table 8.7.3-2, 8.7.3-5): ``application/dicom`` without a syntax is Explicit
VR Little Endian and frames without one are uncompressed (``application/octet-stream``, Explicit
VR Little Endian); ``transfer-syntax=*`` is the stored syntax, byte for byte. What the archive
cannot make (a lossy syntax from another one) is a 406, and so is a media range whose
``transfer-syntax`` is a UID but not a Transfer Syntax UID (8.7.3.5.2: one of PS3.6 Table A-1),
which is ignored as 8.7.7 says. Bare ``application/dicom`` (not multipart) is one instance's
whole response, for an instance resource only (10.4.4).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pydicom
from pydicom.encaps import generate_frames
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicomvault.dicom.transcode import producible, transcode
from dicomvault.http.stored import checked_chunks
from dicomvault.index import Record
from dicomvault.net.outbound import part10_header, selected
from dicomvault.store import Archive

DICOM = "application/dicom"
OCTET_STREAM = "application/octet-stream"
AS_STORED = "*"

# Pixel data media types and their transfer syntaxes, the default first (PS3.18 Table
# 8.7.3-5); image/x-dicom-rle is the name older clients use for image/dicom-rle.
PIXEL_MEDIA_TYPES: dict[str, tuple[str, ...]] = {
    OCTET_STREAM: (ExplicitVRLittleEndian,),
    # JPEG Lossless SV1 is image/jpeg's default, the lossy ones only optional.
    "image/jpeg": tuple(f"1.2.840.10008.1.2.4.{n}" for n in (70, 50, 51, 57)),
    "image/dicom-rle": ("1.2.840.10008.1.2.5",),
    "image/x-dicom-rle": ("1.2.840.10008.1.2.5",),
    "image/jls": ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
    "image/jp2": ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"),
    "image/jpx": ("1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"),
    "image/jphc": ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"),
    "video/mpeg": ("1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101"),
    "video/mp4": tuple(f"1.2.840.10008.1.2.4.{n}" for n in range(102, 107)),
    "video/H265": ("1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108"),
}
_WILDCARDS = frozenset({"*/*", "multipart/*", "multipart/related"})


class NotAcceptable(ValueError):
    """Nothing the client accepts can be made (a 406)."""


class BadAccept(ValueError):
    """A malformed Accept value or transfer-syntax parameter (a 400)."""


@dataclass(frozen=True)
class MediaRange:
    """One media range of an Accept value: multipart's ``type`` parameter is ``media``;
    ``single_part`` when it is that media type itself, not within multipart/related."""

    media: str
    syntax: str | None
    quality: float
    single_part: bool = False


def media_ranges(accept: str) -> list[MediaRange]:
    """An Accept value's media ranges, most preferred first (by q, then as listed)."""
    ranges = []
    for text in re.findall(r'(?:[^,"]|"[^"]*")+', accept):
        kind, *parameters = [p.strip() for p in text.split(";")]
        if not kind:
            continue
        values = {}
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            values[name.strip().lower()] = value.strip().strip('"')
        media = kind.lower()
        single_part = media not in _WILDCARDS and media != "application/*"
        if media == "multipart/related" and "type" in values:
            media = values["type"].lower()
        try:
            quality = float(values.get("q", "1"))
        except ValueError as e:
            raise BadAccept(f"q is a number: {text.strip()!r}") from e
        syntax = values.get("transfer-syntax")
        if syntax is not None and syntax != AS_STORED and not re.fullmatch(r"[0-9.]{1,64}", syntax):
            raise BadAccept(f"transfer-syntax is a UID or *: {syntax!r}")
        ranges.append(MediaRange(media, syntax, quality, single_part))
    ranges.sort(key=lambda r: -r.quality)
    return [r for r in ranges if r.quality > 0]


def accepted(accept_header: str | None, accept_parameter: str | None) -> list[MediaRange]:
    """The ranges a request accepts: the ``accept`` query parameter over the header."""
    return media_ranges(accept_parameter or accept_header or "*/*")


def _has_pixels(record: Record) -> bool:
    return bool(record.tags.get("Rows"))


def is_transfer_syntax(uid: str) -> bool:
    """Whether ``uid`` is a Transfer Syntax UID of PS3.6 Table A-1 (as pydicom knows them)."""
    return UID(uid).is_transfer_syntax


def dicom_syntax(
    ranges: Sequence[MediaRange], records: Sequence[Record], instance: bool
) -> tuple[str, bool]:
    """The syntax instances go out in (AS_STORED, or one every instance can be made in) and
    whether as a single part, which only an ``instance`` resource may be (PS3.18 10.4.4: for
    a study or series the range is ignored)."""
    for r in ranges:
        if r.media not in (DICOM, "application/*") and r.media not in _WILDCARDS:
            continue
        if r.single_part and not instance:
            continue
        syntax = r.syntax or ExplicitVRLittleEndian
        if syntax == AS_STORED:
            return syntax, r.single_part
        if is_transfer_syntax(syntax) and all(
            producible(stored_syntax(rec), syntax, _has_pixels(rec)) for rec in records
        ):
            return syntax, r.single_part
    raise NotAcceptable(
        "the instances can be sent as stored (transfer-syntax=*) or in a transfer syntax the "
        "archive can make without changing a pixel (multipart/related unless the resource is "
        f"an instance); not as {_listed(ranges)}"
    )


def frame_media(ranges: Sequence[MediaRange], record: Record) -> tuple[str, str]:
    """(media type, syntax) for an instance's frames or Pixel Data."""
    stored = stored_syntax(record)
    for r in ranges:
        media = OCTET_STREAM if r.media in _WILDCARDS or r.media == "application/*" else r.media
        syntaxes = PIXEL_MEDIA_TYPES.get(media)
        if syntaxes is None:
            continue
        if r.syntax == AS_STORED:
            return media_type_of(stored), stored
        if r.syntax is not None:
            candidates: Sequence[str] = [r.syntax] if r.syntax in syntaxes else []
        else:
            # The stored syntax when it is of this media type: nothing lost, nothing done.
            candidates = [stored, *syntaxes] if stored in syntaxes else syntaxes
        for syntax in candidates:
            if producible(stored, syntax, True):
                return media, syntax
    raise NotAcceptable(
        f"the frames are stored as {UID(stored).name}; the archive cannot make "
        f"{_listed(ranges)} from them without changing a pixel"
    )


def media_type_of(syntax: str) -> str:
    """A pixel data syntax's media type (octet-stream for the native ones)."""
    return next((m for m, s in PIXEL_MEDIA_TYPES.items() if syntax in s), OCTET_STREAM)


def _listed(ranges: Sequence[MediaRange]) -> str:
    return (
        ", ".join(
            f"{r.media}{' single part' if r.single_part else ''} ({r.syntax or 'default syntax'})"
            for r in ranges
        )
        or "nothing"
    )


def stored_syntax(record: Record) -> str:
    return record.tags.get("TransferSyntaxUID") or ExplicitVRLittleEndian


def sent_syntax(record: Record, syntax: str) -> str:
    """The syntax the instance goes out in when ``syntax`` (maybe AS_STORED) is asked."""
    return stored_syntax(record) if syntax == AS_STORED else syntax


def instance_bytes(archive: Archive, record: Record, syntax: str) -> Iterator[bytes]:
    """The instance as a Part 10 file in ``syntax`` (as stored, chunk by chunk, for
    AS_STORED or its own syntax), checked whole and, when transcoded, made before the first
    byte: DamagedError, CannotTranscode."""
    manifest = record.instance_manifest()
    if syntax in (AS_STORED, stored_syntax(record)):
        yield from checked_chunks(archive, manifest, record.key)
        return
    archive.check_intact(manifest)
    instance = selected(record)
    dataset = b"".join(archive.chunks(manifest, instance.dataset_offset))
    made = transcode(dataset, instance.transfer_syntax, syntax)
    yield part10_header(instance.sop_class_uid, instance.sop_instance_uid, syntax) + made


def frames_in(archive: Archive, record: Record, numbers: list[int], syntax: str) -> list[bytes]:
    """Frames (numbered from 1) of the instance made in ``syntax`` (not its stored one):
    FileNotFoundError for a frame it does not have."""
    part10 = b"".join(instance_bytes(archive, record, syntax))
    ds = pydicom.dcmread(io.BytesIO(part10), force=True)
    if "PixelData" not in ds:
        raise FileNotFoundError("the instance has no Pixel Data")
    count = int(ds.get("NumberOfFrames") or 1)
    if max(numbers) > count:
        raise FileNotFoundError(f"frame {max(numbers)} is not in the instance ({count} frames)")
    if UID(syntax).is_encapsulated:
        every = list(generate_frames(ds.PixelData, number_of_frames=count))
    else:
        size = len(ds.PixelData) // count
        every = [ds.PixelData[i * size : (i + 1) * size] for i in range(count)]
    return [every[n - 1] for n in numbers]
