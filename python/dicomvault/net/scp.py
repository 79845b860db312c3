"""The archive's DICOM server: C-ECHO, C-STORE, C-FIND, C-MOVE and C-GET as SCP.

The Rust listener (``_native.DicomListener``, see ``rust/src/scp.rs``) owns every association:
negotiation, PDUs, DIMSE, C-STORE data sets streamed into the pack store (durable in the pack
log before any C-STORE-RSP, indexed by the archive's applier) and C-GET instances streamed out
of it. This module is its host, where the decisions live: access policy, identifiers and the
index's query engine answer C-FIND (``_find``) and select what C-GET and C-MOVE retrieve
(``_select``); the transcoder gives what a peer cannot take as stored (``_transcode``); C-MOVE's
sub-operations go to the destination over an association made here with pynetdicom as SCU
(``_move``). C-FIND and the retrieves select through one ``Finder`` (what the index does not
keep is read from the stored headers). The listener logs every association and request on a line.
"""

from __future__ import annotations

import io
import logging
import select
import threading
from collections.abc import Iterator

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.dsutils import decode

from dicomvault import _native
from dicomvault.audit import Who
from dicomvault.audit.trail import patient_of
from dicomvault.config import Settings
from dicomvault.net import contexts, vocabulary
from dicomvault.net.commitment import CommitmentScp
from dicomvault.net.listener import listener_config, start_listener
from dicomvault.net.outbound import Selected, StoredInstance, install, outbound, selected
from dicomvault.net.policy import AccessPolicy
from dicomvault.net.query import (
    FIND_MODELS,
    GET_MODELS,
    MOVE_MODELS,
    IdentifierError,
    encode_identifier,
    read_identifier,
)
from dicomvault.net.scu import set_nodelay, tls_arguments
from dicomvault.net.status import (
    MOVE_DESTINATION_UNKNOWN,
    NOT_AUTHORIZED,
    OUT_OF_RESOURCES,
    OUT_OF_RESOURCES_MATCHES,
    SUB_OPERATION_FAILED,
    SUCCESS,
    UNABLE_TO_PROCESS,
)
from dicomvault.store import Archive
from dicomvault.store.archive import IndexUnavailable
from dicomvault.store.finder import Finder

log = logging.getLogger("dicomvault.net")

# What the index is asked for besides a query's keys: who the audit trail names.
AUDITED = ("PatientID", "IssuerOfPatientID", "PatientName", "StudyInstanceUID")
# How often a C-MOVE's watch of its requestor checks whether to stop watching.
WATCH_INTERVAL_MS = 200

# pynetdicom logs every PDU at INFO; keep its own chatter to warnings.
logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def _decoded_identifier(service: str, identifier: bytes, syntax: UID) -> Dataset | None:
    try:
        return decode(io.BytesIO(identifier), syntax.is_implicit_VR, syntax.is_little_endian)
    except Exception as e:  # pydicom's decoding errors have many types
        log.error("%s: unreadable identifier: %s", service, e)
        return None


def abort_now(assoc: Association) -> None:
    """Aborts an association we requested and wakes whatever waits on it for a response:
    pynetdicom wakes such a wait when the peer aborts (with its (None, None) message) but
    not when we do, and it would wait out the DIMSE timeout."""
    assoc.abort()
    assoc.dimse.msg_queue.put((None, None))


