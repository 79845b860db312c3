"""The archive's Rust DICOM listener built from ``[dicom]``: its configuration, its start, and
the store-only listener a migration's C-MOVE sends to — importable without pydicom or
pynetdicom, which would cost a migration's start-up more than half a second."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dicomvault import _native
from dicomvault.config import ConfigError, Settings
from dicomvault.net.policy import AccessPolicy
from dicomvault.net.status import NOT_AUTHORIZED, SOP_CLASS_NOT_SUPPORTED
from dicomvault.net.vocabulary import (
    ACCEPTED_SYNTAXES,
    ALL_STORAGE_SOP_CLASSES,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
)
from dicomvault.security.tls import listener_tls
from dicomvault.store import Archive

log = logging.getLogger("dicomvault.net")

# [dicom] keys that must be positive.
POSITIVE_LIMITS = (
    "max_pdu",
    "max_associations",
    "max_associations_per_ae",
    "association_timeout_s",
    "dimse_timeout_s",
    "max_instance_size_mb",
)
# Smaller PDUs than DCMTK's and pynetdicom's defaults would only slow every peer down.
MIN_PDU = 16384


def listener_config(
    archive: Archive,
    dicom: Mapping[str, Any],
    policy: AccessPolicy,
    *,
    find_classes: Iterable[str] = (),
    move_classes: Iterable[str] = (),
    retrieve_classes: Iterable[str] = (),
) -> _native.ListenerConfig:
    """What the listener is built from: C-ECHO, C-STORE of every storage SOP class, and the
    query/retrieve models given; or a ConfigError naming a [dicom] limit that makes no sense
    (or TLS files missing)."""
    for key in POSITIVE_LIMITS:
        if dicom[key] <= 0:
            raise ConfigError(f"[dicom] {key} must be positive, not {dicom[key]}")
    if dicom["max_pdu"] < MIN_PDU:
        raise ConfigError(f"[dicom] max_pdu must be at least {MIN_PDU}")
    return _native.ListenerConfig(
        host=str(dicom["host"]),
        port=int(dicom["port"]),
        ae_title=str(dicom["aet"]),
        check_called_aet=bool(dicom["check_called_aet"]),
        always_allow_echo=bool(dicom["always_allow_echo"]),
        always_allow_store=bool(dicom["always_allow_store"]),
        check_modality_host=bool(dicom["check_modality_host"]),
        known=policy.listener_rules(),
        storage_classes=list(ALL_STORAGE_SOP_CLASSES),
        private_classes=bool(dicom["accept_private_sop_classes"]),
        find_classes=list(find_classes),
        move_classes=list(move_classes),
        retrieve_classes=list(retrieve_classes),
        transfer_syntaxes=list(ACCEPTED_SYNTAXES),
        max_pdu=int(dicom["max_pdu"]),
        max_associations=int(dicom["max_associations"]),
        max_associations_per_ae=int(dicom["max_associations_per_ae"]),
        association_timeout_s=float(dicom["association_timeout_s"]),
        dimse_timeout_s=float(dicom["dimse_timeout_s"]),
        max_instance_size=int(dicom["max_instance_size_mb"]) << 20,
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        replace_duplicates=archive.replace_duplicates,
        tls=listener_tls(dicom),
    )


def start_listener(
    archive: Archive, config: _native.ListenerConfig, host: Mapping[str, Callable[..., Any]]
) -> _native.DicomListener:
    """Starts listening with ``host``'s callbacks; ConfigError (TLS files that cannot be used,
    the host) or OSError (the port) when it cannot."""
    try:
        listener = archive.listener(config, host)
    except ValueError as e:  # the TLS files as rustls reads them, or the host
        raise ConfigError(f"[dicom] {e}") from e
    host_name, port = listener.address
    log.info("DICOM listener %s on %s:%d", config.ae_title, host_name, port)
    if listener.tls_address is not None:
        tls_host, tls_port = listener.tls_address
        log.info("DICOM TLS listener %s on %s:%d", config.ae_title, tls_host, tls_port)
    return listener


def _no_query(*_: object) -> tuple[int, list[Any]]:
    # Never called: the store-only listener accepts no query/retrieve presentation context.
    return SOP_CLASS_NOT_SUPPORTED, []


def _no_move(*_: object) -> tuple[int, list[str], list[int]]:
    return SOP_CLASS_NOT_SUPPORTED, [], []


def _no_transcode(*_: object) -> tuple[str, bytes]:
    raise ValueError("the store-only listener sends nothing")


def _warnings_only(level: int, line: str) -> None:
    # A migration reports per study; a line per C-STORE of the source would be noise.
    if level >= logging.WARNING:
        log.log(level, line)


def _no_commitment(calling_ae: str, address: str, *_: object) -> int:
    log.warning(
        "storage commitment from %s@%s refused: a migration's listener takes C-STOREs only",
        calling_ae,
        address,
    )
    return NOT_AUTHORIZED


class StoreListener:
    """The archive's listener for C-ECHO and C-STORE, as configured in ``[dicom]``: where a
    migration's source sends its C-MOVE sub-operations while ``serve`` is not running. Query
    and retrieve contexts are rejected; a storage commitment request (its context is always
    accepted) is refused. It logs refusals and failures, not every association and request
    as ``serve`` does."""

    def __init__(self, archive: Archive, settings: Settings) -> None:
        self.archive = archive
        self.dicom = settings["dicom"]
        self.policy = AccessPolicy(self.dicom, settings["modalities"])
        self._listener: _native.DicomListener | None = None

    def start(self) -> tuple[str, int]:
        config = listener_config(self.archive, self.dicom, self.policy)
        self._listener = start_listener(
            self.archive,
            config,
            {
                "log": _warnings_only,
                "select": _no_query,
                "transcode": _no_transcode,
                "find": _no_query,
                "move_to": _no_move,
                "commit": _no_commitment,
            },
        )
        return self._listener.address

    def stop(self) -> None:
        """Stops accepting; what the associations in progress acknowledged is durable."""
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
