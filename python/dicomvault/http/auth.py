"""Who may use the HTTP server, and for what: the ``Guard`` middleware in front of every route
(REST, DICOMweb, WADO-URI, the web UI, /metrics, /openapi.json) and the login routes.

In order, for each request: the ``Host`` must be one the server answers to (an IP address,
localhost, this machine's names, ``[http] allowed_hosts``: anything else is DNS rebinding);
then the credentials — HTTP Basic (a user's password), Bearer (an API token, or with
``auth = "oidc"`` an OpenID Connect JWT) or the web UI's session cookie — name a principal
(401 otherwise; a browser navigating is sent to the login page); the principal's role must be
the route's (403); a state-changing request authenticated by the cookie must carry the
session's CSRF token in ``X-CSRF-Token`` (403). Failed logins are counted per user name and
per client address: past ``max_failed_logins`` for a user, or ``CLIENTS_PER_ADDRESS`` times
that for an address, in ``failed_login_window_s``, the next are refused (429) without a
password check — so one client guessing does not lock out the others behind its address (a
load balancer, a NAT). A valid API token or JWT is never refused so: it cannot be guessed.
With ``auth = "none"`` (loopback only) every request is the anonymous administrator, and only
the Host check applies.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import ipaddress
import logging
import secrets
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from urllib.parse import quote, urlsplit

from starlette.datastructures import Headers, QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request, cookie_parser
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomvault.audit import AuditTrail, Who
from dicomvault.config import ConfigError, Settings
from dicomvault.dicom.values import is_uid
from dicomvault.security.accounts import Accounts, Principal, Role
from dicomvault.security.oidc import OidcRejected, OidcUnavailable, OidcVerifier

log = logging.getLogger("dicomvault.http")

AUTH_MODES = ("none", "users", "oidc")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION_COOKIE = "dicomvault_session"
CSRF_COOKIE = "dicomvault_csrf"
CSRF_HEADER = "x-csrf-token"
LOGIN = "/auth/login"
LOGIN_PAGE = Path(__file__).parent / "ui" / "login.html"
# What the login page needs before anyone is logged in.
PUBLIC = {("GET", LOGIN), ("POST", LOGIN), ("GET", "/ui/login.js"), ("GET", "/ui/style.css")}
# The routes that change something but need less than admin (every other is admin's):
# (method, route path) -> role.
ROLES: dict[tuple[str, str], Role] = {
    ("POST", "/instances"): Role.WRITE,
    ("POST", "/dicom-web/studies"): Role.WRITE,
    ("POST", "/modalities/{name}/move"): Role.WRITE,  # into this archive; elsewhere: admin
    ("POST", "/modalities/{name}/echo"): Role.READ,
    ("POST", "/modalities/{name}/query"): Role.READ,
    ("POST", "/tools/lookup"): Role.READ,
    ("POST", "/auth/logout"): Role.READ,
}
# Path and WADO-URI parameters that hold UIDs.
UID_PARAMETERS = frozenset(
    {
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "study",
        "series",
        "instance",
        "studyUID",
        "seriesUID",
        "objectUID",
    }
)
# Seconds a password check stays valid for repeated HTTP Basic requests with it.
BASIC_CACHE_SECONDS = 300
BASIC_CACHE_SIZE = 1024

# Every request when [http] auth is "none"; whoever loads the login page otherwise.
ANONYMOUS = Principal("", Role.ADMIN, "none")
VISITOR = Principal("", Role.READ, "none")


def required_role(method: str, route: str | None) -> Role:
    """The least role a request needs: reading for GET (and for any path no route has, so
    that nothing is told apart before credentials), the table's, else admin's."""
    if method in SAFE_METHODS or route is None:
        return Role.READ
    return ROLES.get((method, route), Role.ADMIN)


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_settings(settings: Settings) -> None:
    """ConfigError for an [http] section the server must not start with."""
    http = settings["http"]
    auth = str(http["auth"])
    if auth not in AUTH_MODES:
        raise ConfigError(f"[http] auth must be none, users or oidc, not {auth!r}")
    if auth == "none" and not is_loopback(str(http["host"])):
        raise ConfigError(
            f"[http] host {http['host']} is not a loopback address and [http] auth is "
            '"none": anyone on the network could read and delete every patient. Set [http] '
            'auth = "users" (add users with `dicomvault user add`) or "oidc", or listen on '
            "127.0.0.1"
        )
    if auth == "oidc" and not http["oidc_issuer"]:
        raise ConfigError('[http] auth = "oidc" needs [http] oidc_issuer')
    if bool(http["tls_certificate"]) != bool(http["tls_private_key"]):
        raise ConfigError("[http] tls_certificate and tls_private_key go together")


def require(request: Request, role: Role) -> None:
    """403 unless the request's principal has ``role``."""
    principal = principal_of(request)
    if principal.role < role:
        raise HTTPException(403, f"{role.label} role required")


