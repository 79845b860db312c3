"""The SCU for bulk work (migrations): associations requested and served in Rust
(``_native.ScuAssociation``, see ``rust/src/scu/``), one per thread and service, kept open
across requests. C-FIND identifiers are encoded and decoded there; a C-GET's sub-operations
stream from the socket into the store through the listener's own receive path
(``_native.Receiver``), durable before each C-STORE-RSP and indexed by the archive's applier;
a C-MOVE's arrive at the archive's own listener. Every wait is a blocking read: nothing polls.
A source with ``tls = true`` is spoken to over DICOM TLS (``security.tls.scu_tls``).

The CLI's one-off verbs keep pynetdicom (``net/scu.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from dicomvault import _native
from dicomvault.config import ConfigError, Settings
from dicomvault.dicom.values import tag_and_vr
from dicomvault.index import Level
from dicomvault.net.as_held import LISTING_KEYS, MAX_CONTEXTS, fits, get_contexts
from dicomvault.net.policy import Modality
from dicomvault.net.status import CANCEL, SUCCESS, describe
from dicomvault.net.vocabulary import (
    GET_SYNTAXES,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    PATIENT_ROOT,
    STUDY_ROOT,
    RetrieveResult,
    ScuError,
)
from dicomvault.security.tls import scu_tls
from dicomvault.store import Archive

# The largest PDU we take, as the listener does.
MAX_PDU = 4 << 20
# How long connecting, the TLS handshake and the answer to our A-ASSOCIATE-RQ may take
# (pynetdicom's ACSE timeout in net/scu.py): a source that does not answer fails fast.
ACSE_TIMEOUT_S = 30.0
# How long a peer may stay silent: a C-MOVE's source may take long between sub-operations.
TIMEOUT_S = 600.0
IDENTIFIER_SYNTAXES = GET_SYNTAXES[:2]

T = TypeVar("T")


def _element(keyword: str) -> tuple[int, str]:
    try:
        return tag_and_vr(keyword)
    except ValueError as e:
        raise ScuError(str(e)) from None


def request_keys(keys: Mapping[str, str]) -> list[tuple[int, str, str]]:
    """``-k`` style keys (keyword -> value, "" to have it returned) as (tag, VR, value)."""
    return [(*_element(keyword), value) for keyword, value in keys.items()]


@dataclass
class Found:
    """A C-FIND's matches (keyword -> value of each key asked for); ``cancelled`` when the
    source ended it early with status Cancel, as Orthanc does past its result limit."""

    matches: list[dict[str, str]] = field(default_factory=list)
    cancelled: bool = False


def _model(level: Level, service: int) -> str:
    return (PATIENT_ROOT if level is Level.PATIENT else STUDY_ROOT)[service]


class BulkScu:
    """Associations to ``target`` as our AE title; with ``archive``, C-GET stores into it."""

    def __init__(
        self, settings: Settings, target: Modality, archive: Archive | None = None
    ) -> None:
        try:
            self.tls = scu_tls(settings["dicom"]) if target.tls else None
        except ConfigError as e:
            raise ScuError(f"{target.aet}@{target.host}:{target.port} over TLS: {e}") from None
        self.target = target
        self.aet = str(settings["dicom"]["aet"])
        self.receiver = (
            archive.receiver(IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME)
            if archive is not None
            else None
        )
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[_native.ScuAssociation] = []

    def _association(
        self, service: str, classes: frozenset[str] = frozenset()
    ) -> _native.ScuAssociation:
        """This thread's association for ``service`` (find, get, move), opened if need be;
        for a C-GET, one proposing ``classes`` in each transfer syntax (``get_contexts``)."""
        kept: dict[str, _native.ScuAssociation] = self._local.__dict__.setdefault("kept", {})
        each: dict[str, frozenset[str]] = self._local.__dict__.setdefault("each", {})
        association = kept.get(service)
        if association is not None:
            had = each[service]
            if association.is_open and (
                service != "get" or (classes <= had and (classes or not had))
            ):
                return association
            # Gone, or classes its contexts do not name in each syntax (or none known: the
            # usual ones): another association, naming those it named too if they all fit.
            self._drop(association)
            if classes and fits(classes | had):
                classes |= had
        index = {"find": 0, "move": 1, "get": 2}[service]
        proposed = [
            (PATIENT_ROOT[index], IDENTIFIER_SYNTAXES),
            (STUDY_ROOT[index], IDENTIFIER_SYNTAXES),
        ]
        roles: list[str] = []
        if service == "get":
            storage = get_contexts(classes, MAX_CONTEXTS - len(proposed))
            proposed += storage
            roles = list(dict.fromkeys(uid for uid, _ in storage))
            # What it can take each as the source holds it (not all, if more than fit).
            classes = frozenset(uid for uid, syntaxes in storage if len(syntaxes) == 1)
        t = self.target
        try:
            association = _native.ScuAssociation(
                t.host,
                t.port,
                t.aet,
                self.aet,
                proposed,
                roles,
                max_pdu=MAX_PDU,
                acse_timeout_s=ACSE_TIMEOUT_S,
                timeout_s=TIMEOUT_S,
                implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                implementation_version_name=IMPLEMENTATION_VERSION_NAME,
                tls=self.tls,
            )
        except _native.AssociationError as e:
            raise ScuError(f"{t.aet}@{t.host}:{t.port}: {e}") from e
        kept[service], each[service] = association, classes
        with self._lock:
            self._open.append(association)
        return association

    def _drop(self, association: _native.ScuAssociation) -> None:
        with self._lock:
            self._open = [a for a in self._open if a is not association]
        _release(association)

    def _call(
        self,
        service: str,
        request: Callable[[_native.ScuAssociation], T],
        classes: frozenset[str] = frozenset(),
    ) -> T:
        """``request`` on this thread's association for ``service``; ScuError if it fails."""
        association = self._association(service, classes)
        try:
            return request(association)
        except _native.AssociationError as e:
            t = self.target
            raise ScuError(f"C-{service.upper()} with {t.aet}@{t.host}:{t.port}: {e}") from e

    def find(self, level: Level, keys: Mapping[str, str], limit: int | None = None) -> Found:
        """C-FIND in the Study Root model (Patient Root at PATIENT level); cancelled once
        ``limit`` matches arrived (then ``cancelled``), when given."""
        wanted = [(keyword, *_element(keyword)) for keyword in keys]
        model, identifier = _model(level, 0), request_keys(keys)
        status, matches = self._call(
            "find", lambda a: a.find(model, level.value, identifier, wanted, limit)
        )
        if limit is not None and len(matches) >= limit:
            # Our C-CANCEL may reach the source after its final response: a new association
            # for the next request, so that nothing reads it as an answer to that.
            self.release_mine()
        if status not in (SUCCESS, CANCEL):
            raise ScuError(f"C-FIND failed: {describe(status)}")
        return Found(matches, cancelled=status == CANCEL)

    def get(
        self,
        level: Level,
        keys: Mapping[str, str],
        studies: Sequence[str] = (),
        classes: frozenset[str] = frozenset(),
        as_held: bool = False,
    ) -> RetrieveResult:
        """C-GET into the archive; sub-operations of other studies than ``studies`` (when
        given) are refused. ``classes`` are proposed in a context per transfer syntax, so
        that their instances come as the source holds them; with ``as_held``, an instance
        sent on a context of several syntaxes is refused, and named in ``unproposed``."""
        receiver = self.receiver
        if receiver is None:
            raise ValueError("a C-GET needs the archive to store into")
        model, identifier = _model(level, 2), request_keys(keys)
        return _result(
            self._call(
                "get",
                lambda a: a.get(receiver, model, level.value, identifier, list(studies), as_held),
                classes,
            )
        )

    def listing(self, keys: Mapping[str, str]) -> list[dict[str, str]] | None:
        """The instances ``keys`` match, from an IMAGE-level C-FIND of ``LISTING_KEYS`` (to
        plan a C-GET of them: ``as_held.get_requests``); None when the source cannot be
        asked so."""
        wanted = {**dict.fromkeys(LISTING_KEYS, ""), **keys}
        try:
            found = self.find(Level.IMAGE, wanted)
        except ScuError:
            return None
        finally:
            self.release_mine("find")
        return None if found.cancelled else found.matches

    def move(self, destination: str, level: Level, keys: Mapping[str, str]) -> RetrieveResult:
        model, identifier = _model(level, 1), request_keys(keys)
        return _result(
            self._call("move", lambda a: a.move(model, level.value, identifier, destination))
        )

    def release_mine(self, service: str | None = None) -> None:
        """Releases this thread's associations (for ``service`` only, when given): a source
        serves so many at once (Orthanc's DicomThreadsCount, 4 by default) that one held
        while idle can stall the others."""
        kept: dict[str, _native.ScuAssociation] = self._local.__dict__.setdefault("kept", {})
        for name in [service] if service else list(kept):
            association = kept.pop(name, None)
            if association is not None:
                self._drop(association)

    def close(self) -> None:
        """Releases every association opened (by any thread)."""
        with self._lock:
            kept, self._open = self._open, []
        for association in kept:
            _release(association)


def _release(association: _native.ScuAssociation) -> None:
    try:
        association.release()
    except _native.AssociationError:
        association.abort()


def _result(native: _native.Retrieved) -> RetrieveResult:
    return RetrieveResult(
        status=native.status,
        completed=native.completed,
        failed=native.failed,
        warning=native.warning,
        failed_uids=native.failed_uids,
        refused=native.refused,
        unproposed=native.unproposed,
    )
