"""``dicomvault serve`` with its index on PostgreSQL: instances sent by DCMTK's storescu are
found by findscu and QIDO-RS, are still there after a restart, and what a killed server
acknowledged but had not indexed (the pack log ahead of PostgreSQL) is replayed into it."""

from __future__ import annotations

import json
import urllib.request

import psycopg

from dicomvault.bench.corpus import ct_corpus
from dicomvault.bench.peers import free_port
from dicomvault.index.pg_schema import SCHEMA
from tests.net.conftest import Server, storescu
from tests.net.test_dcmtk_peers import QR, findscu


def indexed(url: str) -> int:
    with psycopg.connect(url) as conn:
        [(count,)] = conn.execute(f"SELECT count(*) FROM {SCHEMA}.instances").fetchall()
    return int(count)


def test_serve_on_postgresql_stores_finds_restarts_and_replays(tmp_path, pg_url):
    http_port = free_port()
    server = Server(
        tmp_path,
        {"WORKSTATION": {"aet": QR, "host": "127.0.0.1", "port": 1}},
        sections={
            "index": {"backend": "postgresql", "url": pg_url},
            "http": {"enabled": True, "host": "127.0.0.1", "port": http_port},
        },
    ).start()
    first = ct_corpus(tmp_path / "first", 6, rows=32, columns=32, studies=2)
    later = ct_corpus(tmp_path / "later", 4, rows=32, columns=32, seed=1)
    sent = {c.sop_instance_uid for c in first}

    def found() -> set[str]:
        return {
            str(ds.SOPInstanceUID)
            for ds in findscu(server, "IMAGE", {"SOPInstanceUID": ""}, tmp_path)
        }

    try:
        result = storescu(server, [c.path for c in first])
        assert result.stderr.count("Received Store Response (Success)") == 6
        assert found() == sent
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/dicom-web/instances") as r:
            qido = json.load(r)
        assert {i["00080018"]["Value"][0] for i in qido} == sent
        assert indexed(pg_url) == 6

        server.stop()
        server.start()
        assert found() == sent

        # The applier's transactions wait behind a lock: the listener acknowledges from the
        # pack log alone, and the server is killed before any of them is indexed.
        with psycopg.connect(pg_url) as blocker:
            blocker.execute(f"LOCK TABLE {SCHEMA}.instances IN EXCLUSIVE MODE")
            result = storescu(server, [c.path for c in later])
            assert result.stderr.count("Received Store Response (Success)") == 4
            server.kill()
        assert indexed(pg_url) == 6  # the packs are ahead of the index

        server.start()  # replays the pack log into PostgreSQL
        assert indexed(pg_url) == 10
        assert found() == sent | {c.sop_instance_uid for c in later}
    finally:
        if server.alive:
            assert server.stop() == 0
