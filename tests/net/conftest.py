"""Real peers for the network tests: ``dicomvault serve`` as a subprocess, DCMTK's tools
(``/usr/bin``: pynetdicom installs apps of the same names on PATH) and Orthanc, each on free
ports with its own configuration."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dicomvault.bench.peers import free_port, wait_for_port
from tests.conftest import Cli

DCMTK = Path("/usr/bin")
# Debian's DCMTK leaves Nagle on unless told: every message would stall ~40 ms.
PEER_ENV = {**os.environ, "TCP_NODELAY": "1"}

# The transfer syntax each DCMTK SCU/SCP option family uses, by stored syntax.
PROPOSE = {  # storescu: propose
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.90": "-xv",
}
PREFER = {ts: "+" + opt[1:] for ts, opt in PROPOSE.items()}  # getscu: accept/prefer


def dcmtk(
    tool: str, *args: object, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    argv = [str(DCMTK / tool), *map(str, args)]
    result = subprocess.run(argv, env=PEER_ENV, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result


class Server:
    """``dicomvault serve`` in a subprocess, with a TOML configuration written by the test."""

    def __init__(
        self,
        workdir: Path,
        modalities: dict[str, dict],
        aet: str = "DICOMVAULT",
        sections: dict[str, dict] | None = None,
        root: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.aet = aet
        self.port = free_port()
        self.root = root or workdir / "archive"
        self.config = workdir / "dicomvault.toml"
        self.log_path = workdir / "serve.log"
        # [dicom] keys given in ``sections`` join the listener's own.
        sections = {"dicom": {}, **(sections or {})}
        dicom = {"aet": aet, "host": "127.0.0.1", "port": self.port, **sections["dicom"]}
        sections["dicom"] = dicom
        lines = [f'[archive]\nroot = "{self.root}"\n']
        for section, table in sections.items():
            lines.append(f"[{section}]\n")
            lines += [f"{k} = {json.dumps(v)}\n" for k, v in table.items()]
        for name, table in modalities.items():
            lines.append(f"[modalities.{name}]\n")
            lines += [f"{k} = {json.dumps(v)}\n" for k, v in table.items()]
        self.config.write_text("".join(lines))
        self.cli = Cli(self.root, workdir)
        self.proc: subprocess.Popen | None = None

    def start(
        self,
        preexec_fn: Callable[[], None] | None = None,
        env: dict[str, str] | None = None,
    ) -> Server:
        self.log_file = self.log_path.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dicomvault", "serve", "--config", str(self.config)],
            cwd=self.workdir,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            preexec_fn=preexec_fn,
        )
        wait_for_port(self.port, self.proc, "dicomvault serve")
        return self

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.log_file.close()
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL: the server ends where it is, as in a crash or a power cut of its process."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.log_file.close()
        self.proc = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def logged(self, *texts: str, timeout: float = 5.0, since: int = 0) -> bool:
        """Whether the log, from character ``since`` on, shows any of ``texts`` within
        ``timeout``: the Rust listener's log lines reach the log in batches, a little after
        the response was sent."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log[since:]
            if any(text in log for text in texts):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    def run(self, *args: object, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A dicomvault command on this server's archive and configuration."""
        return self.cli.run(*args, "--config", self.config, check=check, with_root=False)


class StoreSCP:
    """DCMTK's storescp writing exactly what it receives (+B) into a directory."""

    def __init__(self, workdir: Path, aet: str = "STORESCP") -> None:
        self.aet = aet
        self.port = free_port()
        self.out = workdir / f"{aet.lower()}-received"
        self.out.mkdir()
        self.proc = subprocess.Popen(
            [
                str(DCMTK / "storescp"),
                "-aet",
                aet,
                "+xa",
                "+B",
                "-od",
                str(self.out),
                str(self.port),
            ],
            env=PEER_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, self.proc, "storescp")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    scp = StoreSCP(tmp_path)
    yield scp
    scp.stop()


class Orthanc:
    """Debian's Orthanc with its own configuration, on free ports."""

    def __init__(
        self,
        workdir: Path,
        modalities: dict[str, list],
        aet: str = "ORTHANC",
        dicom_port: int = 0,
        options: dict[str, object] | None = None,
    ) -> None:
        self.aet = aet
        self.dicom_port = dicom_port or free_port()
        self.http_port = free_port()
        self.dir = workdir / "orthanc"
        self.dir.mkdir()
        config = {
            "Name": "dicomvault-test",
            "StorageDirectory": str(self.dir / "storage"),
            "IndexDirectory": str(self.dir / "index"),
            "DicomAet": aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "HttpServerEnabled": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": modalities,
            "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": False,
            "Plugins": [],
            "StableAge": 1,
            "LimitFindResults": 0,
            "LimitFindInstances": 0,
            **(options or {}),
        }
        (self.dir / "orthanc.json").write_text(json.dumps(config))
        self.log = (self.dir / "orthanc.log").open("w")
        self.proc = subprocess.Popen(
            ["Orthanc", str(self.dir / "orthanc.json")],
            env=PEER_ENV,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
        )
        wait_for_port(self.http_port, self.proc, "Orthanc")
        wait_for_port(self.dicom_port, self.proc, "Orthanc")

    def rest(self, path: str, body: object = None, method: str | None = None) -> object:
        data = None
        if isinstance(body, bytes):
            data = body
        elif body is not None:
            data = json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            raw = response.read()
        try:
            return json.loads(raw)
        except ValueError:
            return raw

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def storescu(
    server: Server,
    paths: list[Path],
    syntax: str = "1.2.840.10008.1.2.1",
    aet: str = "MODALITY",
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """DCMTK's storescu proposing exactly ``syntax`` (the files' own) for the files."""
    return dcmtk(
        "storescu",
        "-v",
        "-aet",
        aet,
        "-aec",
        server.aet,
        "-R",
        PROPOSE[syntax],
        "127.0.0.1",
        server.port,
        *paths,
        check=check,
    )


def store_corpus(server: Server, corpus: list) -> None:
    """Sends generated instances with storescu, one run per transfer syntax."""
    by_syntax: dict[str, list[Path]] = {}
    for g in corpus:
        by_syntax.setdefault(g.transfer_syntax, []).append(g.path)
    for syntax, paths in by_syntax.items():
        storescu(server, paths, syntax)


def movescu(
    server: Server, aet: str, destination: str, keys: dict[str, str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    argv: list[str] = []
    for k, v in keys.items():
        argv += ["-k", f"{k}={v}"]
    return dcmtk(
        "movescu",
        "-v",
        "-aet",
        aet,
        "-aec",
        server.aet,
        "-aem",
        destination,
        "-S",
        *argv,
        "127.0.0.1",
        server.port,
        check=check,
    )
