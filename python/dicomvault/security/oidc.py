"""OpenID Connect bearer tokens: a JWT is accepted when its signature verifies against a key
of the issuer's JWKS (``<issuer>/.well-known/openid-configuration`` names ``jwks_uri``; keys
are fetched again when a token names one not yet seen), and its ``iss``, ``aud`` and ``exp``
are the issuer's, this archive's audience and in the future. The role is the highest of
read, write and admin found in the roles claim."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Mapping
from typing import Any

import jwt

from dicomvault.security.accounts import Principal, Role

# Asymmetric algorithms only: never "none", never a shared secret an attacker could pick.
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]
# Seconds of clock skew tolerated on exp, nbf and iat.
LEEWAY = 30
FETCH_TIMEOUT = 10


class OidcUnavailable(RuntimeError):
    """The issuer's configuration or keys could not be fetched."""


class OidcRejected(ValueError):
    """The token is not a valid token of the issuer for this archive."""


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    value: Any = claims
    for step in path.split("."):
        value = value.get(step) if isinstance(value, Mapping) else None
    return value


class OidcVerifier:
    def __init__(self, issuer: str, audience: str, roles_claim: str) -> None:
        self.issuer = issuer.rstrip("/")
        self.audience = audience
        self.roles_claim = roles_claim
        self._lock = threading.Lock()
        self._keys: jwt.PyJWKClient | None = None

    def _client(self) -> jwt.PyJWKClient:
        with self._lock:
            if self._keys is None:
                url = f"{self.issuer}/.well-known/openid-configuration"
                try:
                    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as response:
                        discovery = json.load(response)
                except (OSError, ValueError) as e:
                    raise OidcUnavailable(f"{url}: {e}") from e
                if discovery.get("issuer", "").rstrip("/") != self.issuer:
                    raise OidcUnavailable(f"{url} names issuer {discovery.get('issuer')!r}")
                self._keys = jwt.PyJWKClient(
                    discovery["jwks_uri"], cache_keys=True, lifespan=300, timeout=FETCH_TIMEOUT
                )
            return self._keys

    def verify(self, token: str) -> Principal:
        """The token's principal; OidcRejected when it is not valid here."""
        client = self._client()
        try:
            key = client.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as e:
            raise OidcUnavailable(str(e)) from e
        except jwt.exceptions.PyJWTError as e:
            raise OidcRejected(f"no key of the issuer signed it: {e}") from e
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.exceptions.PyJWTError as e:
            raise OidcRejected(str(e)) from e
        roles = _claim(claims, self.roles_claim)
        roles = [roles] if isinstance(roles, str) else roles if isinstance(roles, list) else []
        granted = [r for name in roles if isinstance(name, str) and (r := _role(name))]
        name = str(claims.get("preferred_username") or claims.get("sub") or "")
        if not granted or not name:
            raise OidcRejected(f"no read, write or admin role in claim {self.roles_claim!r}")
        return Principal(name, max(granted), "oidc")


def _role(name: str) -> Role | None:
    try:
        return Role.named(name)
    except ValueError:
        return None
