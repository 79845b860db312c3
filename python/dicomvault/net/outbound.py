"""Sending archived instances over C-STORE exactly as they were received.

pynetdicom encodes a ``Dataset`` itself, which would re-encode what the archive holds. The one
documented boundary with pynetdicom for outbound C-STORE is here: a ``StoredInstance`` stands
for an archived instance in pynetdicom's C-STORE, C-GET and C-MOVE machinery, and
``install()`` wraps ``Association.send_c_store`` once so that, on the association actually
used, a ``StoredInstance`` is sent

* byte for byte (pynetdicom's chunked sending from a Part 10 file) when the peer accepted its
  SOP class in the stored transfer syntax;
* otherwise transcoded (``dicomvault.dicom.transcode``, never changing a pixel) into the
  first syntax the peer accepted that it can be given in, which is logged;
* or not at all, failing that one sub-operation with a clear error, when neither is possible.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom import _config
from pynetdicom.association import Association

from dicomvault import _native
from dicomvault.dicom.transcode import transcode_to_any

if TYPE_CHECKING:
    from dicomvault.index import Record
    from dicomvault.store import Archive

log = logging.getLogger("dicomvault.net")

_installed = threading.Lock()
_original_send_c_store: Callable[..., Dataset] | None = None


def part10_header(sop_class_uid: str, sop_instance_uid: str, syntax: str) -> bytes:
    """Preamble, prefix and File Meta of an instance sent in ``syntax``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(syntax)
    buffer = DicomBytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue()


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
        self._scratch.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self._scratch, suffix=".dcm")
        with os.fdopen(fd, "wb") as f:
            f.write(
                part10_header(self.SOPClassUID, self.SOPInstanceUID, syntax or self.transfer_syntax)
            )
            for chunk in [dataset] if dataset is not None else self._chunks(self.dataset_offset):
                f.write(chunk)
        return Path(name)

    def transcoded(self, accepted: Sequence[str]) -> tuple[UID, bytes]:
        """The data set in the first of ``accepted`` (the peer's order of preference) the
        transcoder can give it in without changing a pixel, which is logged; ValueError
        (CannotTranscode) saying why when there is none."""
        data = b"".join(self._chunks(self.dataset_offset))
        syntax, dataset = transcode_to_any(data, self.transfer_syntax, accepted)
        log.info(
            "%s: peer did not accept %s, sending it as %s",
            self.SOPInstanceUID,
            self.transfer_syntax.name,
            UID(syntax).name,
        )
        return UID(syntax), dataset

    def send(
        self, assoc: Association, send: Callable[..., Dataset], *args: Any, **kwargs: Any
    ) -> Dataset:
        # In the order of their contexts: the order the syntaxes were proposed in.
        accepted = [
            cx.transfer_syntax[0]
            for cx in sorted(assoc.accepted_contexts, key=lambda cx: cx.context_id or 0)
            if cx.abstract_syntax == self.SOPClassUID and cx.as_scu
        ]
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


def selected(record: Record) -> Selected:
    """What sending an index record's instance takes."""
    manifest = record.instance_manifest()
    info = _native.manifest_info(manifest)
    return Selected(
        record.tags.get("SOPClassUID", ""),
        record.tags.get("SOPInstanceUID") or record.key,
        info.transfer_syntax,
        info.dataset_offset,
        manifest,
    )


def stored_instance(archive: Archive, record: Record) -> StoredInstance:
    return outbound(archive, selected(record))


def outbound(archive: Archive, instance: Selected) -> StoredInstance:
    """``instance`` on its way out of ``archive``."""
    return StoredInstance(
        *instance[:4],
        lambda start: archive.chunks(instance.manifest, start),
        archive.root / "tmp",
    )
