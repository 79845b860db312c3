"""Sending archived instances over C-STORE exactly as they were received.

pynetdicom encodes a ``Dataset`` itself, which would re-encode what the archive holds. The one
documented boundary with pynetdicom for outbound C-STORE is here: a ``StoredInstance`` stands
for an archived instance in pynetdicom's C-STORE, C-GET and C-MOVE machinery, and
``install()`` wraps ``Association.send_c_store`` once so that, on the association actually
used, a ``StoredInstance`` is sent

* byte for byte (pynetdicom's chunked sending from a Part 10 file) when the peer accepted its
  SOP class in the stored transfer syntax;
* otherwise decoded with pydicom (decompressed by its pixel handlers when encapsulated) and
  sent in a native syntax the peer accepted, which is logged;
* or not at all, failing that one sub-operation with a clear error, when neither is possible.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite, write_file_meta_info
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import _config
from pynetdicom.association import Association

from dicomvault import _native

if TYPE_CHECKING:
    from dicomvault.store import Archive

log = logging.getLogger("dicomvault.net")

NATIVE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)

_installed = threading.Lock()
_original_send_c_store: Callable[..., Dataset] | None = None


class StoredInstance(Dataset):
    """An archived instance on its way out: its SOP Class/Instance UIDs (which pynetdicom's
    retrieve services read) and how to get its bytes.

    ``chunks(start)`` yields the stored instance's bytes from byte ``start``;
    ``dataset_offset`` is where its data set begins (after File Meta, if any).
    """

    def __init__(
        self,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax: str,
        dataset_offset: int,
        chunks: Callable[[int], Iterable[bytes]],
        scratch: Path,
    ) -> None:
        super().__init__()
        self.SOPClassUID = sop_class_uid
        self.SOPInstanceUID = sop_instance_uid
        self.transfer_syntax = UID(transfer_syntax)
        self.dataset_offset = dataset_offset
        self._chunks = chunks
        self._scratch = scratch

    def part10_file(self, syntax: UID | None = None, dataset: bytes | None = None) -> Path:
        """A Part 10 file: File Meta made for ``syntax`` (the stored one by default), then
        ``dataset`` or else the stored data set as is."""
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = self.SOPClassUID
        meta.MediaStorageSOPInstanceUID = self.SOPInstanceUID
        meta.TransferSyntaxUID = syntax or self.transfer_syntax
        buffer = io.BytesIO()
        buffer.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(buffer, meta, enforce_standard=True)
        self._scratch.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self._scratch, suffix=".dcm")
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getvalue())
            for chunk in [dataset] if dataset is not None else self._chunks(self.dataset_offset):
                f.write(chunk)
        return Path(name)

    def transcoded(self, accepted: Collection[str]) -> tuple[UID, bytes]:
        """The data set decoded by pydicom (decompressed by its pixel handlers if
        encapsulated) and written in the first native syntax of ``accepted``, which is
        logged; ValueError saying why when there is none or the data cannot be decoded."""
        native = next((ts for ts in NATIVE_SYNTAXES if ts in accepted), None)
        if native is None:
            raise ValueError(
                f"{self.SOPInstanceUID}: the peer accepted {self.SOPClassUID} in none of "
                f"{self.transfer_syntax.name} or a native syntax"
            )
        log.info(
            "%s: peer did not accept %s, sending it decoded as %s",
            self.SOPInstanceUID,
            self.transfer_syntax.name,
            native.name,
        )
        try:
            return native, self._decoded(native)
        except Exception as e:  # pixel handlers raise many types; the sub-operation fails
            raise ValueError(
                f"{self.SOPInstanceUID}: cannot decode {self.transfer_syntax.name}: {e}"
            ) from e

    def _decoded(self, syntax: UID) -> bytes:
        ds = pydicom.dcmread(io.BytesIO(b"".join(self._chunks(0))), force=True)
        if not ds.file_meta or "TransferSyntaxUID" not in ds.file_meta:
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = self.transfer_syntax
        if self.transfer_syntax.is_compressed:
            ds.decompress(generate_instance_uid=False)
        elif not self.transfer_syntax.is_little_endian and "PixelData" in ds:
            # pydicom re-encodes the numbers, but OW pixel bytes must be swapped here.
            pixels = ds.pixel_array
            ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
        ds.file_meta.TransferSyntaxUID = syntax
        ds.file_meta.MediaStorageSOPClassUID = self.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = self.SOPInstanceUID
        ds.preamble = b"\x00" * 128
        out = io.BytesIO()
        dcmwrite(
            out,
            ds,
            implicit_vr=syntax.is_implicit_VR,
            little_endian=syntax.is_little_endian,
            force_encoding=True,
        )
        part10 = out.getvalue()
        # The data set follows the File Meta group, whose length (0002,0000) is at byte 140.
        return part10[144 + int.from_bytes(part10[140:144], "little") :]

    def send(
        self, assoc: Association, send: Callable[..., Dataset], *args: Any, **kwargs: Any
    ) -> Dataset:
        accepted = {
            cx.transfer_syntax[0]
            for cx in assoc.accepted_contexts
            if cx.abstract_syntax == self.SOPClassUID and cx.as_scu
        }
        if self.transfer_syntax in accepted:
            path = self.part10_file()
        else:
            path = self.part10_file(*self.transcoded(accepted))
        try:
            return send(assoc, path, *args, **kwargs)
        finally:
            path.unlink(missing_ok=True)


def install() -> None:
    """Routes ``StoredInstance`` through ``StoredInstance.send`` (idempotent)."""
    global _original_send_c_store
    with _installed:
        if _original_send_c_store is not None:
            return
        original = Association.send_c_store
        _original_send_c_store = original

        def send_c_store(self: Association, dataset: Any, *args: Any, **kwargs: Any) -> Dataset:
            if isinstance(dataset, StoredInstance):
                return dataset.send(self, original, *args, **kwargs)
            return original(self, dataset, *args, **kwargs)

        Association.send_c_store = send_c_store  # type: ignore[method-assign]
        # Paths are sent from the file in chunks, without decoding: byte for byte.
        _config.STORE_SEND_CHUNKED_DATASET = True


class Selected(NamedTuple):
    """An archived instance a retrieve selected: what sending it takes."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    dataset_offset: int
    manifest: bytes


def selected(record: Any) -> Selected:
    """What sending an index record's instance takes."""
    info = _native.manifest_info(record.manifest)
    return Selected(
        record.tags.get("SOPClassUID", ""),
        record.tags.get("SOPInstanceUID") or record.key,
        info["transfer_syntax"],
        info["dataset_offset"],
        record.manifest,
    )


def stored_instance(archive: Archive, record: Any) -> StoredInstance:
    return outbound(archive, selected(record))


def outbound(archive: Archive, instance: Selected) -> StoredInstance:
    """``instance`` on its way out of ``archive``."""
    return StoredInstance(
        *instance[:4],
        lambda start: archive.store.chunks(instance.manifest, start),
        archive.root / "tmp",
    )
