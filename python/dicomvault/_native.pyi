"""Types of the Rust extension ``dicomvault._native`` (rust/src/python*.rs): the scanner, the
content-addressed store, the DICOM listener and the SCU, the JPEG Lossless encoder, and what
they return.

The TypedDicts below describe dicts the module returns (scans and ingests); they exist for
type checking only, not at run time.
"""

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Final, Literal, TypedDict, final

StrPath = str | os.PathLike[str]

# Element values as scanned: tag -> (VR, raw value bytes).
Elements = dict[int, tuple[str, bytes]]

class PixelDataSummary(TypedDict):
    tag: int
    element_offset: int
    value_offset: int
    # None when encapsulated (undefined length).
    value_length: int | None
    encapsulated: bool
    number_of_frames: int
    # Native: bytes per frame.
    frame_size: int
    frames_resolved: bool
    basic_offset_table: list[int]
    # (offset, length, frame) of each fragment.
    fragments: list[tuple[int, int, int]]

class Summary(TypedDict):
    """What a scan found."""

    preamble: bool
    dataset_offset: int
    transfer_syntax: str
    transfer_syntax_detected: bool
    deflated: bool
    size: int
    truncated_at: int | None
    meta: Elements
    elements: Elements
    pixel_data: PixelDataSummary | None

class Ingested(Summary):
    """An instance whose blobs are stored (its manifest not yet persisted)."""

    manifest: bytes
    new_bytes: int
    frames: int
    # Why it cannot be stored as it is (a UID it lacks), else None.
    identity_error: str | None

class Received(Ingested):
    """An instance the listener or a C-GET made durable, as the index's applier takes it."""

    source: str
    received_at: str

class Rescanned(Summary):
    # Its header was read from a damaged blob.
    salvaged: bool

class ScanError(ValueError):
    """The data set is malformed; the message names the byte offset."""

class ManifestError(ValueError):
    """Manifest bytes that do not decode."""

class DamagedError(OSError):
    """A stored record an instance is made of is missing or fails its checks."""

class AssociationError(OSError):
    """The peer could not be reached, refused or broke the association."""

# DIMSE statuses by name (rust/src/status.rs).
STATUS: Final[dict[str, int]]
# PS3.5's value representations, and those whose explicit encoding has a 32-bit length
# (PS3.5 7.1.2; rust/src/scan.rs).
KNOWN_VRS: Final[list[str]]
LONG_LENGTH_VRS: Final[list[str]]

