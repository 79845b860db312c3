"""An archived instance read in parts: its header and each of its frames from their own blobs,
so that a frame is served or rendered without reading the whole instance."""

from __future__ import annotations

import io
from collections.abc import Iterator
from functools import cached_property

import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import UID

from dicomvault import _native
from dicomvault.index import Record
from dicomvault.store.archive import Archive


class InstanceParts:
    """An archived instance read in parts: its header (File Meta and the data set up to Pixel
    Data's value) and its frames, each from its own blobs. The whole instance is read only
    when its frames cannot be told apart in the packs (deflated, or encapsulated without
    offsets or frame markers)."""

    def __init__(self, archive: Archive, record: Record) -> None:
        self.store = archive.store
        self.manifest = record.instance_manifest()
        info = _native.manifest_info(self.manifest)
        self.syntax = UID(info.transfer_syntax)
        self.encapsulated = info.encapsulated
        self.frames_in_blobs = info.frames_resolved and not info.deflated
        self.frame_count = info.frames
        header = info.segments[0] if info.segments else None
        if header is not None and header.kind == "header":
            blobs = info.blobs[header.first_blob : header.first_blob + header.blob_count]
            self._header_length = sum(b.length for b in blobs)
        else:
            self._header_length = info.size

    @cached_property
    def header_bytes(self) -> bytes:
        header = bytearray()
        for chunk in self.store.chunks(self.manifest, 0):
            header += chunk
            if len(header) >= self._header_length:
                break
        return bytes(header[: self._header_length])

    def header(self) -> Dataset:
        ds = pydicom.dcmread(io.BytesIO(self.header_bytes), stop_before_pixels=True, force=True)
        if "TransferSyntaxUID" not in ds.file_meta:  # a data set stored without File Meta
            ds.file_meta.TransferSyntaxUID = self.syntax
        return ds

    @cached_property
    def whole(self) -> Dataset:
        return pydicom.dcmread(io.BytesIO(self.store.read(self.manifest, 0)), force=True)

    def has_pixel_data(self) -> bool:
        return self.frame_count > 0 or (not self.frames_in_blobs and "PixelData" in self.whole)

    def number_of_frames(self) -> int:
        if self.frames_in_blobs:
            return self.frame_count
        return int(self.whole.get("NumberOfFrames") or 1) if "PixelData" in self.whole else 0

    def pixel_data_vr(self, header: Dataset) -> str:
        """Pixel Data's VR, as stored."""
        if self.encapsulated:
            return "OB"
        if not self.frames_in_blobs:
            return str(self.whole["PixelData"].VR)
        # The header ends with Pixel Data's element header: tag, VR (if explicit), length.
        vr = self.header_bytes[-8:-6]
        if vr in (b"OB", b"OW"):
            return vr.decode()
        return "OW" if int(header.get("BitsAllocated", 16)) > 8 else "OB"

    def frames(self, numbers: list[int]) -> list[bytes]:
        """The frames (numbered from 1): native values, or each encapsulated frame's
        fragments joined. FileNotFoundError for a frame the instance does not have."""
        return list(self.iter_frames(numbers))

    def iter_frames(self, numbers: list[int]) -> Iterator[bytes]:
        """``frames``, each read (from its own blobs) when it is asked for: a response of a
        thousand frames never holds more than one. The frame numbers are checked at once."""
        count = self.number_of_frames()
        if count == 0:
            raise FileNotFoundError("the instance has no Pixel Data")
        if max(numbers) > count:
            raise FileNotFoundError(f"frame {max(numbers)} is not in the instance ({count} frames)")
        if self.frames_in_blobs:
            return (self.store.read_frame(self.manifest, n - 1) for n in numbers)
        ds = self.whole
        if self.encapsulated:
            every = list(generate_frames(ds.PixelData, number_of_frames=count))
        else:
            size = len(ds.PixelData) // count
            every = [ds.PixelData[i * size : (i + 1) * size] for i in range(count)]
        return iter([every[n - 1] for n in numbers])

    def frame_dataset(self, number: int) -> tuple[Dataset, int]:
        """A data set holding frame ``number`` and the frame's index in it: the header with
        that one frame, or the whole instance when its frames are not in blobs of their own."""
        if not self.frames_in_blobs:
            self.frames([number])  # FileNotFoundError beyond the last frame
            return self.whole, number - 1
        [frame] = self.frames([number])
        ds = self.header()
        ds.NumberOfFrames = 1
        if self.encapsulated:
            ds.PixelData = encapsulate([frame])
        else:
            ds.PixelData = frame
        ds["PixelData"].VR = self.pixel_data_vr(ds)
        return ds, 0
