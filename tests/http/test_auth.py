"""Authentication and authorization of the HTTP server ([http] auth = "users"): every route of
/openapi.json refuses a request without credentials (401) and a role below its own (403); a
read token cannot store, delete, send or repack; Basic, Bearer and the web UI's session with
its CSRF token; failed logins limited and recorded; revoked and expired tokens refused;
HTTPS; and `serve` refusing auth "none" off loopback."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydicom.data import get_testdata_file

from dicomvault.audit import read_records
from dicomvault.bench.corpus import clinical_corpus
from dicomvault.bench.peers import free_port
from dicomvault.security.accounts import Accounts, Role
from tests.security.helpers import PASSWORDS, Secured, certificates

# Routes anyone may use: the login page and what it loads.
PUBLIC = {("get", "/auth/login"), ("post", "/auth/login")}
# State-changing routes below admin (the roles: write stores and uploads; read
# queries, retrieves and views).
WRITE = {
    ("post", "/instances"),
    ("post", "/dicom-web/studies"),
    ("post", "/modalities/{name}/move"),
}
READ = {
    ("post", "/tools/lookup"),
    ("post", "/modalities/{name}/echo"),
    ("post", "/modalities/{name}/query"),
    ("post", "/auth/logout"),
}
MR = Path(get_testdata_file("MR_small.dcm"))


def needed(method: str, path: str) -> Role:
    if method in ("get", "head") or (method, path) in READ:
        return Role.READ
    return Role.WRITE if (method, path) in WRITE else Role.ADMIN


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auth")
    secured = Secured(
        tmp,
        modalities={"NOWHERE": {"aet": "NOWHERE", "host": "127.0.0.1", "port": free_port()}},
    ).start()
    corpus = clinical_corpus(tmp / "corpus")
    secured.server.run("import", tmp / "corpus", "--quiet")
    yield secured, corpus
    assert secured.server.stop() == 0


def concrete(path: str, corpus: list) -> str:
    values = {
        "name": "NOWHERE",
        "PatientID": corpus[0].patient_id,
        "frames": "1",
        "path": "7FE00010",
    }
    return re.sub(
        r"{(\w+)(?::\w+)?}", lambda m: values.get(m[1], corpus[0].study_instance_uid), path
    )


def test_every_route_needs_credentials_and_its_role(secured):
    srv, corpus = secured
    with srv.client(Role.ADMIN) as admin:
        spec = admin.get("/openapi.json").json()
    operations = [
        (method, path)
        for path, item in spec["paths"].items()
        for method in item
        if (method, path) not in PUBLIC
    ]
    assert len(operations) >= 60  # REST, DICOMweb, WADO-URI, UI, metrics, OpenAPI, auth
    anonymous = srv.client()
    clients = {role: srv.client(role) for role in (Role.READ, Role.WRITE)}
    for method, path in operations:
        url = concrete(path, corpus)
        response = anonymous.request(method, url)
        assert response.status_code == 401, (method, path, response.text)
        assert "Basic" in response.headers.get_list("www-authenticate")[0]
        for role, client in clients.items():
            if role >= needed(method, path):
                continue  # allowed: exercised below for reads only (writes change the archive)
            response = client.request(method, url, json={})
            assert response.status_code == 403, (role, method, path, response.text)
        if needed(method, path) is Role.READ and method == "get":
            response = clients[Role.READ].get(url)
            assert response.status_code not in (401, 403), (method, path, response.text)
    # The UI and the static files too.
    assert anonymous.get("/ui/").status_code == 401
    assert anonymous.get("/ui/app.js").status_code == 401
    assert clients[Role.READ].get("/ui/app.js").status_code == 200
    assert anonymous.get("/ui/style.css").status_code == 200  # the login page's
    assert anonymous.get("/auth/login").status_code == 200


def test_a_read_token_cannot_store_delete_send_or_repack(secured):
    srv, corpus = secured
    reader = srv.client(Role.READ)
    study = corpus[0].study_instance_uid
    before = reader.get("/statistics").json()
    assert reader.post("/instances", content=MR.read_bytes()).status_code == 403
    stow = reader.post(
        "/dicom-web/studies",
        content=b"--b\r\nContent-Type: application/dicom\r\n\r\n" + MR.read_bytes() + b"\r\n--b--",
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
    )
    assert stow.status_code == 403
    assert reader.delete(f"/studies/{study}").status_code == 403
    assert reader.post("/modalities/NOWHERE/store", json=[study]).status_code == 403
    assert reader.post("/tools/repack", json={"compression": "zstd"}).status_code == 403
    moved = reader.post("/modalities/NOWHERE/move", json={"Query": {"StudyInstanceUID": study}})
    assert moved.status_code == 403
    assert reader.get("/statistics").json() == before
    assert reader.get(f"/studies/{study}").status_code == 200
    # A writer stores, but neither deletes nor sends nor moves elsewhere.
    writer = srv.client(Role.WRITE)
    assert writer.post("/instances", content=MR.read_bytes()).status_code == 200
    assert writer.delete(f"/studies/{study}").status_code == 403
    assert writer.post("/modalities/NOWHERE/store", json=[study]).status_code == 403
    elsewhere = {"Query": {"StudyInstanceUID": study}, "TargetAet": "ELSEWHERE"}
    assert writer.post("/modalities/NOWHERE/move", json=elsewhere).status_code == 403
    # The uploaded instance names its user in the audit trail.
    records = list(read_records(srv.server.root / "audit"))
    stored = [r for r in records if r["event"] == "store" and r.get("user") == "token:writer-token"]
    assert stored and stored[0]["via"] == "http"


def test_basic_and_bearer_and_what_is_refused(secured):
    srv, _ = secured
    assert srv.basic("reader").get("/statistics").status_code == 200
    wrong = httpx.get(f"{srv.url}/statistics", auth=("reader", "not-the-password"))
    assert wrong.status_code == 401
    garbage = httpx.get(f"{srv.url}/statistics", headers={"Authorization": "Bearer dvt_x_y"})
    assert garbage.status_code == 401
    accounts = Accounts(srv.server.root)
    token = accounts.create_token(Role.READ, __import__("datetime").timedelta(days=1), "soon")
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{srv.url}/statistics", headers=headers).status_code == 200
    accounts.revoke_token(token.split("_")[1])
    assert httpx.get(f"{srv.url}/statistics", headers=headers).status_code == 401
    # A password change invalidates what Basic remembered.
    accounts.set_password("writer", "another-password-2")
    assert srv.basic("writer").get("/statistics").status_code == 401
    accounts.set_password("writer", PASSWORDS["writer"])
    assert srv.basic("writer").get("/statistics").status_code == 200
    records = list(read_records(srv.server.root / "audit"))
    failed = [r for r in records if r["event"] == "login" and r["outcome"] == "failure"]
    assert any(r.get("user") == "reader" for r in failed)


def test_failed_logins_are_limited(tmp_path):
    """Guesses of a user's password past max_failed_logins are refused (429) unchecked, the
    right one too; the others behind the same address (a load balancer's, a NAT's) are not
    locked out with it until the address itself has failed ten times as often (spraying
    one password over many user names); a valid token never is. X-Forwarded-For changes
    neither the address counted nor the one audited."""
    srv = Secured(tmp_path, http={"max_failed_logins": 3, "failed_login_window_s": 60}).start()
    url = f"{srv.url}/statistics"
    forged = {"X-Forwarded-For": "10.9.9.9"}
    try:
        assert srv.basic("boss").get("/statistics").status_code == 200
        for _ in range(3):
            assert httpx.get(url, auth=("boss", "guess"), headers=forged).status_code == 401
        limited = httpx.get(url, auth=("boss", PASSWORDS["boss"]))
        assert limited.status_code == 429  # even the right password: it is not checked
        assert 0 < int(limited.headers["retry-after"]) <= 60
        assert httpx.get(url, auth=("writer", PASSWORDS["writer"])).status_code == 200
        login = httpx.post(f"{srv.url}/auth/login", json={"username": "reader", "password": "x"})
        assert login.status_code == 401  # checked: another user, though the same address
        # Spraying: the address's failures reach 3 x CLIENTS_PER_ADDRESS = 30.
        sprayed = [httpx.get(url, auth=(f"user{n}", "guess")).status_code for n in range(27)]
        assert sprayed == [401] * 26 + [429]
        assert httpx.get(url, auth=("writer", PASSWORDS["writer"])).status_code == 429
        with srv.client(Role.READ) as reader:
            assert reader.get("/statistics").status_code == 200
        assert httpx.get(url, headers={"Authorization": "Bearer dvt_x_y"}).status_code == 429
        failed = [
            r
            for r in read_records(srv.server.root / "audit")
            if r["event"] == "login" and r["outcome"] == "failure"
        ]
        assert len(failed) == 3 + 1 + 26
        assert {r["address"] for r in failed} == {"127.0.0.1"}
    finally:
        assert srv.server.stop() == 0


def test_web_ui_session_cookie_and_csrf(secured):
    srv, _ = secured
    browser = httpx.Client(base_url=srv.url, timeout=60)
    assert (
        browser.post("/auth/login", json={"username": "writer", "password": "x"}).status_code == 401
    )
    login = browser.post(
        "/auth/login", json={"username": "writer", "password": PASSWORDS["writer"]}
    )
    assert login.status_code == 200, login.text
    cookies = login.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("dicomvault_session="))
    assert "HttpOnly" in session and "SameSite=strict" in session and "Secure" not in session
    csrf = browser.cookies["dicomvault_csrf"]
    assert browser.get("/auth/whoami").json() == {
        "user": "writer",
        "role": "write",
        "auth": "users",
    }
    # A state-changing request needs the CSRF token besides the cookie.
    assert browser.post("/instances", content=MR.read_bytes()).status_code == 403
    wrong = browser.post("/instances", content=MR.read_bytes(), headers={"X-CSRF-Token": "x"})
    assert wrong.status_code == 403
    stored = browser.post("/instances", content=MR.read_bytes(), headers={"X-CSRF-Token": csrf})
    assert stored.status_code == 200
    # From another site, even with the token.
    cross = browser.post(
        "/tools/lookup",
        content="12345",
        headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"},
    )
    assert cross.status_code == 403
    assert browser.post("/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 200
    assert browser.get("/statistics").status_code == 401
    records = list(read_records(srv.server.root / "audit"))
    assert any(
        r["event"] == "login" and r["outcome"] == "success" and r["user"] == "writer"
        for r in records
    )
    assert any(r["event"] == "logout" and r["user"] == "writer" for r in records)


def test_https_and_secure_cookies(tmp_path):
    ca, issued = certificates(tmp_path, "server")
    cert, key = issued["server"]
    srv = Secured(
        tmp_path, http={"tls_certificate": str(cert), "tls_private_key": str(key)}
    ).start()
    try:
        client = httpx.Client(
            base_url=srv.url, verify=ssl.create_default_context(cafile=ca), timeout=60
        )
        login = client.post(
            "/auth/login", json={"username": "reader", "password": PASSWORDS["reader"]}
        )
        assert login.status_code == 200
        session = next(c for c in login.headers.get_list("set-cookie") if "session" in c)
        assert "Secure" in session
        assert "max-age" in login.headers["strict-transport-security"]
        with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port
            httpx.get(f"http://127.0.0.1:{srv.http_port}/statistics", timeout=10)
        assert "https://" in srv.server.log
    finally:
        assert srv.server.stop() == 0


def test_serve_refuses_auth_none_off_loopback(tmp_path):
    config = tmp_path / "dicomvault.toml"
    config.write_text(
        f'[archive]\nroot = "{tmp_path / "archive"}"\n'
        f"[dicom]\nport = {free_port()}\n"
        f'[http]\nenabled = true\nhost = "0.0.0.0"\nport = {free_port()}\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "dicomvault", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "not a loopback address" in result.stderr and "auth" in result.stderr
    assert not (tmp_path / "archive").exists() or not list((tmp_path / "archive").iterdir())


def test_user_and_token_commands(tmp_path, cli):
    added = subprocess.run(
        cli.command(
            "user", "add", "carol", "--role", "write", "--password-stdin", "--root", cli.root
        ),
        input="carol-password-1\n",
        capture_output=True,
        text=True,
        env=cli.env,
        timeout=60,
    )
    assert added.returncode == 0, added.stderr
    assert json.loads(cli.run("user", "list", "--json").stdout) == [
        {
            "name": "carol",
            "role": "write",
            "created": json.loads(cli.run("user", "list", "--json").stdout)[0]["created"],
        }
    ]
    stored = (cli.root / "users.json").read_text()
    assert "carol-password-1" not in stored and "scrypt$" in stored
    assert oct((cli.root / "users.json").stat().st_mode & 0o777) == "0o600"
    token = cli.run("token", "create", "--role", "read", "--expires", "30d").stdout.strip()
    assert (
        token.startswith("dvt_")
        and token.split("_", 2)[2] not in (cli.root / "users.json").read_text()
    )
    listed = json.loads(cli.run("token", "list", "--json").stdout)
    assert [t["role"] for t in listed] == ["read"] and listed[0]["expires"]
    cli.run("token", "revoke", listed[0]["id"])
    assert json.loads(cli.run("token", "list", "--json").stdout) == []
    assert cli.run("user", "remove", "nobody", check=False).returncode == 1
    cli.run("user", "remove", "carol")
    accounts = [r for r in read_records(cli.root / "audit") if r["event"] == "account"]
    assert [r["what"] for r in accounts] == [
        "user add",
        "token create",
        "token revoke",
        "user remove",
    ]