def principal_of(request: Request) -> Principal:
    return request.scope.get("state", {}).get("principal", ANONYMOUS)


def who(request: Request) -> Who:
    """The audit trail's name for who made the request."""
    return Who(user=principal_of(request).name or None, address=_client(request.scope), via="http")


def request_source(request: Request, channel: str) -> str:
    """The source an uploaded instance's record carries: ``REST:user@address`` (``REST@``
    without a user), which the audit trail reads who stored it from."""
    user = principal_of(request).name
    return (
        f"{channel}:{user}@{_client(request.scope)}"
        if user
        else f"{channel}@{_client(request.scope)}"
    )


# The failures one client address may make per window, in max_failed_logins: several users
# may share an address (a NAT, a load balancer), and one of them guessing must not lock out
# the others, while one address spraying a password over many user names is still stopped.
CLIENTS_PER_ADDRESS = 10
# Keys counted before those past the window are swept out.
FORGET_PAST = 4096


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else ""


# Failed logins --------------------------------------------------------------------------------


class FailedLogins:
    """Failures per key (a client address, a user name) in a sliding window."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self._failures: dict[str, collections.deque[float]] = {}

    def _recent(self, key: str, now: float) -> collections.deque[float]:
        failures = self._failures.get(key)
        if failures is None:
            return collections.deque()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[key]
        return failures

    def retry_after(self, keys: Iterable[str]) -> int:
        """Seconds until any of ``keys`` may try again (0: now)."""
        now = time.monotonic()
        waits = [
            f[0] + self.window - now
            for key in keys
            if len(f := self._recent(key, now)) >= self.limit
        ]
        return max(1, round(max(waits))) if waits else 0

    def failed(self, keys: Iterable[str]) -> None:
        now = time.monotonic()
        if len(self._failures) > FORGET_PAST:
            # Names tried once are not kept for ever: those past the window go.
            for key in list(self._failures):
                self._recent(key, now)
        for key in keys:
            self._recent(key, now)
            self._failures.setdefault(key, collections.deque()).append(now)

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)


# Sessions -------------------------------------------------------------------------------------


@dataclass
class Session:
    principal: Principal
    csrf: str
    seen: float = field(default_factory=time.monotonic)


class Sessions:
    """The web UI's sessions, in memory (a restart logs everyone out), by the SHA-256 of
    their cookie; each ends after ``idle`` seconds without a request."""

    def __init__(self, idle: float) -> None:
        self.idle = idle
        self._sessions: dict[str, Session] = {}

    @staticmethod
    def _key(cookie: str) -> str:
        return hashlib.sha256(cookie.encode()).hexdigest()

    def open(self, principal: Principal) -> tuple[str, Session]:
        now = time.monotonic()
        for key in [k for k, s in self._sessions.items() if now - s.seen > self.idle]:
            del self._sessions[key]
        cookie = secrets.token_urlsafe(32)
        session = Session(principal, secrets.token_urlsafe(32))
        self._sessions[self._key(cookie)] = session
        return cookie, session

    def get(self, cookie: str) -> Session | None:
        key = self._key(cookie)
        session = self._sessions.get(key)
        now = time.monotonic()
        if session is None:
            return None
        if now - session.seen > self.idle:
            del self._sessions[key]
            return None
        session.seen = now
        return session

    def close(self, cookie: str) -> None:
        self._sessions.pop(self._key(cookie), None)


# Hosts ----------------------------------------------------------------------------------------


@cache
def _machine_names() -> frozenset[str]:
    names = {socket.gethostname(), socket.getfqdn()}
    return frozenset(n.lower() for n in names if n)


def host_allowed(host_header: str, allowed: Iterable[str]) -> bool:
    """Whether a Host header names this server: an IP address (no DNS, so no rebinding),
    localhost, this machine's names or a configured one (ports aside)."""
    host = urlsplit(f"//{host_header}").hostname or ""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    host = host.rstrip(".")
    return (
        host == "localhost"
        or host in _machine_names()
        or host in {a.lower().rstrip(".") for a in allowed}
    )


