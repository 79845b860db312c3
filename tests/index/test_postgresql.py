"""The index on PostgreSQL beyond the shared suite (``test_index``): it answers every query as
LMDB does, keeps replay marks per pack store, makes and guards its schema (``init-db``), never
shows the URL's password, and leaves psycopg out of the embedded default."""

import random
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from dicomvault.index import InstanceEntry, Level, LmdbIndex
from dicomvault.index.pg_index import PgIndex
from dicomvault.index.pg_schema import MIGRATIONS, SCHEMA, VERSION, SchemaError, redact

NAMES = ["Smith^John", "SMITH^JANE", "smithers^w", "Διονυσιος^Κωστας", "Yamada^Tarou=山田^太郎", ""]
DATES = ["20150312", "20180704", "2020.01.31", "", "20211231", "19991231"]


def corpus(n: int = 240) -> list[InstanceEntry]:
    rng = random.Random(16)
    entries = []
    for i in range(n):
        patient = rng.randrange(12)
        study = f"1.{patient}.{rng.randrange(3)}"
        series = f"{study}.{rng.randrange(3)}"
        tags = {
            "SOPInstanceUID": f"{series}.{i}",
            "StudyInstanceUID": study,
            "SeriesInstanceUID": series,
            "PatientID": f"P{patient % 9}",
            "PatientName": NAMES[patient % len(NAMES)],
            "StudyDate": DATES[(patient + int(study[-1])) % len(DATES)],
            "AccessionNumber": f"A{patient}{study[-1]}",
            "Modality": rng.choice(["CT", "MR", "US", "SR"]),
            "SeriesNumber": str(rng.randrange(5)),
            "InstanceNumber": str(i),
        }
        if patient % 4 == 0:
            tags["IssuerOfPatientID"] = "HOSP_B"
        entries.append(InstanceEntry(tags, f"m{i}".encode(), 10 + i, "2026-01-01T00:00:00Z", "t"))
    return entries


QUERIES = [
    (Level.PATIENT, {}),
    (Level.PATIENT, {"PatientName": "smith*"}),
    (Level.PATIENT, {"PatientName": "*ane"}),
    (Level.PATIENT, {"PatientName": "山田*"}),
    (Level.PATIENT, {"PatientID": "P1\\P3", "NumberOfPatientRelatedStudies": ""}),
    (Level.STUDY, {"StudyDate": "20150101-20201231"}),
    (Level.STUDY, {"StudyDate": "-20180704", "PatientName": "S*"}),
    (Level.STUDY, {"StudyDate": "20200131"}),
    (Level.STUDY, {"AccessionNumber": "A1*", "ModalitiesInStudy": ""}),
    (Level.STUDY, {"ModalitiesInStudy": "SR\\US"}),
    (Level.STUDY, {"StudyInstanceUID": "1.3.1\\1.4.0\\9.9"}),
    (Level.SERIES, {"Modality": "CT", "SeriesNumber": "2"}),
    (Level.SERIES, {"PatientID": "P2", "NumberOfSeriesRelatedInstances": ""}),
    (Level.IMAGE, {"SeriesInstanceUID": "1.5.1.2"}),
    (Level.IMAGE, {"PatientName": "Διονυσιος*", "InstanceNumber": ""}),
    (Level.IMAGE, {"InstanceNumber": "1?"}),
    (Level.IMAGE, {}),
]


def test_every_query_answers_as_on_lmdb(tmp_path, pg_url):
    entries = corpus()
    with LmdbIndex(tmp_path / "lmdb") as lmdb, PgIndex(pg_url, store="s") as pg:
        for start in range(0, len(entries), 50):  # batches, duplicates among them
            batch = entries[start : start + 50] + entries[start : start + 3]
            assert lmdb.commit(batch) == pg.commit(batch)
        lmdb.delete(Level.SERIES, "1.3.1.1")
        pg.delete(Level.SERIES, "1.3.1.1")
        assert lmdb.stats() == pg.stats()
        for insensitive in (True, False):
            for level, filters in QUERIES:
                expected = list(lmdb.find(level, filters, case_insensitive_pn=insensitive))
                assert expected == list(pg.find(level, filters, case_insensitive_pn=insensitive))
                for offset, limit in ((0, 1), (3, 5), (len(expected) - 1, 10)):
                    assert list(
                        lmdb.find(level, filters, limit=limit, offset=max(offset, 0))
                    ) == list(pg.find(level, filters, limit=limit, offset=max(offset, 0)))
        assert len(list(pg.find(Level.IMAGE, {}))) > 100
        for value in ("P1", "A31", "1.3.1", "1.3.1.0", "nothing"):
            assert lmdb.lookup(value) == pg.lookup(value)
        for level in Level:
            assert list(lmdb.iter_level(level)) == list(pg.iter_level(level))
        assert list(lmdb.instances_under(Level.PATIENT, "P0\x00HOSP_B")) == list(
            pg.instances_under(Level.PATIENT, "P0\x00HOSP_B")
        )


