"""DICOM TLS (PS3.15 B.9, BCP 195) from the [dicom] tls_* keys: the associations this archive
opens — the SCU verbs, C-MOVE's sub-associations and the Rust SCU of migrations to a
[modalities] entry with ``tls = true`` — present the certificate and key (when set: a peer may
require one) and verify the peer's certificate against ``tls_ca`` (else the system's CAs) and
the host name connected to, TLS 1.2 at least; pynetdicom's with an ``ssl`` client context, the
Rust SCU's with rustls (``scu_tls``, ``rust/src/tls.rs``). The listener's TLS port (rustls too)
serves with the same certificate and key and verifies client certificates against
``tls_ca``."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

from dicomvault import _native
from dicomvault.config import ConfigError

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


def scu_tls(dicom: Mapping[str, Any]) -> _native.ScuTls:
    """The Rust SCU's TLS, as ``client_context`` is pynetdicom's (the same files, trust and
    checks), read once for all its associations; a ConfigError says what is wrong."""
    ca = str(dicom["tls_ca"]) or ssl.get_default_verify_paths().cafile
    if not ca:
        raise ConfigError(
            "[dicom] tls_ca is not set and the system has no CA file: a TLS peer's "
            "certificate cannot be verified"
        )
    certificate = str(dicom["tls_certificate"]) or None
    try:
        return _native.ScuTls(
            ca=ca,
            certificate=certificate,
            private_key=str(dicom["tls_private_key"]) or None if certificate else None,
        )
    except ValueError as e:
        raise ConfigError(f"[dicom] {e}") from None


def listener_tls(dicom: Mapping[str, Any]) -> _native.ListenerTls | None:
    """The listener's TLS port (None when ``tls_port`` is 0), or a ConfigError saying what is
    missing."""
    if not dicom["tls_port"]:
        return None
    if not dicom["tls_certificate"] or not dicom["tls_private_key"]:
        raise ConfigError("[dicom] tls_port needs tls_certificate and tls_private_key")
    if dicom["tls_require_client_certificate"] and not dicom["tls_ca"]:
        raise ConfigError(
            "[dicom] tls_require_client_certificate needs tls_ca, the CAs that client "
            "certificates are verified against"
        )
    return _native.ListenerTls(
        port=int(dicom["tls_port"]),
        certificate=str(dicom["tls_certificate"]),
        private_key=str(dicom["tls_private_key"]),
        ca=str(dicom["tls_ca"]) or None,
        require_client_certificate=bool(dicom["tls_require_client_certificate"]),
    )