# The guard ------------------------------------------------------------------------------------


class Refused(Exception):
    """A request answered here, not by the application."""

    def __init__(self, response: Response) -> None:
        self.response = response


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=dict(headers or {}))


class Authenticator:
    """The archive's accounts, sessions, the OIDC issuer and the count of failed logins, and
    what the login routes do with them."""

    def __init__(self, settings: Settings, audit: AuditTrail) -> None:
        http = settings["http"]
        self.mode = str(http["auth"])
        self.allowed_hosts = [str(h) for h in http["allowed_hosts"]]
        self.secure = bool(http["tls_certificate"])
        self.accounts = Accounts(settings.root)
        self.sessions = Sessions(float(http["session_idle_minutes"]) * 60)
        limit, window = int(http["max_failed_logins"]), float(http["failed_login_window_s"])
        self.by_user = FailedLogins(limit, window)
        self.by_address = FailedLogins(limit * CLIENTS_PER_ADDRESS, window)
        self.oidc = (
            OidcVerifier(
                str(http["oidc_issuer"]),
                str(http["oidc_audience"]),
                str(http["oidc_roles_claim"]),
            )
            if self.mode == "oidc"
            else None
        )
        self.audit = audit
        self._basic_key = secrets.token_bytes(32)
        self._basic: collections.OrderedDict[bytes, tuple[str, str, float]] = (
            collections.OrderedDict()
        )

    # Credentials ------------------------------------------------------------------------------

    async def authenticate(self, scope: Scope) -> tuple[Principal | None, Session | None]:
        """The request's principal (None when it has no credentials) and its session (when
        the cookie authenticated it). Refused for credentials that are wrong."""
        headers = Headers(scope=scope)
        authorization = headers.get("authorization", "")
        scheme, _, credentials = authorization.partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            try:
                user, _, password = (
                    base64.b64decode(credentials, validate=True).decode().partition(":")
                )
            except (ValueError, UnicodeDecodeError):
                raise Refused(_error(400, "malformed Basic credentials")) from None
            return await self.password_login(scope, user, password), None
        if scheme == "bearer":
            return await self._bearer(scope, credentials.strip()), None
        if authorization:
            raise Refused(_error(400, "Authorization: Basic or Bearer"))
        cookie = _cookie(headers, SESSION_COOKIE)
        if cookie:
            session = self.sessions.get(cookie)
            if session is not None:
                return session.principal, session
        return None, None

    async def password_login(self, scope: Scope, user: str, password: str) -> Principal:
        # Counted before anything is checked, the remembered passwords too: past the count
        # a right guess must look like a wrong one.
        self._throttle(scope, user)
        cached = self._cached_password(user, password)
        if cached is not None:
            return cached
        principal = await asyncio.to_thread(self.accounts.check_password, user, password)
        if principal is None:
            raise self._failed(scope, user, "password")
        self.by_user.succeeded(user)
        self._remember_password(user, password)
        return principal

    def _password_key(self, user: str, password: str) -> bytes:
        return hmac.digest(self._basic_key, f"{user}\0{password}".encode(), "sha256")

    def _cached_password(self, user: str, password: str) -> Principal | None:
        entry = self._basic.get(self._password_key(user, password))
        if entry is None:
            return None
        name, stored, expires = entry
        current = self.accounts.password_hash(name)
        role = self.accounts.role_of(name)
        if time.monotonic() > expires or current is None or role is None:
            return None
        if not hmac.compare_digest(current, stored):  # the password changed since
            return None
        return Principal(name, role, "password")

    def _remember_password(self, user: str, password: str) -> None:
        stored = self.accounts.password_hash(user)
        if stored is None:
            return
        key = self._password_key(user, password)
        self._basic[key] = (user, stored, time.monotonic() + BASIC_CACHE_SECONDS)
        self._basic.move_to_end(key)
        while len(self._basic) > BASIC_CACHE_SIZE:
            self._basic.popitem(last=False)

    async def _bearer(self, scope: Scope, token: str) -> Principal:
        # Checked before the count: a token cannot be guessed, so a valid one is taken
        # whatever others tried from the same address; a wrong one past the count is 429.
        if token.startswith("dvt_") or self.oidc is None:
            principal = self.accounts.check_token(token)
            if principal is None:
                self._throttle(scope, "")
                raise self._failed(scope, "", "token")
            return principal
        try:
            return await asyncio.to_thread(self.oidc.verify, token)
        except OidcUnavailable as e:
            log.error("OpenID Connect issuer unavailable: %s", e)
            raise Refused(_error(503, "the identity provider cannot be reached")) from e
        except OidcRejected as e:
            self._throttle(scope, "")
            raise self._failed(scope, "", f"oidc: {e}") from e

    def _throttle(self, scope: Scope, user: str) -> None:
        """429 past the failures of the client's address, or of ``user`` (when one)."""
        wait = max(
            self.by_address.retry_after([_client(scope)]),
            self.by_user.retry_after([user] if user else []),
        )
        if wait:
            raise Refused(
                _error(429, "too many failed logins: try again later", {"Retry-After": str(wait)})
            )

    def _failed(self, scope: Scope, user: str, how: str) -> Refused:
        """Counts and records a failed login; the refusal to raise."""
        self.by_address.failed([_client(scope)])
        if user:
            self.by_user.failed([user])
        self.audit.record(
            "login",
            Who(user=user or None, address=_client(scope), via="http"),
            outcome="failure",
            what=f"{scope['method']} {scope['path']}",
            detail={"method": how.split(":")[0]},
        )
        as_user = f" as {user}" if user else ""
        log.warning("failed login (%s) from %s%s", how, _client(scope), as_user)
        return Refused(challenge(scope, "wrong credentials"))

    # Login routes -----------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        return [
            Route(LOGIN, self.login_page, methods=["GET"]),
            Route(LOGIN, self.login, methods=["POST"]),
            Route("/auth/logout", self.logout, methods=["POST"]),
            Route("/auth/whoami", self.whoami, methods=["GET"]),
        ]

    async def login_page(self, request: Request) -> Response:
        """The web UI's login page.
        ---
        responses:
          200: {description: The login form, content: {text/html: {}}}
        """
        return FileResponse(LOGIN_PAGE, media_type="text/html")

    async def login(self, request: Request) -> Response:
        """Opens a web UI session: the session cookie (HttpOnly, SameSite=Strict, Secure
        under TLS) and the CSRF cookie whose value state-changing requests send back in the
        X-CSRF-Token header.
        ---
        requestBody:
          content:
            application/json:
              schema:
                type: object
                properties: {username: {type: string}, password: {type: string}}
        responses:
          200: {description: "user, role"}
          401: {description: Wrong user name or password}
          429: {description: Too many failed logins}
        """
        if self.mode == "none":
            return _error(400, "this server has no users: [http] auth is none")
        try:
            body = await request.json()
            user, password = str(body["username"]), str(body["password"])
        except (ValueError, KeyError, TypeError):
            return _error(400, 'expected {"username": ..., "password": ...}')
        try:
            principal = await self.password_login(request.scope, user, password)
        except Refused as refused:
            return refused.response
        cookie, session = self.sessions.open(principal)
        self.audit.record("login", who_for(principal, request.scope), what="web UI session")
        response = JSONResponse({"user": principal.name, "role": principal.role.label})
        common = {"path": "/", "secure": self.secure, "samesite": "strict"}
        response.set_cookie(SESSION_COOKIE, cookie, httponly=True, **common)  # type: ignore[arg-type]
        response.set_cookie(CSRF_COOKIE, session.csrf, httponly=False, **common)  # type: ignore[arg-type]
        return response

    async def logout(self, request: Request) -> Response:
        """Ends the web UI session.
        ---
        responses:
          200: {description: "Logged out"}
        """
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            self.sessions.close(cookie)
        self.audit.record("logout", who(request), what="web UI session")
        response = JSONResponse({"ok": True})
        for name in (SESSION_COOKIE, CSRF_COOKIE):
            response.delete_cookie(name, path="/", secure=self.secure, samesite="strict")
        return response

    async def whoami(self, request: Request) -> Response:
        """Who the request is from, and what that role may do.
        ---
        responses:
          200: {description: "user, role, auth (none, users or oidc)"}
        """
        principal = principal_of(request)
        return JSONResponse(
            {"user": principal.name, "role": principal.role.label, "auth": self.mode}
        )


