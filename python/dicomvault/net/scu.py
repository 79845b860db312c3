"""The SCU verbs: echo, send, find, get and move against a remote AE."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.presentation import (
    PresentationContext,
    build_context,
    build_role,
)

from dicomvault.config import Settings
from dicomvault.index import Level
from dicomvault.net.as_held import MAX_CONTEXTS, get_contexts
from dicomvault.net.outbound import StoredInstance, install
from dicomvault.net.policy import Modality
from dicomvault.net.query import PATIENT_ROOT, STUDY_ROOT, response_identifier
from dicomvault.net.status import (
    CANCEL,
    CANNOT_UNDERSTAND,
    PENDING,
    PENDING_WARNING,
    SOP_CLASS_NOT_SUPPORTED,
    SUCCESS,
    describe,
)
from dicomvault.net.vocabulary import (
    VERIFICATION,
    MatchingCancelled,
    RetrieveResult,
    ScuError,
)
from dicomvault.security.tls import client_context

log = logging.getLogger("dicomvault.net")


def set_nodelay(event: Event) -> None:
    """Disables Nagle's algorithm on every association socket, ours and the peer's replies
    otherwise stall ~40 ms on delayed ACKs."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def tls_arguments(target: Modality, dicom: Mapping[str, Any]) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's ``tls_args`` for an association to ``target``: None unless it uses TLS."""
    return (client_context(dicom), target.host) if target.tls else None


def query_identifier(level: Level, keys: dict[str, str]) -> Dataset:
    """A request identifier from ``-k`` keys (keyword -> value, "" for a return key)."""
    ds = response_identifier(keys, level, list(keys), "")
    del ds.RetrieveAETitle
    return ds


