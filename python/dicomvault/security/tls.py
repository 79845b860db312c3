"""DICOM TLS for the associations this archive opens (PS3.15 B.9, BCP 195): the SCU verbs and
C-MOVE's sub-associations to a [modalities] entry with ``tls = true`` use a client context
with the [dicom] certificate and key (when set: a peer may require one) and verify the peer's
certificate against ``tls_ca`` (else the system's CAs), TLS 1.2 at least."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

# TLS 1.2's forward-secret AEAD suites (BCP 195); TLS 1.3's are OpenSSL's own.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM"


def client_context(dicom: Mapping[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(dicom["tls_ca"]) or None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    if dicom["tls_certificate"]:
        context.load_cert_chain(str(dicom["tls_certificate"]), str(dicom["tls_private_key"]))
    return context