def who_for(principal: Principal, scope: Scope) -> Who:
    return Who(user=principal.name or None, address=_client(scope), via="http")


def _cookie(headers: Headers, name: str) -> str | None:
    return cookie_parser(headers.get("cookie", "")).get(name)


def challenge(scope: Scope, message: str) -> Response:
    """401 with the schemes a client may use; a request from the web UI (which says so with
    X-Requested-With) gets no Basic challenge, which would make the browser ask itself."""
    response = _error(401, message)
    if Headers(scope=scope).get("x-requested-with") is None:
        response.headers.append("WWW-Authenticate", 'Basic realm="dicomvault", charset="UTF-8"')
        response.headers.append("WWW-Authenticate", 'Bearer realm="dicomvault"')
    return response


def matched_route(routes: list[BaseRoute], scope: Scope) -> tuple[str | None, dict[str, str]]:
    """The path template of the route a request goes to (one that lacks the method
    included), and its path parameters."""
    partial: tuple[str | None, dict[str, str]] = (None, {})
    for route in routes:
        match, child = route.matches(scope)
        found = (getattr(route, "path", None), child.get("path_params", {}))
        if match is Match.FULL:
            return found
        if match is Match.PARTIAL and partial[0] is None:
            partial = found
    return partial


def _check_identifiers(params: Mapping[str, str], query: Mapping[str, str]) -> None:
    """400 for a UID in a path (or WADO-URI's parameters) that is not a UID (PS3.5 9.1)."""
    for name, value in [*params.items(), *query.items()]:
        if name in UID_PARAMETERS and not is_uid(value):
            raise Refused(_error(400, f"{name} is not a UID: {value!r}"))


