"""The archive: a root directory holding the pack store and the index, and every operation
that spans the two (ingest, export, delete, verify; reindex, gc and repack in ``maintenance``).

Layout of a root: ``packs/`` (append-only pack files), ``blobs/`` (the blob index, LMDB, owned
by the Rust store), ``index/`` (the patient/study/series/instance index, LMDB; or the index
is on PostgreSQL, ``[index] backend``, and ``store-id`` names this pack store there) and
``LOCK``.
The packs are the archive's log. An instance is acknowledged once its blobs and its manifest
record (everything its index entry is made from) are fsynced in a pack. Every writer — the
DICOM listener and our C-GETs in Rust, import, STOW-RS, uploads and migrations here, and
``delete``'s tombstones — appends through one commit path, the Rust journal (one group commit,
one fsync policy), and the index's applier (``applier``) indexes the log in its order; a read
waits until what was acknowledged before it is applied. The LMDB indexes are not fsynced per
commit but checkpointed every ``sync_interval_ms``; whatever of the log a crash took from them
is replayed from the packs when the archive opens. So a crash at any point leaves every
acknowledged instance indexed.
"""

from __future__ import annotations

import io
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from dicomvault import _native
from dicomvault.audit import AuditTrail
from dicomvault.audit.trail import Patient, about
from dicomvault.config import Settings
from dicomvault.dicom.acceptance import (
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    Refusal,
    refusal,
    uid_of,
)
from dicomvault.dicom.values import decode_elements
from dicomvault.index import CommitOutcome, Index, InstanceEntry, Level, Record
from dicomvault.index.backends import open_index
from dicomvault.index.records import BEAT_INTERVAL, NodeSeen
from dicomvault.metrics import Counter, Histogram
from dicomvault.net.status import CANNOT_UNDERSTAND, OUT_OF_RESOURCES
from dicomvault.store import maintenance
from dicomvault.store.applier import Applier, IndexUnavailable, Pending
from dicomvault.store.backends import StorageError, open_storage, storage_identity
from dicomvault.store.maintenance import PackRewritten, RepackReport, RewriteReport

if TYPE_CHECKING:
    from pydicom import Dataset

log = logging.getLogger("dicomvault.archive")

# What became of an instance handed to the archive: what the index did with it (see
# ``CommitStatus``), "rejected" (not a readable data set), "not-dicom", or "failed": the
# archive could not store it (a full disk, an I/O error, an index that cannot take it).
IngestStatus = Literal[
    "stored", "duplicate", "different", "replaced", "rejected", "not-dicom", "failed"
]

# The scanner says this when a file does not even start like DICOM.
_NOT_DICOM = "not DICOM"

# A check of what the writer ingested beyond ``acceptance.refusal`` (a STOW-RS to one study).
Check = Callable[[Mapping[str, Any]], Refusal | None]


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    """What became of one file or data set handed to the archive."""

    status: IngestStatus
    key: str | None = None
    size: int = 0
    reason: str | None = None
    # Why it was refused or failed, as a C-STORE status (STOW-RS's Failure Reason).
    code: int | None = None
    # Its SOP Class and Instance UIDs, when it could be read.
    uids: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Defect:
    """An instance (or a place in the packs) that failed verification, and why."""

    key: str
    reason: str


# The applier refuses instances before they are acknowledged once the index map has less room
# than this left: what was acknowledged must always fit.
INDEX_HEADROOM = 16 << 20


def final(outcome: IngestOutcome, commit: Pending[CommitOutcome] | None) -> IngestOutcome:
    """The outcome once the commit (if any) is durable, with its key; "failed" when the
    commit could not be made (its reason says why)."""
    if commit is None:
        return outcome
    try:
        result = commit.result()
    except (OSError, IndexUnavailable) as e:
        return IngestOutcome(
            "failed", size=outcome.size, reason=str(e), code=OUT_OF_RESOURCES, uids=outcome.uids
        )
    return IngestOutcome(result.status, key=result.key, size=outcome.size, uids=outcome.uids)


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _annotations(entry: InstanceEntry) -> bytes:
    return _native.annotations(entry.received_at, entry.source, entry.replace)


