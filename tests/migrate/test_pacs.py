"""`dicomvault migrate pacs` from a real Orthanc holding 50 generated studies, its C-FIND
results capped at 8 so that the date windows must be split."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from dicomvault.bench.corpus import ct_corpus
from dicomvault.config import load
from dicomvault.migrate.journal import rows_of
from dicomvault.migrate.pacs import MIN_PART, parts_of
from tests.conftest import Cli
from tests.net.conftest import Orthanc, Server, dcmtk, free_port

STUDIES = 50
LIMIT = 8
OUR_AET = "DICOMVAULT"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return ct_corpus(
        tmp_path_factory.mktemp("corpus"), 2 * STUDIES, rows=16, columns=16, studies=STUDIES
    )


def migrator_config(
    path: Path, port: int, source_aet: str, source_port: int, name: str = "pacs"
) -> Path:
    """Our configuration at ``path``: we listen on ``port`` as OUR_AET; the source ``name``
    is ``source_aet`` on loopback port ``source_port``."""
    path.write_text(
        f'[dicom]\naet = "{OUR_AET}"\nhost = "127.0.0.1"\nport = {port}\n'
        f'[modalities.{name}]\naet = "{source_aet}"\nhost = "127.0.0.1"\nport = {source_port}\n'
    )
    return path


class Setup:
    def __init__(self, workdir: Path, corpus: list, knows_us: bool = True) -> None:
        self.port = free_port()
        if knows_us:
            modalities, options = {"vault": [OUR_AET, "127.0.0.1", self.port]}, {}
        else:  # queries and C-GET from anyone, but C-MOVE only to the AEs it knows
            modalities = {}
            options = {f"DicomAlwaysAllow{s}": True for s in ("Find", "Get", "Move")}
        options["LimitFindResults"] = LIMIT
        self.orthanc = Orthanc(workdir, modalities, options=options)
        dcmtk(
            "storescu",
            "-aec",
            "ORTHANC",
            "127.0.0.1",
            self.orthanc.dicom_port,
            *[g.path for g in corpus],
        )
        self.root = workdir / "archive"
        self.config = migrator_config(
            workdir / "dicomvault.toml", self.port, "ORTHANC", self.orthanc.dicom_port
        )
        self.cli = Cli(self.root, workdir)

    def migrate(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cli.run(
            "migrate",
            *args,
            "pacs",
            "--find-limit",
            str(LIMIT),
            "--config",
            self.config,
            check=check,
        )

    def rows(self) -> dict[str, object]:
        return {r.item: r for r in rows_of(load(None, root=self.root), "pacs")}


@pytest.fixture
def setup(tmp_path, corpus):
    s = Setup(tmp_path, corpus)
    yield s
    s.orthanc.stop()


def studies_of(corpus: list) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for g in corpus:
        found.setdefault(g.study_instance_uid, set()).add(g.sop_instance_uid)
    return found


def test_a_full_migration_splits_capped_windows_and_verifies_every_study(setup, corpus):
    result = setup.migrate("pacs", "--parallel", "4")
    assert f"ORTHANC lists {STUDIES} studies" in result.stdout
    assert f"[{STUDIES}/{STUDIES} studies, {2 * STUDIES} instances, " in result.stdout
    rows = setup.rows()
    assert set(rows) == set(studies_of(corpus))
    assert {r.state for r in rows.values()} == {"verified"}
    assert all(r.expected == r.received == 2 for r in rows.values())
    held = {i["key"] for i in setup.cli.ls("instances")}
    assert held == {g.sop_instance_uid for g in corpus}
    assert setup.cli.run("verify").returncode == 0
    again = setup.migrate("pacs")
    assert f"{STUDIES} of {STUDIES} studies verified" in again.stdout
    assert all(r.attempts == 1 for r in setup.rows().values())


def test_a_killed_migration_resumes_without_fetching_verified_studies_again(setup, corpus):
    # 600 studies a minute at most: killed half-way, not after the last (the whole migration
    # takes less than the journal's polling otherwise).
    proc = subprocess.Popen(
        setup.cli.command(
            "migrate",
            "pacs",
            "pacs",
            "--rate-limit",
            "600",
            "--find-limit",
            str(LIMIT),
            "--config",
            setup.config,
            "--root",
            setup.root,
        ),
        cwd=setup.cli.cwd,
        env=setup.cli.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    verified: set[str] = set()
    while time.monotonic() < deadline and len(verified) < STUDIES // 3:
        time.sleep(0.1)
        if (setup.root / "migrate").exists():
            verified = {s for s, r in setup.rows().items() if r.state == "verified"}
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert STUDIES // 3 <= len(verified) < STUDIES
    setup.migrate("pacs")
    rows = setup.rows()
    assert {r.state for r in rows.values()} == {"verified"}
    assert all(rows[s].attempts == 1 for s in verified)
    held = {i["key"] for i in setup.cli.ls("instances")}
    assert held == {g.sop_instance_uid for g in corpus}


def test_a_study_deleted_from_the_source_mid_migration_is_reported(setup, corpus):
    compared = setup.migrate("compare", check=False)
    assert compared.returncode == 1
    gone = corpus[0].study_instance_uid
    [orthanc_id] = setup.orthanc.rest("/tools/lookup", gone.encode(), method="POST")
    setup.orthanc.rest(orthanc_id["Path"], method="DELETE")
    result = setup.migrate("pacs", check=False)
    assert result.returncode == 1
    rows = setup.rows()
    assert rows[gone].state == "failed" and "no longer on the source" in rows[gone].error
    assert sum(r.state == "verified" for r in rows.values()) == STUDIES - 1
    report = json.loads(
        setup.cli.run("migrate", "report", "pacs", "--json", "--config", setup.config).stdout
    )
    assert [r["item"] for r in report] == [gone]


def test_a_source_refusing_our_move_destination_is_reported_and_get_works(tmp_path, corpus):
    setup = Setup(tmp_path, corpus[:10], knows_us=False)
    try:
        refused = setup.migrate("pacs", "--method", "move", check=False)
        assert refused.returncode == 1
        assert f"ORTHANC refused to move to {OUR_AET}" in refused.stderr
        assert "--method get" in refused.stderr
        # The studies under way when it stopped are not left `running`.
        states = {r.state for r in setup.rows().values()}
        assert "running" not in states and "failed" in states, states
        assert all(
            "refused to move" in r.error for r in setup.rows().values() if r.state == "failed"
        )
        started = time.monotonic()
        running = subprocess.Popen(
            setup.cli.command(
                *("migrate", "pacs", "pacs", "--method", "get", "--rate-limit", "120"),
                *("--find-limit", str(LIMIT), "--config", setup.config, "--root", setup.root),
            ),
            cwd=setup.cli.cwd,
            env=setup.cli.env,
            stdout=subprocess.DEVNULL,
        )
        # `migrate status` from another process shows the running migration's figures.
        live = setup.root / "migrate" / "live-pacs.json"
        while not (live.exists() and json.loads(live.read_text())["done"] >= 2):
            assert running.poll() is None
            time.sleep(0.05)
        status = setup.cli.run("migrate", "status", "pacs", "--config", setup.config).stdout
        assert running.wait(timeout=120) == 0
        assert "migration running: [" in status and "/5 studies, " in status, status
        assert " MB/s, ETA " in status
        # 120 a minute: a study started every 0.5 s at most.
        assert time.monotonic() - started >= 0.5 * (len(setup.rows()) - 1)
        assert {r.state for r in setup.rows().values()} == {"verified"}
    finally:
        setup.orthanc.stop()


@pytest.mark.parametrize("method", ["get", "move"])
def test_a_large_study_is_retrieved_in_parts_at_once(tmp_path, method):
    big = ct_corpus(tmp_path / "big", 3 * MIN_PART, rows=16, columns=16, studies=1)
    setup = Setup(tmp_path, big)
    try:
        [study] = {g.study_instance_uid for g in big}
        listed = {g.sop_instance_uid: g.series_instance_uid for g in big}
        assert len(parts_of(study, listed, 3)) >= 3
        setup.migrate("pacs", "--method", method, "--parallel", "3")
        [row] = setup.rows().values()
        assert (row.state, row.attempts, row.received) == ("verified", 1, len(big))
        held = {i["key"] for i in setup.cli.ls("instances")}
        assert held == set(listed)
    finally:
        setup.orthanc.stop()


@pytest.mark.parametrize("method", ["get", "move"])
def test_small_studies_are_retrieved_several_to_a_request(tmp_path, method):
    """One C-GET (C-MOVE) names several studies by a list of UIDs (PS3.4 C.4.2.2.1): twelve
    studies of one instance each, listed together, take fewer requests than studies; the
    source here is a dicomvault `serve`, whose log says what it was asked."""
    small = ct_corpus(tmp_path / "small", 12, rows=16, columns=16, studies=12)
    migrator_port = free_port()
    (tmp_path / "source").mkdir()
    source = Server(
        tmp_path / "source",
        {OUR_AET: {"aet": OUR_AET, "host": "127.0.0.1", "port": migrator_port}},
        aet="SOURCE",
    )
    source.run("import", *[g.path for g in small])
    source.start()
    config = migrator_config(tmp_path / "dicomvault.toml", migrator_port, "SOURCE", source.port)
    cli = Cli(tmp_path / "archive", tmp_path)
    try:
        result = cli.run(
            "migrate", "pacs", "pacs", "--method", method, "--parallel", "1", "--config", config
        )
        assert "12 of 12 studies verified" in result.stdout
    finally:
        assert source.stop() == 0
    requests = re.findall(
        rf"C-{method.upper()} from {OUR_AET}@127.0.0.1: status 0x0000", source.log
    )
    assert 1 <= len(requests) < len(small), requests
    rows = {r.item: r for r in rows_of(load(None, root=cli.root), "pacs")}
    assert {(r.state, r.attempts, r.received) for r in rows.values()} == {("verified", 1, 1)}
    held = {i["key"] for i in cli.ls("instances")}
    assert held == {g.sop_instance_uid for g in small}


def test_studies_no_date_window_matches_are_migrated_too(tmp_path):
    """A StudyDate range matches no study without a StudyDate (PS3.4 C.2.2.2.5), nor one
    dated after today: without --since or --until they are looked for once more, asked
    without a date, and migrated with the others."""
    corpus = ct_corpus(tmp_path / "corpus", 6, rows=16, columns=16, studies=6)
    undated, empty, later = corpus[:3]
    dcmtk("dcmodify", "-nb", "-ea", "(0008,0020)", undated.path)
    dcmtk("dcmodify", "-nb", "-m", "(0008,0020)=", empty.path)
    dcmtk("dcmodify", "-nb", "-m", "(0008,0020)=20991231", later.path)
    setup = Setup(tmp_path, corpus)
    try:
        result = setup.migrate("pacs")
        assert "ORTHANC lists 6 studies" in result.stdout, result.stdout
        rows = setup.rows()
        assert set(rows) == {g.study_instance_uid for g in corpus}
        assert {r.state for r in rows.values()} == {"verified"}
        held = {i["key"] for i in setup.cli.ls("instances")}
        assert held == {g.sop_instance_uid for g in corpus}
        # The source's name, even beside a directory of that name (a stranger's was read as
        # an Orthanc storage directory: every count 0).
        (setup.cli.cwd / "pacs").mkdir()
        status = setup.cli.run("migrate", "status", "pacs", "--config", setup.config)
        assert re.search(r"verified\s+6\b", status.stdout), status.stdout
        # A range asked for is that range.
        ranged = Cli(tmp_path / "ranged", tmp_path)
        since = ranged.run(
            "migrate", "pacs", "pacs", "--since", "19000101", "--config", setup.config
        )
        assert "ORTHANC lists 3 studies" in since.stdout, since.stdout
    finally:
        setup.orthanc.stop()
