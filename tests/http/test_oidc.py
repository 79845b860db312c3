"""OpenID Connect bearer tokens ([http] auth = "oidc") against a test issuer on loopback: its
keys made here, its discovery document and JWKS served by a small HTTP server. Tokens it
signed are accepted with the role of their roles claim; a wrong signature, issuer or
audience, an expired token, an unsigned one or one "signed" with the public key as an HMAC
secret are 401 (RFC 7519 4.1.1-4.1.4, RFC 8725 3.1-3.2)."""

from __future__ import annotations

import http.server
import json
import threading
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from dicomvault.audit import read_records
from dicomvault.bench.peers import free_port
from tests.net.conftest import Server

AUDIENCE = "dicomvault"


class Issuer:
    """An identity provider's public side: discovery and JWKS on 127.0.0.1."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/realms/test"
        jwk = RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True) | {"kid": "k1", "use": "sig"}
        documents = {
            "/realms/test/.well-known/openid-configuration": {
                "issuer": self.url,
                "jwks_uri": f"{self.url}/certs",
            },
            "/realms/test/certs": {"keys": [jwk]},
        }

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(documents.get(self.path, {})).encode()
                self.send_response(200 if self.path in documents else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def token(self, key=None, algorithm: str = "RS256", **claims: object) -> str:
        now = int(time.time())
        payload = {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": "f81d4fae",
            "preferred_username": "dr.house",
            "iat": now,
            "exp": now + 300,
            "realm_access": {"roles": ["offline_access", "read"]},
        } | claims
        return jwt.encode(
            payload, self.key if key is None else key, algorithm=algorithm, headers={"kid": "k1"}
        )

    def stop(self) -> None:
        self.httpd.shutdown()


@pytest.fixture(scope="module")
def oidc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("oidc")
    issuer = Issuer()
    http_port = free_port()
    server = Server(
        tmp,
        {},
        sections={
            "http": {
                "enabled": True,
                "host": "127.0.0.1",
                "port": http_port,
                "auth": "oidc",
                "oidc_issuer": issuer.url,
                "oidc_roles_claim": "realm_access.roles",
            }
        },
    ).start()
    yield server, issuer, f"http://127.0.0.1:{http_port}"
    assert server.stop() == 0
    issuer.stop()


def get(url: str, token: str, path: str = "/statistics", method: str = "GET") -> httpx.Response:
    return httpx.request(method, url + path, headers={"Authorization": f"Bearer {token}"})


def test_tokens_of_the_issuer_are_accepted_with_their_role(oidc):
    server, issuer, url = oidc
    assert get(url, issuer.token()).status_code == 200
    assert get(url, issuer.token(), "/studies/1.2.3", "DELETE").status_code == 403
    admin = issuer.token(realm_access={"roles": ["admin"]})
    assert get(url, admin, "/studies/1.2.3", "DELETE").status_code == 404  # allowed; no such
    assert get(url, issuer.token()).status_code == 200
    assert get(url, issuer.token(), "/auth/whoami").json()["user"] == "dr.house"
    records = list(read_records(server.root / "audit"))
    assert any(r["event"] == "delete" and r.get("user") == "dr.house" for r in records)


@pytest.mark.parametrize(
    "case",
    ["signature", "issuer", "audience", "expired", "no role", "unsigned", "hmac with public key"],
)
def test_invalid_tokens_are_refused(oidc, case):
    _, issuer, url = oidc
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = issuer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    token = {
        "signature": lambda: issuer.token(key=other),
        "issuer": lambda: issuer.token(iss="http://127.0.0.1:1/realms/evil"),
        "audience": lambda: issuer.token(aud="another-application"),
        "expired": lambda: issuer.token(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200),
        "no role": lambda: issuer.token(realm_access={"roles": ["offline_access"]}),
        "unsigned": lambda: issuer.token(key="", algorithm="none"),
        "hmac with public key": lambda: _hmac_token(issuer, public_pem),
    }[case]()
    response = get(url, token)
    assert response.status_code == 401, response.text


def _hmac_token(issuer: Issuer, secret: bytes) -> str:
    """The algorithm confusion attack: HS256 keyed with the issuer's public key."""
    import base64
    import hashlib
    import hmac

    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    claims = jwt.decode(issuer.token(), options={"verify_signature": False})
    signing_input = f"{part({'alg': 'HS256', 'kid': 'k1', 'typ': 'JWT'})}.{part(claims)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).decode().rstrip('=')}"
