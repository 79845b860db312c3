"""Storage Commitment Push Model (PS3.4 Annex J), both roles.

As SCP (``CommitmentScp``, behind the listener's N-ACTION): an instance is committed when the
index holds it under the SOP class asked, its blobs are durable (the archive is checkpointed)
and every one of them reads back with its checksum (``Store.check``). The N-EVENT-REPORT goes
on an association of its own to the requestor's [modalities] address, the archive proposing
the SCP role (PS3.4 J.3.3): verifying takes as long as reading the instances back, longer than
a requestor should keep its association waiting.

As SCU (``request_commitment``, the ``dicomvault commit`` verb): asks a peer to commit the
archive's instances a query selects (a migration's source or target) and waits for the report
on the same association or on one the peer opens to our [dicom] port: the verb's own, or
``serve``'s, which keeps it under ``<root>/commitments/`` for the verb.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid
from pynetdicom import AE, evt
from pynetdicom.dsutils import decode
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.presentation import build_context, build_role

from dicomvault import _native
from dicomvault.index import Level
from dicomvault.net.policy import AccessPolicy, Modality
from dicomvault.net.status import (
    CLASS_INSTANCE_CONFLICT,
    MISSING_ATTRIBUTE,
    NO_SUCH_OBJECT_INSTANCE,
    NOT_AUTHORIZED,
    PROCESSING_FAILURE,
    SUCCESS,
)
from dicomvault.store import Archive

log = logging.getLogger("dicomvault.net")

STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
# The Storage Commitment Push Model's well-known SOP instance (PS3.4 J.3.5).
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_COMMITMENT = 1  # the Action Type ID (PS3.4 J.3.2)
# Event Type IDs of the report (PS3.4 J.3.3): all committed, or some failed.
ALL_COMMITTED, SOME_FAILED = 1, 2
# Where `serve` keeps the reports peers send it on `dicomvault commit`'s requests.
REPORTS = "commitments"


@dataclass
class Report:
    """A commitment's outcome: committed (SOP Class, SOP Instance) and failed ones with
    their Failure Reason."""

    transaction: str
    committed: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)

    def dataset(self) -> Dataset:
        ds = Dataset()
        ds.TransactionUID = self.transaction
        if self.committed:
            ds.ReferencedSOPSequence = [_reference(c, i) for c, i in self.committed]
        if self.failed:
            ds.FailedSOPSequence = [_reference(c, i, reason) for c, i, reason in self.failed]
        return ds

    @staticmethod
    def of(ds: Dataset) -> Report:
        return Report(
            str(ds.get("TransactionUID", "")),
            [
                (str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
                for i in ds.get("ReferencedSOPSequence", [])
            ],
            [
                (
                    str(i.ReferencedSOPClassUID),
                    str(i.ReferencedSOPInstanceUID),
                    int(i.get("FailureReason", PROCESSING_FAILURE)),
                )
                for i in ds.get("FailedSOPSequence", [])
            ],
        )


def _reference(sop_class: str, sop_instance: str, reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    if reason is not None:
        item.FailureReason = reason
    return item


def _context() -> list:
    return [build_context(STORAGE_COMMITMENT)]


class CommitmentScp:
    """Takes N-ACTION requests, verifies in the background and reports to the requestor."""

    def __init__(self, archive: Archive, policy: AccessPolicy, ae: AE) -> None:
        self.archive = archive
        self.policy = policy
        self.ae = ae  # the archive's SCU, which reports
        self._workers: list[threading.Thread] = []

    def request(
        self,
        calling_ae: str,
        address: str,
        sop_class: str,
        syntax: str,
        information: bytes,
        event_type: int | None = None,
    ) -> int:
        """A request (``event_type`` None): the N-ACTION status, a report following on
        Success. A peer's report on a request of ours (``dicomvault commit`` while ``serve``
        holds the port): kept for the verb, the N-EVENT-REPORT status."""
        requestor = self.policy.known(calling_ae, address)
        if event_type is not None and requestor is not None:
            return self._received(calling_ae, syntax, information)
        if requestor is None:
            log.warning("storage commitment from %s@%s refused: unknown AE", calling_ae, address)
            return NOT_AUTHORIZED
        uid = UID(syntax)
        try:
            ds = decode(io.BytesIO(information), uid.is_implicit_VR, uid.is_little_endian)
            report = Report(str(ds.TransactionUID))
            wanted = [
                (str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
                for i in ds.ReferencedSOPSequence
            ]
        except Exception as e:  # pydicom's errors have many types; the requestor is told
            log.error("storage commitment from %s: unreadable request: %s", calling_ae, e)
            return MISSING_ATTRIBUTE
        worker = threading.Thread(
            target=self._commit, args=(requestor, report, wanted), name="commitment", daemon=True
        )
        self._workers = [w for w in self._workers if w.is_alive()] + [worker]
        worker.start()
        return SUCCESS

    def _received(self, calling_ae: str, syntax: str, information: bytes) -> int:
        uid = UID(syntax)
        try:
            ds = decode(io.BytesIO(information), uid.is_implicit_VR, uid.is_little_endian)
            report = Report.of(ds)
            keep(self.archive.root, report)
        except Exception as e:  # pydicom's and the file system's errors have many types
            log.error("storage commitment report from %s not taken: %s", calling_ae, e)
            return PROCESSING_FAILURE
        log.info("storage commitment report %s from %s kept", report.transaction, calling_ae)
        return SUCCESS

    def _commit(self, requestor: Modality, report: Report, wanted: list[tuple[str, str]]) -> None:
        try:
            self.archive.checkpoint()  # durable whatever [storage] sync says
        except OSError as e:
            log.error("storage commitment: the archive cannot be made durable: %s", e)
            report.failed = [(c, i, PROCESSING_FAILURE) for c, i in wanted]
            wanted = []
        for sop_class, sop_instance in wanted:
            reason = self._failure(sop_class, sop_instance)
            if reason is None:
                report.committed.append((sop_class, sop_instance))
            else:
                report.failed.append((sop_class, sop_instance, reason))
        self._report(requestor, report)

    def _failure(self, sop_class: str, sop_instance: str) -> int | None:
        record = self.archive.record(Level.IMAGE, sop_instance)
        if record is None or record.manifest is None:
            return NO_SUCH_OBJECT_INSTANCE
        if record.tags.get("SOPClassUID") != sop_class:
            return CLASS_INSTANCE_CONFLICT
        try:
            self.archive.check_intact(record.manifest)
        except (_native.DamagedError, OSError) as e:
            log.error("storage commitment: %s is not intact: %s", sop_instance, e)
            return PROCESSING_FAILURE
        return None

    def _report(self, requestor: Modality, report: Report) -> None:
        event = ALL_COMMITTED if not report.failed else SOME_FAILED
        assoc = self.ae.associate(
            requestor.host,
            requestor.port,
            _context(),
            ae_title=requestor.aet,
            ext_neg=[build_role(STORAGE_COMMITMENT, scp_role=True)],
        )
        if not assoc.is_established:
            log.error(
                "storage commitment %s: no association with %s@%s:%d for the report",
                report.transaction,
                requestor.aet,
                requestor.host,
                requestor.port,
            )
            return
        try:
            status, _ = assoc.send_n_event_report(
                report.dataset(), event, STORAGE_COMMITMENT, WELL_KNOWN_INSTANCE
            )
        finally:
            assoc.release()
        log.info(
            "storage commitment %s for %s: %d committed, %d failed; report answered 0x%04X",
            report.transaction,
            requestor.aet,
            len(report.committed),
            len(report.failed),
            int(getattr(status, "Status", PROCESSING_FAILURE)),
        )

    def join(self, timeout: float) -> None:
        """Waits (a while) for the reports under way."""
        for worker in self._workers:
            worker.join(timeout)


def _kept(root: Path, transaction: str) -> Path:
    return root / REPORTS / f"{transaction}.json"


def keep(root: Path, report: Report) -> None:
    """Writes a report a peer sent to ``serve`` where ``dicomvault commit`` looks for it."""
    path = _kept(root, report.transaction)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(dataclasses.asdict(report)))
    partial.replace(path)


def _taken(root: Path, transaction: str) -> Report | None:
    """The report ``serve`` kept for ``transaction`` (removed once read), or None."""
    path = _kept(root, transaction)
    if not path.exists():
        return None
    fields = json.loads(path.read_text())
    path.unlink()
    return Report(
        fields["transaction"],
        [(str(sop_class), str(sop_instance)) for sop_class, sop_instance in fields["committed"]],
        [(str(c), str(i), int(reason)) for c, i, reason in fields["failed"]],
    )


class CommitmentError(RuntimeError):
    """A commitment that could not be asked, or whose report did not come."""


def request_commitment(
    ae: AE,
    target: Modality,
    instances: Iterable[tuple[str, str]],
    listen: tuple[str, int],
    timeout: float,
    root: Path,
) -> Report:
    """Asks ``target`` to commit ``instances`` (SOP Class, SOP Instance UIDs) and waits up to
    ``timeout`` seconds for its report: on our association, on one it opens to ``listen``,
    or, when ``serve`` holds that port, as ``serve`` keeps it under ``root``."""
    transaction = generate_uid()
    reports: dict[str, Report] = {}
    arrived = threading.Event()

    def on_report(event: Event) -> int:
        report = Report.of(event.event_information)
        reports[report.transaction] = report
        if report.transaction == transaction:
            arrived.set()
        return SUCCESS

    handlers: list[EventHandlerType] = [(evt.EVT_N_EVENT_REPORT, on_report)]
    ae.add_supported_context(STORAGE_COMMITMENT, scu_role=True, scp_role=True)
    try:
        server = ae.start_server(listen, block=False, evt_handlers=handlers)
    except OSError:
        server = None  # `serve` listens there: it keeps the report for us
    try:
        assoc = ae.associate(
            target.host,
            target.port,
            _context(),
            ae_title=target.aet,
            evt_handlers=handlers,
        )
        if not assoc.is_established:
            raise CommitmentError(f"{target.aet}@{target.host}:{target.port} could not be reached")
        request = Dataset()
        request.TransactionUID = transaction
        request.ReferencedSOPSequence = [_reference(c, i) for c, i in instances]
        try:
            status, _ = assoc.send_n_action(
                request, REQUEST_COMMITMENT, STORAGE_COMMITMENT, WELL_KNOWN_INSTANCE
            )
            answered = int(getattr(status, "Status", PROCESSING_FAILURE))
            if answered != SUCCESS:
                raise CommitmentError(f"{target.aet} refused the request: 0x{answered:04X}")
            # A peer may report on this association: keep it while waiting.
            deadline = time.monotonic() + timeout
            while not arrived.wait(0.2) and time.monotonic() < deadline:
                kept = _taken(root, transaction)
                if kept is not None:
                    reports[transaction] = kept
                    arrived.set()
        finally:
            if assoc.is_established:
                assoc.release()
        if not arrived.is_set():
            raise CommitmentError(f"no report from {target.aet} within {timeout:.0f} s")
        return reports[transaction]
    finally:
        if server is not None:
            server.shutdown()