class Archive:
    """An open archive. Thread-safe; close it (or use ``with``) to flush and release it."""

    # Any backend of the ``Index`` protocol (``[index] backend``: LMDB or PostgreSQL). Only the
    # archive (and the rest of ``store/``) talks to it and to the pack store: the services read
    # through the door below.
    index: Index

    def __init__(
        self, settings: Settings, *, exclusive: bool = False, serving: str | None = None
    ) -> None:
        """``exclusive``: for maintenance that rewrites packs; ``serving``: the address
        ``serve`` answers DICOM at (StorageError when, on object storage, another process
        serves under this node's number)."""
        storage = settings["storage"]
        self.settings = settings
        self.root = settings.root
        self.root.mkdir(parents=True, exist_ok=True)
        if storage["on_duplicate"] not in ("keep", "replace"):
            raise ValueError(
                f"[storage] on_duplicate must be keep or replace, not {storage['on_duplicate']!r}"
            )
        self.replace_duplicates = storage["on_duplicate"] == "replace"
        self.store = open_storage(settings, exclusive=exclusive)
        self.node = int(storage["node"])
        self._opened = time.time()
        for message in self.store.recovery:
            log.warning("store recovery: %s", message)
        # Before the replay: instances it applies get their audit records then.
        self.audit = AuditTrail(self.root, settings["audit"])
        self.index = open_index(
            settings,
            store=storage_identity(settings),
            barrier=self._barrier,
            same_data_set=self.store.same_data_set,
        )
        # On object storage several nodes share the archive, and their reads do not wait for
        # this node's backlog: an instance is acknowledged once indexed.
        self.store.acknowledge_indexed(self.store.on_objects)
        # Why instances are refused before they are acknowledged (see ``check_headroom``).
        self._refusal: str | None = None
        self._stop_beating = threading.Event()
        self._heartbeat: threading.Thread | None = None
        # A node's log is its own to replay: a command run as a node that serves leaves it to
        # that node, whose applier would race its replay (an instance just deleted there could
        # come back); and two processes serving as one node would stop each other's writes.
        beating = self.node_beating()
        if serving is not None and beating is not None and beating.address != serving:
            self.index.close()
            self.audit.close()
            raise StorageError(
                f"node {beating.node} is serving at {beating.address} (beat "
                f"{beating.seen_ago:.0f} s ago): give this process another [storage] node"
            )
        if serving is not None or beating is None:
            maintenance.settle_marks(self)
            replayed = self.replay(self.index.applied())
            if replayed:
                log.warning("replayed %d records of the pack log into the index", replayed)
        # What this process ingested (C-STORE, STOW-RS, uploads, C-GET), for /metrics.
        self.ingested = Counter(
            "dicomvault_ingested_instances_total",
            "Instances committed by this process, by outcome (stored, duplicate).",
            ["outcome"],
        )
        self.ingested_bytes = Counter(
            "dicomvault_ingested_bytes_total", "Bytes of the instances this process stored."
        )
        self.refused = Counter(
            "dicomvault_refused_instances_total",
            "Files or uploads this process refused (not DICOM, unreadable), by status.",
            ["status"],
        )
        self.commit_seconds = Histogram(
            "dicomvault_commit_seconds",
            "Duration of group commits: fsync of the packs and the index transaction.",
        )
        # Set at close: an applier retrying a failed batch gives up (replayed at the next open).
        self.closing = threading.Event()
        self.check_headroom()
        self._applier = Applier(self)
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop,
            args=(int(storage["sync_interval_ms"]) / 1000,),
            name="checkpoint",
            daemon=True,
        )
        self._checkpointer.start()

    def checkpoint(self) -> None:
        """Makes the indexes durable up to now (and, in batch mode, the packs)."""
        self.store.sync()
        self.index.sync()

    def _checkpoint_loop(self, interval: float) -> None:
        while not self.closing.wait(interval):
            try:
                self.checkpoint()
            except OSError as e:  # the next commit reports a failing disk to its writer
                log.error("checkpoint failed: %s", e)

    def close(self) -> None:
        self._stop_beating.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=10)  # an index out of reach: the row goes silent
        self.store.close_log()  # commits what is still queued, then takes no more
        self.closing.set()
        self._applier.join()
        self._checkpointer.join()
        try:
            self.checkpoint()
        except OSError as e:  # a full or failing disk: the packs hold what was committed
            sync = self.settings["storage"]["sync"]
            log.error(
                "the last checkpoint failed (%s): the index replays the pack log at the next "
                "open%s",
                e,
                ""
                if sync == "always"
                else f"; with sync = {sync}, what was stored since the "
                "last fsync may be lost on a power cut",
            )
        self.index.close()
        self.audit.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # Ingest -------------------------------------------------------------------------------

    def entry(
        self,
        ingested: Mapping[str, Any],
        source: str,
        received_at: str | None = None,
        *,
        replace: bool | None = None,
    ) -> InstanceEntry:
        """The index entry for what the store's writer returned; ``replace`` as
        ``[storage] on_duplicate`` says unless given (a replay gives what the log says)."""
        tags = decode_elements(ingested["elements"])
        meta = decode_elements(ingested["meta"])
        if "MediaStorageSOPInstanceUID" in meta:
            tags["MediaStorageSOPInstanceUID"] = meta["MediaStorageSOPInstanceUID"]
        tags["TransferSyntaxUID"] = ingested["transfer_syntax"]
        return InstanceEntry(
            tags=tags,
            manifest=ingested["manifest"],
            size=ingested["size"],
            received_at=received_at or utc_now(),
            source=source,
            replace=self.replace_duplicates if replace is None else replace,
        )

    def index_entries(
        self, entries: Sequence[InstanceEntry], positions: list[tuple[int, int]]
    ) -> list[CommitOutcome]:
        """For the applier: indexes instances durable in the log at ``positions``, in one
        transaction that records them applied."""
        started = time.perf_counter()
        outcomes = self.index.commit(entries, before_commit=lambda _new: positions)
        self.commit_seconds.observe(time.perf_counter() - started)
        for entry, outcome in zip(entries, outcomes, strict=True):
            self.ingested.inc(outcome.status)
            if outcome.status == "stored":
                self.ingested_bytes.inc(amount=entry.size)
        return outcomes

    def _barrier(self) -> None:
        """Before a read: returns once what was acknowledged before it is indexed;
        IndexUnavailable (rather than an answer without it) while the applier cannot."""
        stalled = self.store.log_barrier()
        if stalled is not None:
            raise IndexUnavailable(stalled)

    def check_headroom(self) -> None:
        """Refuses instances before they are acknowledged while the index map has less than
        ``INDEX_HEADROOM`` left (what was acknowledged must always fit); accepts them again
        once it has."""
        left = self.index.headroom()
        refusal = None
        if left < INDEX_HEADROOM:
            refusal = (
                f"the index map has {left >> 10} KiB left, less than the "
                f"{INDEX_HEADROOM >> 20} MiB kept in reserve: raise [index] map_size"
            )
        if refusal != self._refusal:
            if refusal is not None:
                log.error("refusing instances: %s", refusal)
            else:
                log.warning("the index map has room again: instances are accepted")
        self._refusal = refusal
        self.store.refuse_writes(refusal)

    def submit(self, entry: InstanceEntry) -> Pending[CommitOutcome]:
        """Queues an instance for the next group commit of the pack log; the index's outcome
        once it is durable and applied."""
        return self._applier.submit(
            lambda: self.store.submit_instance(entry.manifest, _annotations(entry)), entry
        )

    def ingest_file(
        self, path: Path, source: str | None = None
    ) -> tuple[IngestOutcome, Pending[CommitOutcome] | None]:
        """Streams a file into the store and queues it for commit. The outcome is final for
        rejected files; otherwise the future resolves once the instance is durable."""
        return self._committed(
            self._receive(
                lambda: self.store.ingest_file(str(path)), source or f"import:{path}", str(path)
            )
        )

    def ingest_chunks(
        self, chunks: Iterable[bytes], source: str, name: str, check: Check | None = None
    ) -> tuple[IngestOutcome, Pending[CommitOutcome] | None]:
        """``ingest_file`` for an instance arriving in pieces (an HTTP body): each piece goes
        into the store as it comes, so that nothing holds the instance whole (``name`` says
        what it was); an instance cut short is refused, as ``check`` refuses what it refuses."""
        return self._committed(self.receive_chunks(chunks, source, name, check))

    def receive_chunks(
        self, chunks: Iterable[bytes], source: str, name: str, check: Check | None = None
    ) -> tuple[IngestOutcome, InstanceEntry | None]:
        """``ingest_chunks`` without the commit: the instance's blobs are in the packs and
        its entry is returned, for the caller to ``submit`` (or not: then nothing references
        the blobs, and gc reclaims them) once it knows the whole request can be taken."""

        def ingest() -> _native.Ingested:
            writer = self.store.writer(allow_truncated=True)
            for chunk in chunks:
                writer.write(chunk)
            return writer.finish()

        return self._receive(ingest, source, name, check)

    def ingest_bytes(
        self, data: bytes, source: str, name: str, check: Check | None = None
    ) -> tuple[IngestOutcome, Pending[CommitOutcome] | None]:
        """``ingest_file`` for an instance held in memory."""
        return self.ingest_chunks((data,), source, name, check)

    def ingest_all(
        self, parts: Sequence[tuple[str, bytes]], source: str, check: Check | None = None
    ) -> list[IngestOutcome]:
        """Ingests (name, bytes) instances held in memory; every one is queued before any is
        waited for, so that they share group commits. The outcomes are final (durable)."""
        queued = [self.ingest_bytes(data, source, name, check) for name, data in parts]
        return [final(*q) for q in queued]

    def _committed(
        self, received: tuple[IngestOutcome, InstanceEntry | None]
    ) -> tuple[IngestOutcome, Pending[CommitOutcome] | None]:
        """What ``_receive`` took, queued for commit when it is to be stored."""
        outcome, entry = received
        return outcome, self.submit(entry) if entry is not None else None

    def _receive(
        self,
        ingest: Callable[[], _native.Ingested],
        source: str,
        name: str,
        check: Check | None = None,
    ) -> tuple[IngestOutcome, InstanceEntry | None]:
        try:
            self.store.check_space()
            ingested = ingest()
        except _native.ScanError as e:
            status: IngestStatus = "not-dicom" if _NOT_DICOM in str(e) else "rejected"
            self.refused.inc(status)
            return IngestOutcome(status, reason=str(e), code=CANNOT_UNDERSTAND), None
        except OSError as e:  # the archive's disk, not the instance
            self.refused.inc("failed")
            return IngestOutcome("failed", reason=f"{name}: {e}", code=OUT_OF_RESOURCES), None
        uids = (uid_of(ingested, SOP_CLASS_UID), uid_of(ingested, SOP_INSTANCE_UID))
        refused = refusal(ingested) or (check(ingested) if check is not None else None)
        if refused is not None:
            # Its blobs are in the packs, referenced by nothing: gc reclaims them.
            log.warning("%s refused: %s", name, refused.reason)
            self.refused.inc("rejected")
            return IngestOutcome(
                "rejected", reason=refused.reason, code=refused.status, uids=uids
            ), None
        entry = self.entry(ingested, source)
        return IngestOutcome("stored", size=ingested["size"], uids=uids), entry

    # Reading ------------------------------------------------------------------------------

    def resolve(self, value: str) -> list[Record]:
        """Records whose key or identifier (PatientID, AccessionNumber, a UID) is ``value``."""
        return self.index.lookup(value)

    def resolve_all(self, values: Iterable[str]) -> list[Record]:
        """The records each value names; LookupError naming the first that names none."""
        records = []
        for value in values:
            found = self.resolve(value)
            if not found:
                raise LookupError(value)
            records += found
        return records

    def records(
        self,
        level: Level,
        filters: Mapping[str, str],
        *,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Record]:
        """The records at ``level`` that C-FIND matching of ``filters`` selects."""
        return self.matched_records(level, self.matches(level, filters, limit=limit, offset=offset))

    def stats(self) -> dict[str, int]:
        """Counts and sizes from the index, storage use from the packs."""
        packs = self.store.stats()
        return {
            **self.index.stats(),
            "packs": packs.packs,
            "pack_bytes": packs.pack_bytes,
            "records": packs.records,
        }

    def instances(self, records: Sequence[Record] | None = None) -> Iterator[Record]:
        """Every instance under the given records (all instances when None)."""
        if records is None:
            yield from self.index.iter_level(Level.IMAGE)
            return
        seen: set[str] = set()
        for record in records:
            for instance in self.index.instances_under(record.level, record.key):
                if instance.key not in seen:
                    seen.add(instance.key)
                    yield instance

    def read(self, instance: Record, start: int = 0) -> bytes:
        return self.store.read(instance.instance_manifest(), start)

    def dataset(self, instance: Record, *, stop_before_pixels: bool = False) -> Dataset:
        """The instance decoded by pydicom (its File Meta included)."""
        import pydicom  # only here: decoding a whole data set is for the few who need it

        data = self.read(instance)
        return pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=stop_before_pixels)

    def export_path(self, instance: Record) -> PurePosixPath:
        """Where ``export`` writes the instance, relative to its directory:
        study/series/instance.dcm."""
        series = self.parent(instance)
        study_key = series.parent if series else None
        return PurePosixPath(_safe(study_key), _safe(instance.parent), _safe(instance.key) + ".dcm")

    def export(self, instance: Record, out_dir: Path) -> Path:
        """Writes the instance under ``out_dir``, byte-identical to what was received."""
        manifest = instance.instance_manifest()
        target = out_dir / self.export_path(instance)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.store.export(manifest, target)
        return target

    # The door -----------------------------------------------------------------------------
    # What the DICOM services, the web server, migrations and the commands need of the index
    # and the pack store beyond the reading above: they go through these, never to
    # ``index`` or ``store`` themselves (tests/store/test_door.py), so that another index
    # backend changes nothing outside ``store/`` and ``index/``.

    def writer(self) -> _native.InstanceWriter:
        """Streams a Part 10 instance into the pack store as it arrives (its blobs only):
        ``finish`` it, then ``submit`` its ``entry``. OSError below the free-space reserve."""
        self.store.check_space()
        return self.store.writer(allow_truncated=False)

    def receiver(
        self, implementation_class_uid: str, implementation_version_name: str
    ) -> _native.Receiver:
        """Where our C-GETs' sub-operations are stored: the listener's receive path, with
        the File Meta naming this implementation."""
        return _native.Receiver(
            self.store,
            implementation_class_uid=implementation_class_uid,
            implementation_version_name=implementation_version_name,
            replace_duplicates=self.replace_duplicates,
        )

    def listener(
        self, config: _native.ListenerConfig, host: Mapping[str, Callable[..., Any]]
    ) -> _native.DicomListener:
        """Starts the Rust DICOM listener on this archive's store: what it receives goes
        through the commit path to the applier; ``host`` holds its callbacks (log, select,
        transcode, find, move_to, commit: see ``_native.DicomListener``)."""
        return _native.DicomListener(self.store, config, **host)

    def record(self, level: Level, key: str) -> Record | None:
        """The patient, study, series or instance with this record key, or None."""
        return self.index.get(level, key)

    def records_by_key(self, level: Level, keys: Sequence[str]) -> dict[str, Record]:
        """The records at ``level`` with these record keys, by key (those indexed): one read
        of the index, not one round trip per key."""
        return self.index.get_many(level, keys)

    def parent(self, record: Record) -> Record | None:
        """The record one level up (an instance's series, a series' study, a study's
        patient); None for a patient, or a parent no longer indexed."""
        level = record.level.parent
        if level is None or record.parent is None:
            return None
        return self.index.get(level, record.parent)

    def children(self, record: Record) -> list[Record]:
        """The records one level down (a patient's studies, a study's series, a series'
        instances), in key order; none for an instance."""
        return self.index.children(record.level, record.key)

    def matches(
        self,
        level: Level,
        filters: Mapping[str, str],
        return_keys: Iterable[str] = (),
        *,
        limit: int | None = None,
        offset: int = 0,
    ) -> Iterator[dict[str, str]]:
        """C-FIND matching of ``filters`` at ``level`` on the attributes the index keeps
        (``Finder`` matches the others in the stored headers), person names as ``[index]
        case_insensitive_pn`` says: each match has its ``return_keys``, its unique keys and
        ``_key``, its record key."""
        return self.index.find(
            level,
            filters,
            return_keys,
            case_insensitive_pn=bool(self.settings["index"]["case_insensitive_pn"]),
            limit=limit,
            offset=offset,
        )

    def matched_records(self, level: Level, matches: Iterable[Mapping[str, Any]]) -> list[Record]:
        """The records of C-FIND matches at ``level`` (by their ``_key``) that are still
        indexed."""
        return [r for m in matches if (r := self.index.get(level, m["_key"]))]

    def wait_until_indexed(self) -> None:
        """Returns once every instance acknowledged before the call is indexed, so that what
        reads the index next answers with it; IndexUnavailable while it cannot be."""
        self.index.barrier()

    def unindexed(self) -> dict[str, dict[str, Any]]:
        """Records of the pack log whose instance could not be indexed (its header cannot be
        read): manifest hash -> {"pack", "end", "why"}; storing the instance again repairs
        it."""
        return self.index.unindexed()

    def audit_subjects(self, records: Iterable[Record]) -> tuple[list[Patient], list[str]]:
        """The patients and the studies that ``records`` belong to, as audit records name
        them."""
        return about(self.index, records)

    def check_intact(self, manifest: bytes) -> None:
        """Raises DamagedError unless every blob of the stored instance with this manifest
        reads back intact (OSError when the store cannot read it)."""
        self.store.check(manifest)

    def chunks(self, manifest: bytes, start: int = 0) -> Iterator[bytes]:
        """The stored instance's file from byte ``start``, as it was received, a blob at a
        time and unchecked (``check_intact`` first to send nothing damaged)."""
        return self.store.chunks(manifest, start)

    # Maintenance --------------------------------------------------------------------------

    def delete(self, record: Record) -> list[Record]:
        """Deletes a record and everything below it (emptied ancestors go too): a tombstone
        per instance through the commit path, each applied by the index in log order, so
        that rebuilding or replaying the index does not bring them back. Returns the deleted
        instances."""
        instances = [i for i in self.instances([record]) if i.manifest is not None]
        if not instances:  # nothing the log holds: the record is the index's alone
            return self.index.delete(record.level, record.key)

        def tombstone(instance: Record) -> Callable[[], int]:
            return lambda: self.store.submit_tombstone(instance.manifest or b"", instance.key)

        pending = [self._applier.submit(tombstone(i), i.key) for i in instances]
        removed: list[Record] = []
        for p in pending:
            removed += p.result()
        return removed

    def verify(self) -> tuple[_native.VerifyReport, list[Defect]]:
        """Re-reads and re-hashes every record of the packs (on S3: every segment, and every
        object a live manifest references), then checks every instance's
        manifest and index record. Returns the store's report and the defects: each damaged
        instance (naming its damaged blob), each damaged record no indexed instance accounts
        for (a manifest or tombstone record, a record superseded by a valid copy, an
        unreadable stretch), each record of the log that could not be indexed."""
        report = self.store.verify()
        damaged = report.damaged
        by_blob = {d.hash: d for d in damaged if d.hash is not None and not d.superseded}
        defects: list[Defect] = []
        named: set[str] = set()
        for instance in self.index.iter_level(Level.IMAGE):
            reason = self._instance_defect(instance, by_blob, named)
            if reason:
                defects.append(Defect(instance.key, reason))
        for level in (Level.SERIES, Level.STUDY):
            parent_level = Level.STUDY if level is Level.SERIES else Level.PATIENT
            for record in self.index.iter_level(level):
                if record.parent is None or self.index.get(parent_level, record.parent) is None:
                    defects.append(Defect(record.key, f"{level.value} record has no parent"))
        for d in damaged:
            if d.hash not in named:
                defects.append(Defect(d.place, d.message))
        for manifest_hash, place in self.index.unindexed().items():
            defects.append(
                Defect(
                    f"pack {place['pack']} before byte {place['end']}",
                    f"the instance of manifest {manifest_hash} cannot be indexed: "
                    f"{place['why']} (storing it again repairs it)",
                )
            )
        return report, defects

    def _instance_defect(
        self, instance: Record, damaged: Mapping[str, _native.Damage], named: set[str]
    ) -> str | None:
        if instance.manifest is None:
            return "index record has no manifest"
        try:
            info = _native.manifest_info(instance.manifest)
        except _native.ManifestError as e:
            return str(e)
        if info.size != instance.size:
            return f"index says {instance.size} bytes, manifest {info.size}"
        for blob in info.blobs:
            if blob.hash in damaged:
                named.add(blob.hash)
                return f"damaged blob: {damaged[blob.hash].message}"
        missing = self.store.missing_blobs(instance.manifest)
        if missing:
            return f"blob {missing[0]} is missing from the store"
        if self.index.get(Level.SERIES, instance.parent or "") is None:
            return "instance record has no series"
        return None

    # Upkeep of the log and the index (``maintenance``) ------------------------------------

    def replay(
        self, applied: dict[int, int], *, audit: bool = True, every_node: bool = False
    ) -> int:
        """Applies the log past ``applied`` to the index (``maintenance.replay``)."""
        return maintenance.replay(self, applied, audit=audit, every_node=every_node)

    def reindex(self) -> tuple[int, list[_native.Damage]] | None:
        """Rebuilds the index from the log alone (``maintenance.reindex``)."""
        return maintenance.reindex(self)

    def gc(self, progress: Callable[[PackRewritten], None] | None = None) -> RewriteReport:
        """Rewrites the packs, keeping what indexed instances reference (``maintenance.gc``)."""
        return maintenance.gc(self, progress)

    def collect(self, grace: float) -> _native.Collected | None:
        """gc on S3 while the nodes serve (``maintenance.collect``)."""
        return maintenance.collect(self, grace)

    def repack(
        self, compression: str, level: int, progress: Callable[[PackRewritten], None] | None = None
    ) -> RepackReport:
        """Rewrites every pack, every blob stored anew (``maintenance.repack``)."""
        return maintenance.repack(self, compression, level, progress)

    # Nodes ---------------------------------------------------------------------------------

    def serve_heartbeat(self, address: str) -> None:
        """This node serves at ``address``: on object storage, its heartbeat in the shared
        index every few seconds, for the other nodes and ``nodes``, until the archive closes
        (it then records that the node stopped). On a thread of its own, so that an index out
        of reach holds up nothing; a failing beat is logged once, then its recovery."""
        if not self.store.on_objects:
            return

        def run() -> None:
            failing = False
            while not self._stop_beating.is_set():
                try:
                    self.index.beat(self.node, address, self._opened)
                    if failing:
                        log.warning("heartbeat recorded again")
                    failing = False
                except IndexUnavailable as e:
                    if not failing:
                        log.warning("heartbeat not recorded (retrying): %s", e)
                    failing = True
                self._stop_beating.wait(BEAT_INTERVAL)
            try:
                self.index.leave(self.node)
            except IndexUnavailable as e:
                log.warning("could not record that this node stopped: %s", e)

        self._heartbeat = threading.Thread(target=run, name="heartbeat", daemon=True)
        self._heartbeat.start()

    def node_beating(self) -> NodeSeen | None:
        """On object storage, the serving node that beats under this process's number."""
        if not self.store.on_objects:
            return None
        try:
            seen = self.index.nodes()
        except IndexUnavailable:
            return None  # the replay then fails as it would have
        return next((n for n in seen if n.node == self.node and n.serving), None)


def _safe(key: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9._~-]", "_", key or "_")