@final
class Damage:
    """A damaged record or stretch of a pack, or a damaged object on object storage."""

    @property
    def pack(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def length(self) -> int: ...
    @property
    def hash(self) -> str | None: ...
    @property
    def kind(self) -> Literal["blob", "manifest", "tombstone"] | None: ...
    @property
    def why(self) -> str: ...
    @property
    def superseded(self) -> bool: ...
    @property
    def place(self) -> str: ...
    @property
    def quarantined(self) -> Path | None: ...
    @property
    def message(self) -> str: ...

@final
class ManifestBlob:
    @property
    def hash(self) -> str: ...
    @property
    def length(self) -> int: ...

@final
class ManifestSegment:
    @property
    def kind(self) -> Literal["header", "frame", "trailer", "opaque"]: ...
    @property
    def frame(self) -> int | None: ...
    @property
    def first_blob(self) -> int: ...
    @property
    def blob_count(self) -> int: ...

@final
class ManifestInfo:
    """What a manifest says."""

    @property
    def size(self) -> int: ...
    @property
    def dataset_offset(self) -> int: ...
    @property
    def transfer_syntax(self) -> str: ...
    @property
    def encapsulated(self) -> bool: ...
    @property
    def frames_resolved(self) -> bool: ...
    @property
    def deflated(self) -> bool: ...
    @property
    def truncated(self) -> bool: ...
    @property
    def frames(self) -> int: ...
    @property
    def blobs(self) -> list[ManifestBlob]: ...
    @property
    def segments(self) -> list[ManifestSegment]: ...

@final
class HistoryEvent:
    """A manifest, tombstone or damaged record of the pack log; the fields its kind does not
    use are empty."""

    @property
    def kind(self) -> Literal["manifest", "tombstone", "damaged"]: ...
    @property
    def stamp(self) -> int: ...
    @property
    def pack(self) -> int: ...
    @property
    def end(self) -> int: ...
    @property
    def annotations(self) -> bytes: ...
    @property
    def manifest(self) -> bytes: ...
    @property
    def target(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def why(self) -> str: ...

@final
class VerifyReport:
    @property
    def records(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def damaged(self) -> list[Damage]: ...

@final
class RebuildReport:
    @property
    def records(self) -> int: ...
    @property
    def damaged(self) -> list[Damage]: ...

@final
class Collected:
    @property
    def blobs(self) -> int: ...
    @property
    def trashed(self) -> int: ...
    @property
    def trashed_bytes(self) -> int: ...
    @property
    def recent(self) -> int: ...
    @property
    def restored(self) -> int: ...
    @property
    def deleted(self) -> int: ...
    @property
    def deleted_bytes(self) -> int: ...
    @property
    def stale_uploads(self) -> int: ...

@final
class GcReport:
    @property
    def packs_rewritten(self) -> int: ...
    @property
    def packs_skipped(self) -> int: ...
    @property
    def bytes_before(self) -> int: ...
    @property
    def bytes_after(self) -> int: ...
    @property
    def blobs_kept(self) -> int: ...
    @property
    def records_dropped(self) -> int: ...
    @property
    def missing(self) -> list[str]: ...
    @property
    def damaged(self) -> list[Damage]: ...

@final
class StoreStats:
    @property
    def packs(self) -> int: ...
    @property
    def pack_bytes(self) -> int: ...
    @property
    def records(self) -> int: ...

@final
class Scanner:
    """A scanner for a set of wanted (tag, VR) pairs, reused across files."""

    def __new__(cls, wanted: Sequence[tuple[int, str]] = ...) -> Scanner: ...
    def scan_file(self, path: StrPath) -> Summary: ...
    def scan_bytes(
        self,
        data: bytes | bytearray,
        transfer_syntax: str | None = None,
        allow_truncated: bool = False,
    ) -> Summary: ...

@final
class InstanceWriter:
    """Streams one instance into the store."""

    def write(self, data: bytes | bytearray) -> None: ...
    def finish(self) -> Ingested: ...
    def abort(self) -> None: ...

@final
class ChunkReader:
    """An instance's bytes, one blob at a time."""

    def __iter__(self) -> Iterator[bytes]: ...
    def __next__(self) -> bytes: ...

@final
class Store:
    """An archive's content-addressed store."""

    def __new__(
        cls,
        root: StrPath,
        *,
        pack_size: int = ...,
        # "none" or "zstd" (else ValueError).
        compression: str = "none",
        level: int = 3,
        # "always", "batch" or "never" (else ValueError).
        sync: str = "always",
        sync_interval_ms: int = 1000,
        wanted: Sequence[tuple[int, str]] = ...,
        exclusive: bool = False,
        min_free_space: int = 0,
    ) -> Store: ...
    @staticmethod
    def on_s3(
        bucket: str,
        *,
        node: int,
        endpoint: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        prefix: str = "",
        wanted: Sequence[tuple[int, str]] = ...,
    ) -> Store: ...
    @property
    def on_objects(self) -> bool: ...
    @property
    def recovery(self) -> list[str]: ...
    def check_space(self) -> None: ...
    def writer(
        self, transfer_syntax: str | None = None, allow_truncated: bool | None = None
    ) -> InstanceWriter: ...
    def ingest_file(self, path: StrPath) -> Ingested: ...
    def persist(self, items: Sequence[tuple[bytes, bytes]]) -> list[tuple[int, int]]: ...
    def tombstone(self, items: Sequence[tuple[bytes, str]]) -> list[tuple[int, int]]: ...
    def history(self, after: dict[int, int], every_node: bool = False) -> list[HistoryEvent]: ...
    def submit_instance(self, manifest: bytes, annotations: bytes) -> int: ...
    def submit_tombstone(self, manifest: bytes, key: str) -> int: ...
    def wait_committed(self, ticket: int) -> None: ...
    def take_logged(
        self,
    ) -> tuple[int, list[tuple[int, int, int, Received | str | None]]] | None: ...
    def take_landed(self, before: int) -> bool: ...
    def log_applied(self, through: int) -> None: ...
    def log_given_up(self, through: int, why: str) -> None: ...
    def log_stalled(self, why: str) -> None: ...
    def acknowledge_indexed(self, on: bool) -> None: ...
    def refuse_writes(self, why: str | None) -> None: ...
    def log_barrier(self) -> str | None: ...
    def close_log(self) -> None: ...
    def sync(self) -> None: ...
    def read(self, manifest: bytes, start: int = 0) -> bytes: ...
    def read_frame(self, manifest: bytes, index: int) -> bytes: ...
    def chunks(self, manifest: bytes, start: int = 0) -> ChunkReader: ...
    def same_data_set(self, a: bytes, b: bytes) -> bool: ...
    def check(self, manifest: bytes) -> None: ...
    def export(self, manifest: bytes, path: StrPath) -> None: ...
    def verify(self) -> VerifyReport: ...
    def missing_blobs(self, manifest: bytes) -> list[str]: ...
    def rescan(self, manifest: bytes) -> Rescanned: ...
    def rebuild_blob_index(self) -> RebuildReport: ...
    def gc(
        self,
        live: Sequence[bytes] | None = None,
        compression: str | None = None,
        level: int = 3,
        on_event: Callable[[Literal["claim", "rewritten"], int, int, int], object] | None = None,
    ) -> GcReport: ...
    def collect(
        self,
        live: Sequence[bytes],
        marks: dict[int, int],
        trash_before: float,
        delete_before: float,
    ) -> Collected: ...
    def settled_pack_lengths(self) -> dict[int, int]: ...
    def stats(self) -> StoreStats: ...

def manifest_info(manifest: bytes) -> ManifestInfo: ...
def manifest_hash(manifest: bytes) -> str: ...
def annotations(received_at: str, source: str, replace: bool = False) -> bytes: ...
def file_meta(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax: str,
    source_ae: str,
    implementation_class_uid: str,
    implementation_version_name: str,
) -> bytes: ...

# The pixel codecs --------------------------------------------------------------------------

def encode_jpeg_lossless(
    samples: bytes,
    rows: int,
    columns: int,
    samples_per_pixel: int,
    bits_allocated: int,
    bits_stored: int,
    pixel_representation: int,
) -> bytes:
    """One frame's native samples (little endian, color-by-pixel) as a JPEG Lossless code
    stream, selection value 1; ValueError saying why a frame cannot be encoded."""

# The DICOM listener ------------------------------------------------------------------------

@final
class KnownAe:
    """A [modalities] AE as the listener checks it without calling back."""

    def __new__(cls, aet: str, addresses: Sequence[str], echo: bool, store: bool) -> KnownAe: ...
    @property
    def aet(self) -> str: ...
    @property
    def addresses(self) -> list[str]: ...
    @property
    def echo(self) -> bool: ...
    @property
    def store(self) -> bool: ...

@final
class ListenerTls:
    """The DICOM TLS port beside the plain one."""

    def __new__(
        cls,
        port: int,
        certificate: StrPath,
        private_key: StrPath,
        ca: StrPath | None,
        require_client_certificate: bool,
    ) -> ListenerTls: ...
    @property
    def port(self) -> int: ...
    @property
    def certificate(self) -> Path: ...
    @property
    def private_key(self) -> Path: ...
    @property
    def ca(self) -> Path | None: ...
    @property
    def require_client_certificate(self) -> bool: ...

@final
class ListenerConfig:
    """Everything the DICOM listener is built from."""

    def __new__(
        cls,
        host: str,
        port: int,
        ae_title: str,
        check_called_aet: bool,
        always_allow_echo: bool,
        always_allow_store: bool,
        check_modality_host: bool,
        known: Sequence[KnownAe],
        storage_classes: Sequence[str],
        private_classes: bool,
        find_classes: Sequence[str],
        move_classes: Sequence[str],
        retrieve_classes: Sequence[str],
        transfer_syntaxes: Sequence[str],
        max_pdu: int,
        max_associations: int,
        max_associations_per_ae: int,
        association_timeout_s: float,
        dimse_timeout_s: float,
        max_instance_size: int,
        implementation_class_uid: str,
        implementation_version_name: str,
        replace_duplicates: bool,
        tls: ListenerTls | None,
    ) -> ListenerConfig: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def ae_title(self) -> str: ...
    @property
    def check_called_aet(self) -> bool: ...
    @property
    def always_allow_echo(self) -> bool: ...
    @property
    def always_allow_store(self) -> bool: ...
    @property
    def check_modality_host(self) -> bool: ...
    @property
    def known(self) -> list[KnownAe]: ...
    @property
    def storage_classes(self) -> list[str]: ...
    @property
    def private_classes(self) -> bool: ...
    @property
    def find_classes(self) -> list[str]: ...
    @property
    def move_classes(self) -> list[str]: ...
    @property
    def retrieve_classes(self) -> list[str]: ...
    @property
    def transfer_syntaxes(self) -> list[str]: ...
    @property
    def max_pdu(self) -> int: ...
    @property
    def max_associations(self) -> int: ...
    @property
    def max_associations_per_ae(self) -> int: ...
    @property
    def association_timeout_s(self) -> float: ...
    @property
    def dimse_timeout_s(self) -> float: ...
    @property
    def max_instance_size(self) -> int: ...
    @property
    def implementation_class_uid(self) -> str: ...
    @property
    def implementation_version_name(self) -> str: ...
    @property
    def replace_duplicates(self) -> bool: ...
    @property
    def tls(self) -> ListenerTls | None: ...

# What a C-GET's selection gives the listener for each instance: (SOP Class UID, SOP Instance
# UID, stored transfer syntax, data set offset, manifest).
SelectedInstance = tuple[str, str, str, int, bytes]

@final
class DicomListener:
    """The DICOM listener, calling back into Python for what the archive decides; every
    callback but ``log`` and ``transcode`` takes (calling AE, address, SOP class of the
    model, transfer syntax, identifier) first."""

    def __new__(
        cls,
        store: Store,
        config: ListenerConfig,
        *,
        log: Callable[[int, str], object],
        select: Callable[[str, str, str, str, bytes], tuple[int, Sequence[SelectedInstance]]],
        transcode: Callable[[str, str, str, int, bytes, list[str]], tuple[str, bytes]],
        find: Callable[[str, str, str, str, bytes], tuple[int, Iterable[bytes]]],
        move_to: Callable[
            [str, str, str, str, bytes, str, int], tuple[int, Sequence[str], Iterable[int]]
        ],
        commit: Callable[[str, str, str, str, bytes, int | None], int],
    ) -> DicomListener: ...
    @property
    def address(self) -> tuple[str, int]: ...
    @property
    def tls_address(self) -> tuple[str, int] | None: ...
    def stop(self) -> None: ...

# The SCU --------------------------------------------------------------------------------------

@final
class Receiver:
    """Where a C-GET's sub-operations are stored (the listener's receive path)."""

    def __new__(
        cls,
        store: Store,
        *,
        implementation_class_uid: str,
        implementation_version_name: str,
        replace_duplicates: bool = False,
    ) -> Receiver: ...

@final
class Retrieved:
    """What a C-GET or C-MOVE came to."""

    @property
    def status(self) -> int: ...
    @property
    def remaining(self) -> int: ...
    @property
    def completed(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def warning(self) -> int: ...
    @property
    def failed_uids(self) -> list[str]: ...
    @property
    def stored(self) -> int: ...
    @property
    def refused(self) -> list[tuple[str, str]]: ...
    @property
    def unproposed(self) -> list[tuple[str, str]]: ...

# Request keys: (tag, VR, value).
Keys = Sequence[tuple[int, str, str]]

@final
class ScuTls:
    """DICOM TLS for the associations we request: the CAs a peer's certificate must chain to,
    and our certificate and key for a peer that asks for one."""

    def __new__(
        cls,
        *,
        ca: StrPath,
        certificate: StrPath | None = None,
        private_key: StrPath | None = None,
    ) -> ScuTls: ...

@final
class ScuAssociation:
    """An association we requested, kept open for C-FIND, C-GET and C-MOVE requests."""

    def __new__(
        cls,
        host: str,
        port: int,
        called_ae: str,
        calling_ae: str,
        contexts: Sequence[tuple[str, Sequence[str]]],
        scp_roles: Sequence[str] = ...,
        *,
        max_pdu: int,
        acse_timeout_s: float,
        timeout_s: float,
        implementation_class_uid: str,
        implementation_version_name: str,
        tls: ScuTls | None = None,
    ) -> ScuAssociation: ...
    @property
    def is_open(self) -> bool: ...
    def find(
        self,
        model: str,
        level: str,
        keys: Keys,
        wanted: Sequence[tuple[str, int, str]],
        limit: int | None = None,
    ) -> tuple[int, list[dict[str, str]]]: ...
    def get(
        self,
        receiver: Receiver,
        model: str,
        level: str,
        keys: Keys,
        studies: Sequence[str] = ...,
        as_held: bool = ...,
    ) -> Retrieved: ...
    def move(self, model: str, level: str, keys: Keys, destination: str) -> Retrieved: ...
    def release(self) -> None: ...
    def abort(self) -> None: ...

__all__ = [
    "KNOWN_VRS",
    "LONG_LENGTH_VRS",
    "STATUS",
    "AssociationError",
    "ChunkReader",
    "Collected",
    "Damage",
    "DamagedError",
    "DicomListener",
    "GcReport",
    "HistoryEvent",
    "InstanceWriter",
    "KnownAe",
    "ListenerConfig",
    "ListenerTls",
    "ManifestBlob",
    "ManifestError",
    "ManifestInfo",
    "ManifestSegment",
    "RebuildReport",
    "Receiver",
    "Retrieved",
    "ScanError",
    "Scanner",
    "ScuAssociation",
    "ScuTls",
    "Store",
    "StoreStats",
    "VerifyReport",
    "annotations",
    "encode_jpeg_lossless",
    "file_meta",
    "manifest_hash",
    "manifest_info",
]