def test_many_writers_under_one_study_lose_no_count(pg_url):
    import threading

    with PgIndex(pg_url, store="s") as pg:

        def worker(t):
            for i in range(25):
                e = InstanceEntry(
                    {"SOPInstanceUID": f"{t}.{i}", "StudyInstanceUID": "1", "PatientID": "P"},
                    f"{t}.{i}".encode(),
                    1,
                    "2026-01-01T00:00:00Z",
                    "t",
                )
                e.tags["SeriesInstanceUID"] = f"1.{i % 3}"
                pg.commit([e])

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        study = pg.get(Level.STUDY, "1")
        assert study.counts == {"series": 3, "instances": 100} and study.size == 100
        assert pg.stats()["instances"] == 100


def test_replay_marks_belong_to_their_pack_store(pg_url):
    entry = corpus(1)[0]
    with PgIndex(pg_url, store="node-a") as a, PgIndex(pg_url, store="node-b") as b:
        a.commit([entry], before_commit=lambda new: [(1, 500), (2, 2**64 - 1)])
        a.record_unindexed(b"m-broken", 3, 40, "unreadable")
        assert a.applied() == {1: 500, 2: 2**64 - 1}
        assert b.applied() == {} and b.unindexed() == {}
        assert b.get(Level.IMAGE, entry.tags["SOPInstanceUID"]) is not None  # one index
        b.mark_applied([(1, 100)])
        assert a.applied()[1] == 500 and b.applied() == {1: 100}


def test_an_empty_database_gets_the_schema_a_newer_one_is_refused(pg_url):
    with PgIndex(pg_url, store="s"):
        pass
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute(f"SELECT version FROM {SCHEMA}.version").fetchone() == (VERSION,)
        conn.execute(f"UPDATE {SCHEMA}.version SET version = %s", (VERSION + 1,))
    with pytest.raises(SchemaError, match="newer than this dicomvault knows"):
        PgIndex(pg_url, store="s")


def config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "dicomvault.toml"
    path.write_text(
        f'[archive]\nroot = "{tmp_path / "archive"}"\n[index]\nbackend = "postgresql"\n'
        f'url = "{url}"\n'
    )
    return path


def test_init_db_creates_then_has_nothing_to_do_and_refuses_a_newer_schema(cli, tmp_path, pg_url):
    conf = config(tmp_path, pg_url)
    first = cli.run("init-db", "--config", conf, with_root=False)
    assert f"version {VERSION} (was none)" in first.stdout
    again = cli.run("init-db", "--config", conf, with_root=False)
    assert "nothing to do" in again.stdout
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"UPDATE {SCHEMA}.version SET version = 99")
    refused = cli.run("init-db", "--config", conf, with_root=False, check=False)
    assert refused.returncode == 1 and "newer than this dicomvault knows" in refused.stderr


def test_init_db_upgrades_a_schema_of_an_older_release_which_serve_refuses(cli, tmp_path, pg_url):
    # The schema as the first release made it: migration 1 only.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute(f"CREATE TABLE {SCHEMA}.version (version integer NOT NULL)")
        conn.execute(f"INSERT INTO {SCHEMA}.version VALUES (1)")
    conf = config(tmp_path, pg_url)
    refused = cli.run("stats", "--config", conf, with_root=False, check=False)
    assert refused.returncode == 1
    assert f"version 1, this dicomvault needs {VERSION}: run `dicomvault init-db" in refused.stderr
    upgraded = cli.run("init-db", "--config", conf, with_root=False)
    assert f"version {VERSION} (was 1)" in upgraded.stdout
    with PgIndex(pg_url, store="s") as index:
        index.beat(1, "node-1:11112", 1.0e9)
        assert [(n.node, n.address, n.started) for n in index.nodes()] == [
            (1, "node-1:11112", 1.0e9)
        ]
        assert index.nodes()[0].serving
        index.leave(1)
        assert index.nodes() == []


def test_the_password_of_the_url_is_never_shown(cli, tmp_path, postgresql):
    secret = "hunter2-Secret"
    url = f"postgresql://postgres:{secret}@127.0.0.1:{postgresql.port}/no_such_database"
    assert redact(url) == f"postgresql://postgres:***@127.0.0.1:{postgresql.port}/no_such_database"
    assert redact(f"host=h password={secret} dbname=d") == "host=h password=*** dbname=d"
    for argv in (("init-db",), ("stats",)):
        failed = cli.run(*argv, "--config", config(tmp_path, url), with_root=False, check=False)
        assert failed.returncode == 1 and "no_such_database" in failed.stderr
        assert secret not in failed.stdout + failed.stderr
    cli.env["DICOMVAULT_INDEX_URL"] = url.replace("no_such_database", "postgres")
    served = cli.run("stats", "--config", config(tmp_path, ""), with_root=False)
    assert secret not in served.stdout + served.stderr and "instances" in served.stdout


def test_the_embedded_default_never_imports_psycopg(tmp_path):
    code = (
        "import sys; from dicomvault import config; from dicomvault.store import Archive; "
        "import dicomvault.cli.app; "
        f"Archive(config.load(None, root={str(tmp_path / 'a')!r})).close(); "
        "assert 'psycopg' not in sys.modules, 'psycopg imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