class Guard:
    """The ASGI middleware: Host, credentials, role, CSRF (see the module)."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator, routes: list[BaseRoute]) -> None:
        self.app = app
        self.auth = authenticator
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            route, params = matched_route(self.routes, scope)
            if route is not None:
                query = dict(QueryParams(scope["query_string"])) if route == "/wado" else {}
                _check_identifiers(params, query)
            scope.setdefault("state", {}).update(route=route, path_params=params)
            principal = await self._principal(scope, route)
        except Refused as refused:
            await refused.response(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    async def _principal(self, scope: Scope, route: str | None) -> Principal:
        headers = Headers(scope=scope)
        if not host_allowed(headers.get("host", ""), self.auth.allowed_hosts):
            log.warning("request for host %r refused", headers.get("host", ""))
            raise Refused(_error(400, "this server does not answer to that host name"))
        method, path = scope["method"], scope["path"]
        if self.auth.mode == "none":
            return ANONYMOUS
        if (method, path) in PUBLIC:
            return VISITOR
        principal, session = await self.auth.authenticate(scope)
        if principal is None:
            if method == "GET" and "text/html" in headers.get("accept", ""):
                target = quote(
                    path + (f"?{scope['query_string'].decode()}" if scope["query_string"] else ""),
                    safe="",
                )
                raise Refused(RedirectResponse(f"{LOGIN}?next={target}", status_code=303))
            raise Refused(challenge(scope, "authentication required"))
        role = required_role(method, route)
        if principal.role < role:
            self.auth.audit.record(
                "access",
                who_for(principal, scope),
                outcome="denied",
                what=f"{method} {path}",
                detail={"role": principal.role.label, "required": role.label},
            )
            raise Refused(_error(403, f"{role.label} role required"))
        if session is not None and method not in SAFE_METHODS:
            presented = headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(presented.encode(), session.csrf.encode()):
                raise Refused(_error(403, "missing or wrong CSRF token"))
        return principal


def security_headers(tls: bool) -> dict[str, str]:
    """Headers every response gets (unless it set them): no sniffing, no framing, no caching,
    no referrer to other sites, a
    Content Security Policy for the UI's pages (scripts from the server only) and, under TLS,
    HSTS."""
    headers = {
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "same-origin",
        # Patient data stays out of shared and browser caches.
        "Cache-Control": "no-store",
        "Content-Security-Policy": (
            "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
            "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
        ),
    }
    if tls:
        headers["Strict-Transport-Security"] = "max-age=31536000"
    return headers


class SecurityHeaders:
    def __init__(self, app: ASGIApp, headers: Mapping[str, str]) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [
                    *message.get("headers", []),
                    *((k, v) for k, v in self.headers if k not in present),
                ]
            await send(message)

        await self.app(scope, receive, with_headers)
