"""The archive's DICOM server: C-ECHO, C-STORE, C-FIND, C-MOVE and C-GET as SCP.

Two engines share the port. The Rust listener (``_native.StorageListener``, see
``rust/src/scp.rs``) accepts every connection and serves, by itself, the associations that
propose no C-FIND or C-MOVE model (Verification, Storage, C-GET): data sets stream from the
socket into the pack store and each C-STORE is answered once its group commit
(``_commit_received``) made it durable; a C-GET's instances stream from the store to the
socket, selected here (``_select_for_get``: access policy, identifier, query) and decoded here
when the peer cannot take them as stored (``_transcode``). An association proposing C-FIND or
C-MOVE is handed over, unread, to pynetdicom (``_hand_off``), whose handlers here serve C-FIND,
C-MOVE and C-GET, and C-STORE and C-ECHO when they come on the same association. Every
association and every request is logged on one line.
"""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, _config, evt
from pynetdicom.dsutils import decode
from pynetdicom.events import Event

from dicomvault import _native
from dicomvault.config import Settings
from dicomvault.index import Level
from dicomvault.net import contexts
from dicomvault.net.outbound import StoredInstance, install
from dicomvault.net.policy import AccessPolicy
from dicomvault.net.query import (
    GET_MODELS,
    IdentifierError,
    read_identifier,
    response_identifier,
)
from dicomvault.net.status import (
    CANCEL,
    CANNOT_UNDERSTAND,
    NOT_AUTHORIZED,
    OUT_OF_RESOURCES,
    PENDING,
    SUCCESS,
    UNABLE_TO_PROCESS,
)
from dicomvault.store import Archive

log = logging.getLogger("dicomvault.net")

# The largest PDU we accept (storescu sends at most 128 KiB whatever we allow).
MAX_PDU = 4 << 20

# pynetdicom logs every PDU at INFO; keep its own chatter to warnings.
logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def set_nodelay(event: Event) -> None:
    """Disables Nagle's algorithm on every association socket, ours and the peer's replies
    otherwise stall ~40 ms on delayed ACKs."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _peer(event: Event) -> tuple[str, str]:
    return event.assoc.requestor.ae_title.strip(), event.assoc.requestor.address


@dataclass
class _AssociationStats:
    started: float = field(default_factory=time.perf_counter)
    requests: int = 0


def store_received(archive: Archive, event: Event, source: str) -> int:
    """Stores a C-STORE request's data set as received (with the File Meta the storage
    listener would give it); returns the status to answer."""
    request = event.request
    meta = _native.file_meta(
        request.AffectedSOPClassUID,
        request.AffectedSOPInstanceUID,
        event.context.transfer_syntax,
        event.assoc.requestor.ae_title.strip(),
        contexts.IMPLEMENTATION_CLASS_UID,
        contexts.IMPLEMENTATION_VERSION_NAME,
    )
    writer = archive.store.writer(allow_truncated=False)
    try:
        writer.write(meta)
        writer.write(request.DataSet.getvalue())
        ingested = writer.finish()
    except _native.ScanError as e:
        log.error("C-STORE from %s: cannot understand the data set: %s", source, e)
        return CANNOT_UNDERSTAND
    except OSError as e:
        log.error("C-STORE from %s: storage failed: %s", source, e)
        return OUT_OF_RESOURCES
    try:
        archive.submit(archive.entry(ingested, source)).result()
    except Exception as e:  # the index or the disk: nothing was acknowledged
        log.error("C-STORE from %s: commit failed: %s", source, e)
        return OUT_OF_RESOURCES
    return SUCCESS


class Selected(NamedTuple):
    """An archived instance a retrieve selected: what sending it takes."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    dataset_offset: int
    manifest: bytes


def selected(record: Any) -> Selected:
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
    return StoredInstance(
        *instance[:4],
        lambda start: archive.store.chunks(instance.manifest, start),
        archive.root / "tmp",
    )


