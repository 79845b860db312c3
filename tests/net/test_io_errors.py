"""A failing disk never produces a false Success: EIO on a pack's fsync or write, or on the
index's, is answered as a refusal (0xA700), the server keeps serving reads, an fsync failure
stays refused until a restart (Linux reports a writeback error to one fsync only), and after
the restart everything acknowledged is there and verify is clean. The errors come from a
preloaded library (tests/faults), not from anything in the archive's code."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomvault.bench.corpus import small_corpus
from tests.faults import eio_environment
from tests.net.conftest import Server, dcmtk


def store_each(server: Server, paths: list[Path]) -> list[bool]:
    """storescu going on past refusals (-nh): whether each file was acknowledged."""
    result = dcmtk(
        "storescu", "-v", "-nh", "-aet", "MODALITY", "-aec", server.aet, "-R", "-xe",
        "127.0.0.1", server.port, *paths, check=False,
    )  # fmt: skip
    answers = [line for line in result.stderr.splitlines() if "Received Store Response" in line]
    assert len(answers) == len(paths), result.stderr
    return ["(Success)" in line for line in answers]


def store_one_at_a_time(server: Server, paths: list[Path], settled: str | None) -> list[bool]:
    """``store_each`` a file at a time; once the fault has struck, the next waits until the
    log says ``settled``: a failure the index's applier meets after the acknowledgement (the
    instance is durable in the packs) takes effect on the C-STOREs after it, and however
    loaded the machine, some are."""
    acknowledged = []
    for path in paths:
        if settled is not None and server.logged("eio.c: failing", timeout=0):
            assert server.logged(settled, timeout=30), settled
        acknowledged += store_each(server, [path])
    return acknowledged


@pytest.mark.parametrize(
    ("call", "path", "after", "sticky", "settled"),
    [
        ("fsync", "/packs/pack-", 3, True, None),  # the 4th fsync of a pack fails
        ("write", "/packs/pack-", 20, False, None),  # the 21st write to a pack fails, once
        # The index's disk fails under the applier.
        ("write", "/index/data.mdb", 40, True, "refusing C-STOREs"),
    ],
    ids=["pack fsync", "pack write", "index write"],
)
def test_an_io_error_is_never_a_false_success(tmp_path, call, path, after, sticky, settled):
    corpus = small_corpus(tmp_path / "corpus", 12)
    server = Server(tmp_path, {}).start(env=eio_environment(tmp_path, call, path, after))
    try:
        acknowledged = store_one_at_a_time(server, [g.path for g in corpus], settled)
        assert server.logged("eio.c: failing"), "the fault was injected"
        assert not all(acknowledged), "the failure was answered as one"
        first_refused = acknowledged.index(False)
        assert all(acknowledged[:first_refused])
        if sticky:  # nothing after it is acknowledged until a restart
            assert not any(acknowledged[first_refused:]), acknowledged
        else:  # the write failed, was taken back, and the next ones are stored
            assert any(acknowledged[first_refused + 1 :]), acknowledged
    finally:
        assert server.stop() == 0
    server.start()  # the disk works again
    try:
        listed = {i["key"] for i in server.cli.ls("instances")}
        kept = {g.sop_instance_uid for g, ok in zip(corpus, acknowledged, strict=True) if ok}
        assert kept <= listed, "everything acknowledged is there"
        assert server.run("verify").returncode == 0
        missing = [g.path for g in corpus if g.sop_instance_uid not in listed]
        assert all(store_each(server, missing)), "and the rest can be stored now"
    finally:
        assert server.stop() == 0