class Scu:
    """An SCU speaking as our AE title. With ``reuse``, each thread keeps one association per
    service and peer open across requests (release them with ``close``): a migration's
    thousands of requests then pay for association set-up once."""

    def __init__(self, settings: Settings, reuse: bool = False) -> None:
        install()
        self.reuse = reuse
        self._kept: dict[tuple, Association] = {}
        self._lock = threading.Lock()
        self.ae = AE(ae_title=str(settings["dicom"]["aet"]))
        self.ae.network_timeout = 60
        self.ae.acse_timeout = 30
        self.ae.dimse_timeout = 600
        self.ae.maximum_pdu_size = 0
        self.dicom = settings["dicom"]

    def associate(
        self,
        target: Modality,
        contexts: list[PresentationContext],
        *,
        ext_neg: list | None = None,
        handlers: list | None = None,
    ) -> Association:
        assoc = self.ae.associate(
            target.host,
            target.port,
            contexts=contexts,
            ae_title=target.aet,
            ext_neg=ext_neg,
            evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay), *(handlers or [])],
            tls_args=tls_arguments(target, self.dicom),
        )
        if not assoc.is_established:
            why = "rejected the association" if assoc.is_rejected else "could not be reached"
            raise ScuError(f"{target.aet}@{target.host}:{target.port} {why}")
        return assoc

    @contextmanager
    def _using(
        self, target: Modality, service: str, contexts: list[PresentationContext], **options: Any
    ) -> Iterator[Association]:
        key = (threading.get_ident(), service, target.aet, target.host, target.port)
        with self._lock:
            assoc = self._kept.pop(key, None) if self.reuse else None
        if assoc is None or not assoc.is_established:
            assoc = self.associate(target, contexts, **options)
        try:
            yield assoc
        except BaseException:
            assoc.release()
            raise
        if self.reuse and assoc.is_established:
            with self._lock:
                self._kept[key] = assoc
        else:
            assoc.release()

    def close(self) -> None:
        """Releases the associations kept open."""
        with self._lock:
            kept, self._kept = list(self._kept.values()), {}
        for assoc in kept:
            assoc.release()

    def echo(self, target: Modality) -> int:
        assoc = self.associate(target, [build_context(VERIFICATION)])
        try:
            rsp = assoc.send_c_echo()
            return int(rsp.Status) if "Status" in rsp else CANNOT_UNDERSTAND
        finally:
            assoc.release()

    def send(
        self, target: Modality, items: Iterable[Path | StoredInstance]
    ) -> list[tuple[str, int]]:
        """C-STOREs files and archived instances; returns (SOPInstanceUID, status) for each."""
        prepared: list[tuple[Path | StoredInstance, str, str, str]] = []
        for item in items:
            if isinstance(item, StoredInstance):
                prepared.append(
                    (
                        item,
                        str(item.SOPClassUID),
                        str(item.SOPInstanceUID),
                        str(item.transfer_syntax),
                    )
                )
            else:
                meta = dcmread(
                    item, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]
                ).file_meta
                prepared.append(
                    (
                        item,
                        meta.MediaStorageSOPClassUID,
                        meta.MediaStorageSOPInstanceUID,
                        meta.TransferSyntaxUID,
                    )
                )
        pairs = dict.fromkeys((sop, ts) for _, sop, _, ts in prepared)
        classes = dict.fromkeys(sop for sop, _ in pairs)
        contexts = [build_context(sop, [ts]) for sop, ts in pairs]
        contexts += [
            build_context(sop, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]) for sop in classes
        ]
        if len(contexts) > 128:
            raise ScuError(
                f"{len(contexts)} presentation contexts needed; send fewer SOP classes at once"
            )
        assoc = self.associate(target, contexts)
        results = []
        try:
            for item, _, uid, _ in prepared:
                try:
                    rsp = assoc.send_c_store(item)
                    status = int(rsp.Status) if "Status" in rsp else CANNOT_UNDERSTAND
                except (ValueError, AttributeError) as e:
                    log.error("C-STORE of %s: %s", uid, e)
                    status = CANNOT_UNDERSTAND
                results.append((uid, status))
        finally:
            assoc.release()
        return results

    def find(self, target: Modality, level: Level, keys: dict[str, str]) -> Iterator[Dataset]:
        """C-FIND in the Study Root model (Patient Root for PATIENT level)."""
        model = PATIENT_ROOT[0] if level is Level.PATIENT else STUDY_ROOT[0]
        contexts = [build_context(PATIENT_ROOT[0]), build_context(STUDY_ROOT[0])]
        with self._using(target, "find", contexts) as assoc:
            for status, identifier in assoc.send_c_find(query_identifier(level, keys), model):
                code = (
                    int(status.Status)
                    if status is not None and "Status" in status
                    else CANNOT_UNDERSTAND
                )
                if code in (PENDING, PENDING_WARNING):
                    if identifier is None:
                        raise ScuError("C-FIND: a pending response without an identifier")
                    yield identifier
                elif code == CANCEL:
                    raise MatchingCancelled(f"C-FIND ended early: {describe(code)}")
                elif code != SUCCESS:
                    raise ScuError(f"C-FIND failed: {describe(code)}")

    def _retrieve(self, responses: Iterator[tuple[Dataset, Dataset | None]]) -> RetrieveResult:
        result = RetrieveResult()
        for status, identifier in responses:
            if status is None or "Status" not in status:
                result.status = CANNOT_UNDERSTAND
                break
            code = int(status.Status)
            result.completed = int(
                status.get("NumberOfCompletedSuboperations", result.completed) or 0
            )
            result.failed = int(status.get("NumberOfFailedSuboperations", result.failed) or 0)
            result.warning = int(status.get("NumberOfWarningSuboperations", result.warning) or 0)
            if code not in (PENDING, PENDING_WARNING):
                result.status = code
                if identifier is not None and "FailedSOPInstanceUIDList" in identifier:
                    failed = identifier.FailedSOPInstanceUIDList
                    result.failed_uids = [failed] if isinstance(failed, str) else list(failed)
        return result

    def get(
        self,
        target: Modality,
        level: Level,
        keys: Mapping[str, str],
        into: Path,
        classes: frozenset[str] = frozenset(),
    ) -> RetrieveResult:
        """C-GET: the instances come back on this association, into a directory (the Rust
        SCU, ``net/bulk.py``, is the one that stores into the archive). ``classes`` are
        proposed in a context per transfer syntax (``as_held.get_contexts``); an instance
        sent on a context of several syntaxes, which the source may have converted to the
        one that context took, is refused (0x0122) and named in ``unproposed``: a file
        written is always the source's bytes."""
        model = PATIENT_ROOT[2] if level is Level.PATIENT else STUDY_ROOT[2]
        contexts = [build_context(PATIENT_ROOT[2]), build_context(STUDY_ROOT[2])]
        storage = get_contexts(classes, MAX_CONTEXTS - len(contexts))
        contexts += [build_context(uid, syntaxes) for uid, syntaxes in storage]
        roles = [build_role(uid, scp_role=True) for uid in dict.fromkeys(u for u, _ in storage)]
        unproposed: list[tuple[str, str]] = []

        def on_store(event: Event) -> int:
            request = event.request
            if not isinstance(request, C_STORE):
                raise TypeError(f"{event.event.name}: not a C-STORE request")
            sop_instance = str(request.AffectedSOPInstanceUID)
            proposed = {c.context_id: c for c in event.assoc.requestor.requested_contexts}
            context = proposed.get(event.context.context_id)
            if context is None or len(context.transfer_syntax) != 1:
                unproposed.append((sop_instance, str(request.AffectedSOPClassUID)))
                return SOP_CLASS_NOT_SUPPORTED
            into.mkdir(parents=True, exist_ok=True)
            (into / f"{sop_instance}.dcm").write_bytes(event.encoded_dataset())
            return SUCCESS

        # Kept per set of classes: another set is other presentation contexts.
        service = f"get:{into}:{','.join(sorted(classes))}"
        handlers = [(evt.EVT_C_STORE, on_store)]
        with self._using(target, service, contexts, ext_neg=roles, handlers=handlers) as assoc:
            result = self._retrieve(assoc.send_c_get(query_identifier(level, dict(keys)), model))
        result.unproposed = unproposed
        return result

    def move(
        self, target: Modality, destination: str, level: Level, keys: dict[str, str]
    ) -> RetrieveResult:
        model = PATIENT_ROOT[1] if level is Level.PATIENT else STUDY_ROOT[1]
        contexts = [build_context(PATIENT_ROOT[1]), build_context(STUDY_ROOT[1])]
        with self._using(target, "move", contexts) as assoc:
            return self._retrieve(
                assoc.send_c_move(query_identifier(level, keys), destination, model)
            )
