"""`dicomvault migrate repack` rewrites every pack with another compression: smaller with zstd,
every instance still byte-identical, verify clean; and back again."""

from __future__ import annotations

from pathlib import Path

from dicomvault.bench.corpus import small_corpus
from tests.conftest import Cli


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
