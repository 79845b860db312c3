"""`dicomvault migrate dicomweb` from Orthanc's DICOMweb plugin holding 50 generated studies
(its answers capped at 8, so that the date windows must be split), and from dicomvault's own
DICOMweb with a token."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from dicomvault import config
from dicomvault.bench.corpus import ct_corpus
from dicomvault.config import load
from dicomvault.migrate.journal import rows_of
from dicomvault.security.accounts import Role
from dicomvault.store import Archive
from tests.conftest import Cli
from tests.net.conftest import Orthanc, dcmtk
from tests.security.helpers import Secured

STUDIES = 50
LIMIT = 8
PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return ct_corpus(
        tmp_path_factory.mktemp("corpus"), 2 * STUDIES, rows=16, columns=16, studies=STUDIES
    )


class Source:
    """Orthanc serving the corpus over DICOMweb, and an archive to migrate it into."""

    def __init__(self, workdir: Path, corpus: list, denied: list[str] = ()) -> None:
        options: dict[str, object] = {
            "Plugins": [PLUGIN],
            "DicomWeb": {"Enable": True},
            "LimitFindResults": LIMIT,
        }
        if denied:
            # Orthanc refuses (403) the requests for these paths: it lists what it will not
            # give.
            script = workdir / "deny.lua"
            paths = ", ".join(f'["{p}"] = true' for p in denied)
            script.write_text(
                f"local denied = {{{paths}}}\n"
                "function IncomingHttpRequestFilter(method, uri, ip, username, headers)\n"
                "  return not denied[uri]\n"
                "end\n"
            )
            options["LuaScripts"] = [str(script)]
        self.orthanc = Orthanc(workdir, {}, options=options)
        dcmtk("storescu", "-aec", "ORTHANC", "127.0.0.1", self.orthanc.dicom_port, *corpus)
        self.url = f"http://127.0.0.1:{self.orthanc.http_port}/dicom-web"
        self.root = workdir / "archive"
        self.cli = Cli(self.root, workdir)

    def argv(self, *more: str) -> list[str]:
        return ["migrate", "dicomweb", self.url, "--find-limit", str(LIMIT), *more]

    def rows(self) -> dict[str, object]:
        return {r.item: r for r in rows_of(load(None, root=self.root), self.url)}

    def served(self, sop_instance_uid: str) -> bytes:
        """The instance's file as Orthanc serves it."""
        [found] = self.orthanc.rest("/tools/lookup", sop_instance_uid.encode(), method="POST")
        data = self.orthanc.rest(f"{found['Path']}/file")
        assert isinstance(data, bytes)
        return data


@pytest.fixture
def source(tmp_path, corpus):
    s = Source(tmp_path, [g.path for g in corpus])
    yield s
    s.orthanc.stop()


def held(root: Path) -> dict[str, bytes]:
    """SOP Instance UID -> the bytes the archive at ``root`` returns for it."""
    with Archive(config.load(None, root=root)) as archive:
        return {r.key: archive.read(r) for r in archive.instances()}


def test_a_migration_killed_half_way_resumes_and_keeps_every_instance_byte_identical(
    source, corpus
):
    proc = subprocess.Popen(
        # 600 studies a minute at most: killed half-way, not after the last.
        source.cli.command(*source.argv("--rate-limit", "600", "--root", str(source.root))),
        cwd=source.cli.cwd,
        env=source.cli.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    verified: set[str] = set()
    while time.monotonic() < deadline and len(verified) < STUDIES // 3:
        time.sleep(0.02)
        if (source.root / "migrate").exists():
            verified = {s for s, r in source.rows().items() if r.state == "verified"}
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert STUDIES // 3 <= len(verified) < STUDIES
    result = source.cli.run(*source.argv())
    assert f"{source.url} lists {STUDIES} studies" in result.stdout
    rows = source.rows()
    assert len(rows) == STUDIES and {r.state for r in rows.values()} == {"verified"}
    assert all(rows[s].attempts == 1 for s in verified)
    assert all(r.expected == r.received == 2 for r in rows.values())
    stored = held(source.root)
    assert set(stored) == {g.sop_instance_uid for g in corpus}
    for uid, data in stored.items():
        assert data == source.served(uid), uid
    status = source.cli.run("migrate", "status", source.url).stdout
    assert f"migration finished: [{STUDIES - len(verified)}/" in status


def test_the_report_lists_what_the_source_could_not_give(tmp_path, corpus):
    lost, kept = corpus[0], corpus[1]
    assert lost.study_instance_uid == kept.study_instance_uid
    study = f"/dicom-web/studies/{lost.study_instance_uid}"
    instance = f"{study}/series/{lost.series_instance_uid}/instances/{lost.sop_instance_uid}"
    source = Source(tmp_path, [g.path for g in corpus[:10]], denied=[study, instance])
    try:
        result = source.cli.run(*source.argv("--retries", "1"), check=False)
        assert result.returncode == 1, result.stdout + result.stderr
        report = json.loads(source.cli.run("migrate", "report", source.url, "--json").stdout)
    finally:
        source.orthanc.stop()
    # Asked for whole, then instance by instance: all but the one refused.
    assert [r["item"] for r in report] == [lost.study_instance_uid]
    assert report[0]["state"] == "failed" and report[0]["attempts"] == 2
    assert (
        f"{lost.sop_instance_uid}: GET {instance[len('/dicom-web') :]}: HTTP 403"
        in (report[0]["error"])
    )
    assert (report[0]["expected"], report[0]["received"]) == (2, 1)
    stored = held(source.root)
    assert set(stored) == {g.sop_instance_uid for g in corpus[1:10]}


def test_from_dicomvaults_own_dicomweb_with_a_token(tmp_path, corpus):
    (tmp_path / "source").mkdir()
    secured = Secured(tmp_path / "source").start()
    try:
        secured.server.run("import", *[g.path for g in corpus[:10]])
        url = f"{secured.url}/dicom-web"
        cli = Cli(tmp_path / "copy", tmp_path)
        refused = cli.run("migrate", "dicomweb", url, check=False)
        assert refused.returncode == 1 and "HTTP 401" in refused.stderr
        cli.run("migrate", "dicomweb", url, "--token", secured.tokens[Role.READ])
        assert {r.state for r in rows_of(load(None, root=cli.root), url)} == {"verified"}
    finally:
        secured.server.stop()
    assert held(cli.root) == held(secured.server.root)