class RequestorWatch:
    """Watches a C-MOVE requestor's socket while its sub-operations go to the destination:
    anything it sends (a C-CANCEL, an A-ABORT) or the end of its connection aborts the
    association with the destination at once, so that a slow or silent destination does not
    keep the work going; the listener reads what arrived once the host returns."""

    def __init__(self, fd: int, assoc: Association) -> None:
        self.spoke = threading.Event()
        self._done = threading.Event()
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR | select.POLLRDHUP)
        self._assoc = assoc
        self._thread = threading.Thread(target=self._watch, name="c-move-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.is_set():
            if self._poll.poll(WATCH_INTERVAL_MS):
                self.spoke.set()
                log.warning("C-MOVE: the requestor spoke or left: its sub-operations end")
                abort_now(self._assoc)
                return

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def _sub_operations(
    assoc: Association, instances: list[StoredInstance], requestor_fd: int
) -> Iterator[int]:
    """Sends each instance over ``assoc``, yielding its C-STORE status, until the requestor
    speaks or leaves; releases ``assoc`` when done or closed early (a C-CANCEL)."""
    watch = RequestorWatch(requestor_fd, assoc)
    try:
        for instance in instances:
            if watch.spoke.is_set():
                return
            try:
                response = assoc.send_c_store(instance)
            except (ValueError, _native.DamagedError) as e:
                # Not sendable in any syntax the peer accepted, or damaged in the archive: read
                # whole before anything is sent, so only this sub-operation fails.
                log.error("C-MOVE: sub-operation for %s failed: %s", instance.SOPInstanceUID, e)
                yield SUB_OPERATION_FAILED
                continue
            except RuntimeError:  # the association was aborted under it
                if watch.spoke.is_set():
                    return
                raise
            yield int(getattr(response, "Status", SUB_OPERATION_FAILED))
    finally:
        watch.stop()
        if assoc.is_established:
            assoc.release()


class DicomServer:
    """``dicomvault serve``'s DICOM listener over an open archive."""

    def __init__(self, archive: Archive, settings: Settings) -> None:
        install()
        # Requests are logged on one line each, not dumped by pynetdicom.
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False
        self.archive = archive
        self.dicom = settings["dicom"]
        self.policy = AccessPolicy(self.dicom, settings["modalities"])
        # C-FIND and the retrieves select alike, with the index's person name matching.
        self.finder = Finder(archive, bool(settings["index"]["case_insensitive_pn"]))
        self.aet = str(self.dicom["aet"])
        # The SCU of C-MOVE's sub-operations.
        self.ae = AE(ae_title=self.aet)
        self.ae.implementation_class_uid = vocabulary.IMPLEMENTATION_CLASS_UID
        self.ae.implementation_version_name = vocabulary.IMPLEMENTATION_VERSION_NAME
        self.ae.maximum_pdu_size = int(self.dicom["max_pdu"])
        self.ae.network_timeout = float(self.dicom["dimse_timeout_s"])
        self.ae.dimse_timeout = 600
        self._listener: _native.DicomListener | None = None
        self.commitment = CommitmentScp(archive, self.policy, self.ae)

    def config(self) -> _native.ListenerConfig:
        """What the listener is built from, or a ConfigError naming a [dicom] limit that makes
        no sense (or TLS files missing)."""
        return listener_config(
            self.archive,
            self.dicom,
            self.policy,
            find_classes=FIND_MODELS,
            move_classes=MOVE_MODELS,
            retrieve_classes=GET_MODELS,
        )

    def start(self) -> tuple[str, int]:
        """Starts listening; ConfigError (a limit, or TLS files that cannot be used) or
        OSError (a port) when it cannot."""
        self._listener = start_listener(
            self.archive,
            self.config(),
            {
                "log": log.log,
                "select": self._select_for_get,
                "transcode": self._transcode,
                "find": self._find,
                "move_to": self._move,
                "commit": self.commitment.request,
            },
        )
        return self._listener.address

    @property
    def tls_address(self) -> tuple[str, int] | None:
        return None if self._listener is None else self._listener.tls_address

    def stop(self) -> None:
        """Stops accepting; associations in progress end, what they acknowledged is durable.
        C-MOVE sub-associations are aborted first: a destination that is slow to answer
        would otherwise hold their association threads (and the exit) for the DIMSE
        timeout."""
        for assoc in self.ae.active_associations:
            abort_now(assoc)
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        self.commitment.join(timeout=2)
        self.ae.shutdown()

    def _allowed(self, aet: str, host: str, service: str, model: str) -> bool:
        if self.policy.allows(aet, host, service):
            return True
        log.warning("%s from %s@%s refused: not allowed for this AE", service.upper(), aet, host)
        event = "query" if service == "find" else "retrieve"
        self.archive.audit.record(
            event,
            Who(ae=aet, address=host, via="dicom"),
            outcome="denied",
            what=f"C-{service.upper()}",
            detail={"model": model},
        )
        return False

    def _find(
        self, calling_ae: str, address: str, model: str, transfer_syntax: str, identifier: bytes
    ) -> tuple[int, Iterator[bytes]]:
        """C-FIND: the status refusing it, or Success and the response identifiers encoded in
        ``transfer_syntax``, produced as the listener sends them."""
        if not self._allowed(calling_ae, address, "find", model):
            return NOT_AUTHORIZED, iter(())
        syntax = UID(transfer_syntax)
        dataset = _decoded_identifier("C-FIND", identifier, syntax)
        if dataset is None:
            return UNABLE_TO_PROCESS, iter(())
        try:
            level, filters, requested = read_identifier(dataset, model)
        except IdentifierError as e:
            log.error("C-FIND: %s", e)
            return e.status, iter(())
        try:
            self.archive.wait_until_indexed()
        except IndexUnavailable as e:
            log.error("C-FIND refused: %s", e)
            return OUT_OF_RESOURCES, iter(())
        matches = self.finder.find(level, filters, [*requested, *AUDITED])

        def answers() -> Iterator[bytes]:
            # Recorded once every answer is sent (or the peer cancelled), before the final
            # response.
            patients, studies = [], []
            try:
                for m in matches:
                    patients.append(patient_of(m))
                    studies.append(m.get("StudyInstanceUID", ""))
                    yield encode_identifier(m, level, requested, self.aet, syntax.is_implicit_VR)
            finally:
                self.archive.audit.record(
                    "query",
                    Who(ae=calling_ae, address=address, via="dicom"),
                    patients=patients,
                    studies=studies,
                    what=f"C-FIND {level.value}",
                    detail={"model": model, "keys": filters, "answers": len(patients)},
                )

        return SUCCESS, answers()

    def _select_for_get(
        self, calling_ae: str, address: str, model: str, transfer_syntax: str, identifier: bytes
    ) -> tuple[int, list[Selected]]:
        """C-GET: a status and, when it is Success, each instance to send as (SOP Class UID,
        SOP Instance UID, stored syntax, data set offset, manifest)."""
        status, chosen, matches = self._select(
            "get", calling_ae, address, model, transfer_syntax, identifier
        )
        if status == SUCCESS:
            self._audit_retrieve("C-GET", calling_ae, address, model, chosen, matches)
        return status, chosen

    def _select(
        self,
        service: str,
        calling_ae: str,
        address: str,
        model: str,
        transfer_syntax: str,
        identifier: bytes,
    ) -> tuple[int, list[Selected], list[dict[str, str]]]:
        """A retrieve's access check, identifier and query: a status, what it selects and the
        index's matches (which patients and studies)."""
        if not self._allowed(calling_ae, address, service, model):
            return NOT_AUTHORIZED, [], []
        name = f"C-{service.upper()}"
        dataset = _decoded_identifier(name, identifier, UID(transfer_syntax))
        if dataset is None:
            return UNABLE_TO_PROCESS, [], []
        try:
            level, filters, _ = read_identifier(dataset, model)
        except IdentifierError as e:
            log.error("%s: %s", name, e)
            return e.status, [], []
        # A retrieve selects by its keys (PS3.4 C.4.2.2.1), not by the requestor's time zone,
        # which some SCUs put in every identifier.
        filters.pop("TimezoneOffsetFromUTC", None)
        try:
            matches = list(self.finder.find(level, filters, AUDITED))
            records = self.archive.matched_records(level, matches)
            chosen = [selected(record) for record in self.archive.instances(records)]
        except IndexUnavailable as e:
            log.error("%s refused: %s", name, e)
            return OUT_OF_RESOURCES_MATCHES, [], []
        return SUCCESS, chosen, matches

    def _audit_retrieve(
        self,
        what: str,
        calling_ae: str,
        address: str,
        model: str,
        chosen: list[Selected],
        matches: list[dict[str, str]],
        **detail: str,
    ) -> None:
        """A retrieve's record, written before the first instance leaves."""
        self.archive.audit.record(
            "retrieve",
            Who(ae=calling_ae, address=address, via="dicom"),
            patients=[patient_of(m) for m in matches],
            studies=[m.get("StudyInstanceUID", "") for m in matches],
            what=what,
            detail={"model": model, "instances": len(chosen), **detail},
        )

    def _move(
        self,
        calling_ae: str,
        address: str,
        model: str,
        transfer_syntax: str,
        identifier: bytes,
        destination_aet: str,
        requestor_fd: int,
    ) -> tuple[int, list[str], Iterator[int]]:
        """C-MOVE: a status and, when it is Success, the SOP Instance UIDs to send and their
        C-STORE statuses as they are sent, over an association to the destination."""
        status, chosen, matches = self._select(
            "move", calling_ae, address, model, transfer_syntax, identifier
        )
        destination = self.policy.by_aet(destination_aet)
        if status == SUCCESS and destination is None:
            log.error("C-MOVE to unknown destination %r", destination_aet)
            status = MOVE_DESTINATION_UNKNOWN
        if status != SUCCESS or destination is None or not chosen:
            return status, [], iter(())
        instances = [outbound(self.archive, s) for s in chosen]
        uids = [i.SOPInstanceUID for i in instances]
        self._audit_retrieve(
            "C-MOVE",
            calling_ae,
            address,
            model,
            chosen,
            matches,
            destination=f"{destination.aet}@{destination.host}:{destination.port}",
        )
        assoc = self.ae.associate(
            destination.host,
            destination.port,
            contexts.for_instances(instances),
            ae_title=destination.aet,
            evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)],
            tls_args=tls_arguments(destination, self.dicom),
        )
        if not assoc.is_established:
            # A known destination that cannot be reached: every sub-operation fails (PS3.4
            # C.4.2.1.5), which the final response reports as 0xA702 with the counts.
            log.error(
                "C-MOVE: no association with %s@%s:%d: %d sub-operations failed",
                destination.aet,
                destination.host,
                destination.port,
                len(uids),
            )
            return SUCCESS, uids, iter([SUB_OPERATION_FAILED] * len(uids))
        return SUCCESS, uids, _sub_operations(assoc, instances, requestor_fd)

    def _transcode(
        self,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax: str,
        dataset_offset: int,
        manifest: bytes,
        accepted: list[str],
    ) -> tuple[str, bytes]:
        """C-GET: an instance's data set in the first of ``accepted`` (the peer's order) the
        transcoder can give it in."""
        instance = Selected(
            sop_class_uid, sop_instance_uid, transfer_syntax, dataset_offset, manifest
        )
        syntax, dataset = outbound(self.archive, instance).transcoded(accepted)
        return str(syntax), dataset
