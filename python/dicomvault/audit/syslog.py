"""Forwarding the audit trail to a collector: RFC 5424 syslog messages whose MSG is a DICOM
Audit Message (PS3.15 A.5, the schema of A.5.1), over TCP (RFC 6587 octet counting), TLS
(RFC 5425) or UDP (RFC 5426), facility 10 (security/authorization) severity 5 (notice) and
MSGID ``IHE+RFC-3881`` as IHE ATNA has it.

A background thread sends them, reconnecting after a failure; the operation that made a
record never waits for the collector. The local trail is the record of reference: what a
collector could not be sent (its queue full, the collector gone) is logged and dropped."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import queue
import socket
import ssl
import threading
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("dicomvault.audit")

# <PRI> = facility 10 (security/authorization) * 8 + severity 5 (notice).
PRIORITY = 85
MSGID = "IHE+RFC-3881"
QUEUE_LIMIT = 10_000

# event: (EventID code, its meaning, EventActionCode) from PS3.15 A.5.3 (DCM codes, CID 400).
EVENTS = {
    "store": ("110104", "DICOM Instances Transferred", "C"),
    "retrieve": ("110104", "DICOM Instances Transferred", "R"),
    "send": ("110104", "DICOM Instances Transferred", "R"),
    "read": ("110103", "DICOM Instances Accessed", "R"),
    "export": ("110106", "Export", "R"),
    "delete": ("110105", "DICOM Study Deleted", "D"),
    "query": ("110112", "Query", "E"),
    "migrate": ("110107", "Import", "C"),
    "repack": ("110100", "Application Activity", "E"),
    "login": ("110114", "User Authentication", "E"),
    "logout": ("110114", "User Authentication", "E"),
    "access": ("110113", "Security Alert", "E"),
    "account": ("110113", "Security Alert", "E"),
}
# EventTypeCode: of User Authentication (A.5.3.11), Login and Logout; of a Security Alert, an
# access refused and a user or token changed.
EVENT_TYPES = {
    "login": ("110122", "Login"),
    "logout": ("110123", "Logout"),
    "access": ("110132", "Use of a restricted function"),
    "account": ("110137", "User security Attributes Changed"),
}
# EventOutcomeIndicator: 0 success, 4 minor failure (refused), 8 serious failure.
OUTCOMES = {"success": "0", "denied": "4", "failure": "8"}
# Whether the peer (rather than this archive) is where the instances went from.
_PEER_IS_SOURCE = {"store", "migrate"}


def _code(parent: ET.Element, tag: str, code: str, system: str, text: str) -> ET.Element:
    return ET.SubElement(
        parent, tag, {"csd-code": code, "codeSystemName": system, "originalText": text}
    )


def audit_message(record: Mapping[str, Any], source_id: str) -> bytes:
    """The DICOM Audit Message (PS3.15 A.5.1) of a trail record."""
    event = record["event"]
    code, meaning, action = EVENTS.get(event, ("110100", "Application Activity", "E"))
    message = ET.Element("AuditMessage")
    identification = ET.SubElement(
        message,
        "EventIdentification",
        {
            "EventActionCode": action,
            "EventDateTime": record["time"],
            "EventOutcomeIndicator": OUTCOMES.get(record["outcome"], "8"),
        },
    )
    _code(identification, "EventID", code, "DCM", meaning)
    if event in EVENT_TYPES:
        type_code, type_meaning = EVENT_TYPES[event]
        _code(identification, "EventTypeCode", type_code, "DCM", type_meaning)
    # The requestor: a user, or a calling AE title at its address.
    requestor = {"UserID": record.get("user") or record.get("ae") or "", "UserIsRequestor": "true"}
    if record.get("ae"):
        requestor["AlternativeUserID"] = record["ae"]
    if record.get("address"):
        requestor["NetworkAccessPointID"] = record["address"]
        requestor["NetworkAccessPointTypeCode"] = "2"  # an IP address
    peer = ET.SubElement(message, "ActiveParticipant", requestor)
    archive = ET.SubElement(
        message,
        "ActiveParticipant",
        {"UserID": source_id, "UserIsRequestor": "false", "NetworkAccessPointTypeCode": "1"},
    )
    archive.set("NetworkAccessPointID", socket.gethostname())
    if code == "110104":
        source, destination = (peer, archive) if event in _PEER_IS_SOURCE else (archive, peer)
        _code(source, "RoleIDCode", "110153", "DCM", "Source Role ID")
        _code(destination, "RoleIDCode", "110152", "DCM", "Destination Role ID")
    ET.SubElement(message, "AuditSourceIdentification", {"AuditSourceID": source_id}).append(
        ET.Element(
            "AuditSourceTypeCode",
            {"csd-code": "4", "codeSystemName": "DCM", "originalText": "Application Server"},
        )
    )
    for study in record.get("studies", []):
        obj = ET.SubElement(
            message,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": study,
                "ParticipantObjectTypeCode": "2",  # system object
                "ParticipantObjectTypeCodeRole": "3",  # report
            },
        )
        _code(obj, "ParticipantObjectIDTypeCode", "110180", "DCM", "Study Instance UID")
    detail = record.get("detail") or {}
    if event == "query":
        obj = ET.SubElement(
            message,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": str(detail.get("model", "")),
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectTypeCodeRole": "24",  # query
            },
        )
        _code(obj, "ParticipantObjectIDTypeCode", "110181", "DCM", "SOP Class UID")
        query = json.dumps(detail.get("keys", {}), sort_keys=True).encode()
        ET.SubElement(obj, "ParticipantObjectQuery").text = base64.b64encode(query).decode()
    for patient in record.get("patients", []):
        obj = ET.SubElement(
            message,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": patient["id"],
                "ParticipantObjectTypeCode": "1",  # person
                "ParticipantObjectTypeCodeRole": "1",  # patient
            },
        )
        _code(obj, "ParticipantObjectIDTypeCode", "2", "RFC-3881", "Patient Number")
        if patient.get("name"):
            ET.SubElement(obj, "ParticipantObjectName").text = patient["name"]
    return ET.tostring(message, encoding="utf-8", xml_declaration=True)


def syslog_frame(record: Mapping[str, Any], source_id: str) -> bytes:
    """An RFC 5424 message (no structured data; the MSG in UTF-8 with its BOM)."""
    header = (
        f"<{PRIORITY}>1 {record['time']} {socket.gethostname()} dicomvault {os.getpid()} {MSGID} - "
    )
    return header.encode() + b"\xef\xbb\xbf" + audit_message(record, source_id)


class SyslogForwarder:
    """Sends records to ``tcp://``, ``tcp+tls://`` or ``udp://host:port`` from a thread."""

    def __init__(self, url: str, ca: str = "") -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("tcp", "tcp+tls", "udp") or not parts.hostname or not parts.port:
            raise ValueError(
                f"[audit] syslog: tcp://host:port, tcp+tls://host:port or udp://host:port, "
                f"not {url!r}"
            )
        self.scheme, self.host, self.port = parts.scheme, parts.hostname, parts.port
        self.source_id = f"dicomvault@{socket.gethostname()}"
        self._tls: ssl.SSLContext | None = None
        if self.scheme == "tcp+tls":
            self._tls = ssl.create_default_context(cafile=ca or None)
        self._queue: queue.Queue[bytes | None] = queue.Queue(QUEUE_LIMIT)
        self._socket: socket.socket | None = None
        self._dropped = 0
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
        self._thread.start()

    def send(self, records: Sequence[Mapping[str, Any]]) -> None:
        for record in records:
            try:
                self._queue.put_nowait(syslog_frame(record, self.source_id))
            except queue.Full:
                self._dropped += 1
                if self._dropped == 1 or self._dropped % 1000 == 0:
                    log.error(
                        "syslog %s:%d is behind: %d records not forwarded",
                        self.host,
                        self.port,
                        self._dropped,
                    )

    def _connect(self) -> socket.socket:
        if self.scheme == "udp":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.connect((self.host, self.port))
            return sock
        sock = socket.create_connection((self.host, self.port), timeout=10)
        if self._tls is not None:
            sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        return sock

    def _deliver(self, frame: bytes) -> None:
        if self._socket is None:
            self._socket = self._connect()
        if self.scheme == "udp":
            self._socket.send(frame)
        else:  # octet counting (RFC 6587 3.4.1, RFC 5425 4.3)
            self._socket.sendall(f"{len(frame)} ".encode() + frame)

    def _run(self) -> None:
        while (frame := self._queue.get()) is not None:
            for attempt in (1, 2):  # once more on a new connection
                try:
                    self._deliver(frame)
                    break
                except OSError as e:
                    if self._socket is not None:
                        self._socket.close()
                        self._socket = None
                    if attempt == 2:
                        log.error("syslog %s:%d: record not forwarded: %s", self.host, self.port, e)

    def close(self, timeout: float = 5) -> None:
        """Sends what is queued (for at most ``timeout`` seconds), then stops."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        if self._socket is not None:
            self._socket.close()
