"""`dicomvault migrate repack` rewrites every pack with another compression: smaller with zstd,
every instance still byte-identical, verify clean; and back again; and all that while a
running server goes on retrieving and storing."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

from dicomvault.bench.corpus import small_corpus
from tests.conftest import Cli
from tests.net.conftest import Server, store_corpus
from tests.net.test_dcmtk_peers import QR, dataset_bytes, getscu


def pack_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in (root / "packs").iterdir())


def exported(cli: Cli, out: Path) -> dict[str, bytes]:
    cli.run("export", "--out", out)
    return {p.name: p.read_bytes() for p in out.rglob("*.dcm")}


def test_repack_compresses_and_keeps_every_instance(tmp_path):
    corpus = small_corpus(tmp_path / "corpus", 60)
    cli = Cli(tmp_path / "archive", tmp_path)
    cli.run("import", tmp_path / "corpus")
    original = exported(cli, tmp_path / "before")
    assert len(original) == len(corpus)
    plain = pack_bytes(cli.root)

    result = cli.run("migrate", "repack", "--compression", "zstd", "--level", "9")
    assert "verified" in result.stdout
    compressed = pack_bytes(cli.root)
    assert compressed < plain
    assert exported(cli, tmp_path / "zstd") == original

    cli.run("migrate", "repack", "--compression", "none")
    assert pack_bytes(cli.root) > compressed
    assert exported(cli, tmp_path / "plain") == original
    assert cli.run("verify").returncode == 0
    refused = cli.run("migrate", "repack", "--compression", "lz4", check=False)
    assert refused.returncode != 0 and "none or zstd" in refused.stderr


def retrieve_study(server: Server, study_uid: str, out: Path) -> dict[str, bytes]:
    """C-GET of a study with DCMTK's getscu: each instance's data set, by SOP Instance UID."""
    received = getscu(server, out, QueryRetrieveLevel="STUDY", StudyInstanceUID=study_uid)
    return {uid: dataset_bytes(path) for uid, path in received.items()}


def test_repack_while_serving_retrieves_and_stores(tmp_path):
    """`migrate repack` against a running `serve`: a getscu loop and storescu runs go on
    throughout, every retrieve returns the data sets as sent, the instances stored meanwhile
    are all there afterwards, verify is clean and the packs are smaller."""
    server = Server(
        tmp_path,
        {"WORKSTATION": {"aet": QR, "host": "127.0.0.1", "port": 1}},
        # Small packs: the repack replaces many, one at a time, while the peers work.
        sections={"storage": {"pack_size": 1 << 16}},
    ).start()
    try:
        before = small_corpus(tmp_path / "before", 300)
        during = small_corpus(tmp_path / "during", 60, seed=1)
        store_corpus(server, before)
        sent = {g.sop_instance_uid: dataset_bytes(g.path) for g in [*before, *during]}
        studies = sorted({g.study_instance_uid for g in before})
        plain = pack_bytes(server.root)

        repacking = threading.Event()
        repacking.set()
        retrieved: list[tuple[float, float, dict[str, bytes]]] = []
        stored: list[tuple[float, float]] = []
        failures: list[BaseException] = []

        def retrieve_loop() -> None:
            rounds = 0
            while repacking.is_set() or rounds < 2:
                for study in studies:
                    start = time.monotonic()
                    try:
                        got = retrieve_study(server, study, tmp_path / f"get{len(retrieved)}")
                    except (AssertionError, OSError) as e:
                        failures.append(e)
                        return
                    retrieved.append((start, time.monotonic(), got))
                rounds += 1

        def store_loop() -> None:
            for batch in range(0, len(during), 10):
                start = time.monotonic()
                try:
                    store_corpus(server, during[batch : batch + 10])
                except (AssertionError, OSError) as e:
                    failures.append(e)
                    return
                stored.append((start, time.monotonic()))

        peers = [threading.Thread(target=retrieve_loop), threading.Thread(target=store_loop)]
        for peer in peers:
            peer.start()
        started = time.monotonic()
        result = server.run("migrate", "repack", "--compression", "zstd")
        ended = time.monotonic()
        repacking.clear()
        for peer in peers:
            peer.join(timeout=300)

        assert not failures, failures
        assert re.search(r"pack \d+: .* -> ", result.stdout), result.stdout
        assert "verified" in result.stdout
        assert server.logged("control: {'compression': 'zstd'")
        assert any(start < ended and end > started for start, end, _ in retrieved), (
            "some retrieve ran while the packs were rewritten"
        )
        assert any(start < ended and end > started for start, end in stored)
        for _, _, got in retrieved:
            assert len(got) == 100
            assert all(got[uid] == sent[uid] for uid in got)
        after: dict[str, bytes] = {}
        for study in {g.study_instance_uid for g in [*before, *during]}:
            after.update(retrieve_study(server, study, tmp_path / f"after-{study}"))
        assert after == sent
        assert server.run("verify").returncode == 0
        assert pack_bytes(server.root) < plain
    finally:
        assert server.stop() == 0
    # Reopened, the index replays nothing the repack copied and loses nothing stored meanwhile.
    assert "replayed" not in server.run("verify").stderr
    assert {r["key"] for r in server.cli.ls("instances")} == set(sent)