class DicomServer:
    """``dicomvault serve``'s DICOM listener over an open archive."""

    def __init__(self, archive: Archive, settings: Settings) -> None:
        install()
        # Requests are logged by us on one line each, not dumped by pynetdicom.
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False
        self.archive = archive
        self.dicom = settings["dicom"]
        self.policy = AccessPolicy(self.dicom, settings["modalities"])
        self.case_insensitive_pn = bool(settings["index"]["case_insensitive_pn"])
        self.aet = str(self.dicom["aet"])
        self.ae = AE(ae_title=self.aet)
        self.ae.implementation_class_uid = contexts.IMPLEMENTATION_CLASS_UID
        self.ae.implementation_version_name = contexts.IMPLEMENTATION_VERSION_NAME
        self.ae.maximum_associations = int(self.dicom["max_associations"])
        self.ae.maximum_pdu_size = MAX_PDU
        self.ae.require_called_aet = bool(self.dicom["check_called_aet"])
        self.ae.network_timeout = 60
        self.ae.dimse_timeout = 600
        for cx in contexts.scp_contexts():
            self.ae.add_supported_context(*cx)
        self._associations: dict[int, _AssociationStats] = {}
        self._lock = threading.Lock()
        self._server: Any = None
        self._listener: _native.StorageListener | None = None

    # Lifecycle ----------------------------------------------------------------------------

    def start(self) -> tuple[str, int]:
        handlers = [
            (evt.EVT_CONN_OPEN, set_nodelay),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_RELEASED, self._on_ended),
            (evt.EVT_ABORTED, self._on_ended),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_GET, self._on_get),
            (evt.EVT_C_MOVE, self._on_move),
        ]
        # pynetdicom serves the associations the listener hands over; its own socket (on an
        # ephemeral loopback port) is never given to anyone.
        self._server = self.ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self._listener = _native.StorageListener(
            self.archive.store,
            str(self.dicom["host"]),
            int(self.dicom["port"]),
            ae_title=self.aet,
            check_called_aet=bool(self.dicom["check_called_aet"]),
            always_allow_echo=bool(self.dicom["always_allow_echo"]),
            always_allow_store=bool(self.dicom["always_allow_store"]),
            check_modality_host=bool(self.dicom["check_modality_host"]),
            known=self.policy.listener_rules(),
            storage_classes=contexts.storage_sop_classes(),
            retrieve_classes=list(GET_MODELS),
            handed_off_classes=contexts.query_retrieve_sop_classes(exclude=GET_MODELS),
            transfer_syntaxes=contexts.accepted_syntaxes(),
            max_pdu=MAX_PDU,
            max_associations=int(self.dicom["max_associations"]),
            timeout_s=float(self.ae.network_timeout),
            implementation_class_uid=contexts.IMPLEMENTATION_CLASS_UID,
            implementation_version_name=contexts.IMPLEMENTATION_VERSION_NAME,
            commit=self._commit_received,
            hand_off=self._hand_off,
            log=log.log,
            select=self._select_for_get,
            transcode=self._transcode,
        )
        host, port = self._listener.address
        log.info("DICOM listener %s on %s:%d", self.aet, host, port)
        return host, port

    def stop(self) -> None:
        """Stops accepting; associations in progress end, what they acknowledged is durable."""
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.ae.shutdown()

    def _hand_off(self, fd: int, host: str, port: int) -> None:
        self._server.process_request(socket.socket(fileno=fd), (host, port))

    def _commit_received(self, items: list[dict]) -> list[int]:
        """One group commit for instances the listener received: a status for each."""
        try:
            entries = [self.archive.entry(i, f"{i['calling_ae']}@{i['address']}") for i in items]
            self.archive.commit(entries)
        except Exception as e:  # the index or the disk: nothing of the batch is acknowledged
            log.error("commit of %d received instances failed: %s", len(items), e)
            return [OUT_OF_RESOURCES] * len(items)
        return [SUCCESS] * len(items)

    def _select_for_get(
        self, calling_ae: str, address: str, model: str, transfer_syntax: str, identifier: bytes
    ) -> tuple[int, list[Selected]]:
        """For the listener's C-GET: a status and, when it is Success, each instance to send
        as (SOP Class UID, SOP Instance UID, stored syntax, data set offset, manifest)."""
        if not self._allowed_for(calling_ae, address, "get"):
            return NOT_AUTHORIZED, []
        syntax = UID(transfer_syntax)
        try:
            dataset = decode(io.BytesIO(identifier), syntax.is_implicit_VR, syntax.is_little_endian)
            level, filters, _ = read_identifier(dataset, model)
        except IdentifierError as e:
            log.error("C-GET: %s", e)
            return e.status, []
        except Exception as e:  # pydicom's decoding errors have many types
            log.error("C-GET: unreadable identifier: %s", e)
            return UNABLE_TO_PROCESS, []
        return SUCCESS, self._matching(level, filters)

    def _transcode(
        self,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax: str,
        dataset_offset: int,
        manifest: bytes,
        accepted: list[str],
    ) -> tuple[str, bytes]:
        """For the listener's C-GET: the data set decoded into a native syntax the peer took."""
        instance = Selected(
            sop_class_uid, sop_instance_uid, transfer_syntax, dataset_offset, manifest
        )
        syntax, dataset = outbound(self.archive, instance).transcoded(accepted)
        return str(syntax), dataset

    # Logging ------------------------------------------------------------------------------

    def _on_accepted(self, event: Event) -> None:
        with self._lock:
            self._associations[id(event.assoc)] = _AssociationStats()
        aet, host = _peer(event)
        log.info("association from %s@%s accepted", aet, host)

    def _on_ended(self, event: Event) -> None:
        with self._lock:
            stats = self._associations.pop(id(event.assoc), _AssociationStats())
        aet, host = _peer(event)
        how = "released" if event.event is evt.EVT_RELEASED else "aborted"
        log.info(
            "association from %s@%s %s after %.3f s, %d requests",
            aet,
            host,
            how,
            time.perf_counter() - stats.started,
            stats.requests,
        )

    def _logged(
        self, event: Event, command: str, started: float, status: int, detail: str = ""
    ) -> None:
        with self._lock:
            stats = self._associations.get(id(event.assoc))
            if stats:
                stats.requests += 1
        aet, host = _peer(event)
        log.info(
            "%s from %s@%s: status 0x%04X in %.1f ms%s",
            command,
            aet,
            host,
            status,
            (time.perf_counter() - started) * 1e3,
            f" ({detail})" if detail else "",
        )

    def _allowed(self, event: Event, service: str) -> bool:
        return self._allowed_for(*_peer(event), service)

    def _allowed_for(self, aet: str, host: str, service: str) -> bool:
        if self.policy.allows(aet, host, service):
            return True
        log.warning("%s from %s@%s refused: not allowed for this AE", service.upper(), aet, host)
        return False

    # Services -----------------------------------------------------------------------------

    def _on_echo(self, event: Event) -> int:
        started = time.perf_counter()
        status = SUCCESS if self._allowed(event, "echo") else NOT_AUTHORIZED
        self._logged(event, "C-ECHO", started, status)
        return status

    def _on_store(self, event: Event) -> int:
        started = time.perf_counter()
        aet, host = _peer(event)
        if not self._allowed(event, "store"):
            status = NOT_AUTHORIZED
        else:
            status = store_received(self.archive, event, f"{aet}@{host}")
        self._logged(event, "C-STORE", started, status, event.request.AffectedSOPInstanceUID)
        return status

    def _select(self, event: Event) -> tuple[Level, dict[str, str], list[str]]:
        identifier: Dataset = event.identifier
        return read_identifier(identifier, event.request.AffectedSOPClassUID)

    def _on_find(self, event: Event) -> Iterator[tuple[int, Dataset | None]]:
        started = time.perf_counter()
        status, count = SUCCESS, 0
        try:
            if not self._allowed(event, "find"):
                status = NOT_AUTHORIZED
                yield status, None
                return
            level, filters, requested = self._select(event)
            matches = self.archive.index.find(
                level, filters, requested, case_insensitive_pn=self.case_insensitive_pn
            )
            for match in matches:
                if event.is_cancelled:
                    status = CANCEL
                    yield status, None
                    return
                count += 1
                yield PENDING, response_identifier(match, level, requested, self.aet)
        except IdentifierError as e:
            status = e.status
            log.error("C-FIND: %s", e)
            yield status, None
        finally:
            self._logged(event, "C-FIND", started, status, f"{count} matches")

    def _instances(self, event: Event) -> list[StoredInstance]:
        level, filters, _ = self._select(event)
        return [outbound(self.archive, s) for s in self._matching(level, filters)]

    def _matching(self, level: Level, filters: dict[str, str]) -> list[Selected]:
        """The instances a retrieve selects."""
        keys = [m["_key"] for m in self.archive.index.find(level, filters)]
        records = [r for k in keys if (r := self.archive.index.get(level, k))]
        return [selected(record) for record in self.archive.instances(records)]

    def _on_get(self, event: Event) -> Iterator[Any]:
        started = time.perf_counter()
        status, instances = SUCCESS, []
        try:
            if not self._allowed(event, "get"):
                status = NOT_AUTHORIZED
                yield 1
                yield status, None
                return
            instances = self._instances(event)
            yield len(instances)
            for instance in instances:
                if event.is_cancelled:
                    status = CANCEL
                    yield status, None
                    return
                yield PENDING, instance
        except IdentifierError as e:
            status = e.status
            yield 1
            yield status, None
        finally:
            self._logged(event, "C-GET", started, status, f"{len(instances)} instances")

    def _on_move(self, event: Event) -> Iterator[Any]:
        started = time.perf_counter()
        raw = event.move_destination
        destination_aet = (
            raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
        ).strip()
        status, instances = SUCCESS, []
        try:
            if not self._allowed(event, "move"):
                status = NOT_AUTHORIZED
                raise PermissionError("C-MOVE not allowed for this AE")
            destination = self.policy.by_aet(destination_aet)
            if destination is None:
                status = 0xA801
                log.error("C-MOVE to unknown destination %r", destination_aet)
                yield None, None
                return
            instances = self._instances(event)
            needed = contexts.for_instances(instances)
            yield (
                destination.host,
                destination.port,
                {"contexts": needed, "ae_title": destination.aet},
            )
            yield len(instances)
            for instance in instances:
                if event.is_cancelled:
                    status = CANCEL
                    yield status, None
                    return
                yield PENDING, instance
        finally:
            self._logged(
                event, "C-MOVE", started, status, f"{len(instances)} instances to {destination_aet}"
            )
