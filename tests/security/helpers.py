"""What the security tests share: a ``dicomvault serve`` with [http] users and tokens of each
role, certificates made by the test (``cryptography``), the corpus imported."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dicomvault.bench.peers import free_port
from dicomvault.security.accounts import Accounts, Role
from tests.net.conftest import Server

PASSWORDS = {
    "reader": "reader-password-1",
    "writer": "writer-password-1",
    "boss": "admin-password-1",
}
ROLES = {"reader": Role.READ, "writer": Role.WRITE, "boss": Role.ADMIN}


class Secured:
    """A server with auth = "users": a user and a token per role."""

    def __init__(self, tmp: Path, http: dict | None = None, **server: object) -> None:
        self.http_port = free_port()
        sections = server.pop("sections", {})
        self.server = Server(
            tmp,
            server.pop("modalities", {}),
            sections={
                "http": {
                    "enabled": True,
                    "host": "127.0.0.1",
                    "port": self.http_port,
                    "auth": "users",
                    **(http or {}),
                },
                **sections,
            },
        )
        accounts = Accounts(self.server.root)
        self.tokens: dict[Role, str] = {}
        for name, role in ROLES.items():
            accounts.add_user(name, role, PASSWORDS[name])
            self.tokens[role] = accounts.create_token(role, dt.timedelta(days=1), f"{name}-token")
        scheme = "https" if (http or {}).get("tls_certificate") else "http"
        self.url = f"{scheme}://127.0.0.1:{self.http_port}"

    def start(self) -> Secured:
        self.server.start()
        return self

    def client(self, role: Role | None = None, **options: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120, **options)

    def basic(self, user: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=(user, PASSWORDS[user]), timeout=120)


def certificates(
    directory: Path, *names: str, expired: tuple[str, ...] = ()
) -> tuple[Path, dict[str, tuple[Path, Path]]]:
    """A CA, and for each name a certificate it signed for 127.0.0.1 and localhost (those in
    ``expired`` valid only until yesterday): the CA's PEM and each name's (certificate, key)
    PEMs."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dicomvault test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    issued = {}
    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        ends = now - dt.timedelta(days=1) if name in expired else now + dt.timedelta(days=1)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=2))
            .not_valid_after(ends)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        paths = (directory / f"{name}.pem", directory / f"{name}.key")
        paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[1].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        issued[name] = paths
    return ca_path, issued
