"""What authentication costs an HTTP request: the same request to a server without
authentication ([http] auth = "none") and to one with users, per way of authenticating, as
median latency and its ratio to the unauthenticated request, measured in the same run.

    python benches/auth_cost.py [--requests 500] [--work DIR]

The request is a study's record (GET /studies/{uid}: an index lookup and its audit record),
over one kept-alive connection. Ways: HTTP Basic (the password's scrypt check is remembered
for 5 minutes, so this is the steady state), a Bearer API token (SHA-256 and a constant-time
compare), the web UI's session cookie, and the login itself (POST /auth/login: one scrypt
check at N=2^17, r=8, p=1), which a user pays once per session.
"""

from __future__ import annotations

import argparse
import datetime as dt
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pydicom
from pydicom.data import get_testdata_file

from dicomvault.bench.peers import free_port, wait_for_port
from dicomvault.security.accounts import Accounts, Role

PASSWORD = "benchmark-password-1"
# Users who log in once each: a first login is a password check the server never made before.
LOGINS = 5


def serve(work: Path, auth: str) -> tuple[subprocess.Popen, str]:
    http_port = free_port()
    root = work / auth
    config = work / f"{auth}.toml"
    config.write_text(
        f'[archive]\nroot = "{root}"\n[dicom]\nhost = "127.0.0.1"\nport = {free_port()}\n'
        f'[http]\nenabled = true\nport = {http_port}\nauth = "{auth}"\n'
    )
    if auth == "users":
        accounts = Accounts(root)
        for name in ("bench", *(f"login{i}" for i in range(LOGINS))):
            accounts.add_user(name, Role.ADMIN, PASSWORD)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomvault", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(http_port, proc, "dicomvault serve")
    return proc, f"http://127.0.0.1:{http_port}"


def median_ms(client: httpx.Client, path: str, count: int) -> float:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.get(path)
        times.append(time.perf_counter() - started)
        response.raise_for_status()
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(dir=args.work))
    source = Path(get_testdata_file("MR_small.dcm"))
    data = source.read_bytes()
    path = f"/studies/{pydicom.dcmread(source).StudyInstanceUID}"
    servers = [serve(work, "none"), serve(work, "users")]
    try:
        (_, plain_url), (_, users_url) = servers
        accounts = Accounts(work / "users")
        token = accounts.create_token(Role.READ, dt.timedelta(days=1), "bench")
        httpx.post(f"{plain_url}/instances", content=data).raise_for_status()
        httpx.post(
            f"{users_url}/instances", content=data, auth=("bench", PASSWORD)
        ).raise_for_status()
        n = args.requests
        figures: dict[str, float] = {}
        with httpx.Client(base_url=plain_url) as client:
            figures["none (no authentication)"] = median_ms(client, path, n)
        with httpx.Client(base_url=users_url, auth=("bench", PASSWORD)) as client:
            figures["Basic (password check remembered)"] = median_ms(client, path, n)
        bearer = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=users_url, headers=bearer) as client:
            figures["Bearer API token"] = median_ms(client, path, n)
        logins = []
        for i in range(LOGINS):
            with httpx.Client(base_url=users_url) as client:
                started = time.perf_counter()
                login = {"username": f"login{i}", "password": PASSWORD}
                client.post("/auth/login", json=login).raise_for_status()
                logins.append(time.perf_counter() - started)
        with httpx.Client(base_url=users_url) as client:
            client.post("/auth/login", json={"username": "bench", "password": PASSWORD})
            figures["session cookie"] = median_ms(client, path, n)
        base = figures["none (no authentication)"]
        print(f"GET /studies/{{uid}}, median of {n} requests, one connection")
        for name, ms in figures.items():
            print(f"  {name:36} {ms:7.3f} ms   {ms / base:5.2f}x")
        login_ms = 1000 * statistics.median(logins)
        name = "login (POST /auth/login, scrypt)"
        print(f"  {name:36} {login_ms:7.1f} ms   {login_ms / base:5.0f}x")
    finally:
        for proc, _ in servers:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
