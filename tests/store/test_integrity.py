"""Damage in the packs costs only what it damaged: after a flipped bit, a lost blob index, or
bytes flipped at random, `verify` names what is damaged, `reindex` and opening rebuild
everything else, every instance the damage did not touch exports bit for bit, and storing a
damaged instance again repairs it."""

from __future__ import annotations

import random
import shutil
import struct
from pathlib import Path

import pytest

from dicomvault.bench.corpus import GeneratedInstance, small_corpus
from tests.conftest import Cli

RECORD_HEADER = 64
PACK_HEADER = 16


def pack_records(path: Path) -> list[tuple[int, int, bytes]]:
    """(offset, record length, payload) of every record of an undamaged pack, as the pack
    format lays them out (rust/src/pack.rs)."""
    data = path.read_bytes()
    out, at = [], PACK_HEADER
    while at < len(data):
        assert data[at : at + 4] == b"DVRC"
        (stored,) = struct.unpack_from("<Q", data, at + 16)
        end = at + RECORD_HEADER + stored
        out.append((at, end - at, data[at + RECORD_HEADER : end]))
        at = end
    return out


def packs(root: Path) -> list[Path]:
    return sorted((root / "packs").glob("pack-*.dvp"))


def flip(path: Path, offset: int, mask: int = 0x10) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ mask]))


def imported(cli: Cli, tmp_path: Path, count: int, pack_size: int) -> list[GeneratedInstance]:
    (tmp_path / "dicomvault.toml").write_text(f"[storage]\npack_size = {pack_size}\n")
    corpus = small_corpus(tmp_path / "corpus", count)
    cli.run("import", tmp_path / "corpus", "--quiet")
    return corpus


def export_all(cli: Cli, out: Path) -> tuple[dict[str, bytes], str]:
    """What `export` writes of the whole archive, and what it says of what it could not."""
    result = cli.run("export", "--out", out, check=False)
    return {p.stem: p.read_bytes() for p in out.rglob("*.dcm")}, result.stderr


def verify_defects(cli: Cli) -> list[str]:
    result = cli.run("verify", check=False)
    assert result.returncode == 1, result.stdout
    return [line for line in result.stdout.splitlines() if line.startswith("DEFECT")]


@pytest.mark.parametrize("pack_size", [1 << 30, 1 << 17], ids=["one pack", "many packs"])
@pytest.mark.parametrize("rebuild", ["reindex", "lost blob index"])
def test_a_flipped_bit_costs_its_instance_only(cli, tmp_path, pack_size, rebuild):
    corpus = imported(cli, tmp_path, 110, pack_size)
    victim = corpus[3]
    pixels = victim.path.read_bytes()[-4096:]  # inside its frame, a blob of its own
    pack = next(p for p in packs(cli.root) if pixels in p.read_bytes())
    flip(pack, pack.read_bytes().find(pixels) + 100)
    [defect] = verify_defects(cli)
    assert victim.sop_instance_uid in defect and "checksum" in defect
    if rebuild == "reindex":
        rebuilt = cli.run("reindex", check=False)
        assert rebuilt.returncode == 1 and "reindexed 110 instances" in rebuilt.stdout
        assert "1 damaged records" in rebuilt.stdout
    else:
        shutil.rmtree(cli.root / "blobs")  # the README calls it a cache of the packs
    assert len(cli.ls("instances")) == 110
    [defect] = verify_defects(cli)
    assert victim.sop_instance_uid in defect and "checksum" in defect
    files, said = export_all(cli, tmp_path / "out")
    assert files == {g.sop_instance_uid: g.path.read_bytes() for g in corpus if g is not victim}
    assert f"damaged: {victim.sop_instance_uid}" in said

    # Storing it again repairs it; gc then sets the damaged record aside in the quarantine.
    assert "duplicate 1" in cli.run("import", victim.path).stdout
    [defect] = verify_defects(cli)
    assert "a valid copy is stored elsewhere" in defect and victim.sop_instance_uid not in defect
    cli.run("gc")
    assert cli.run("verify").returncode == 0
    assert list((cli.root / "quarantine").iterdir())
    files, _ = export_all(cli, tmp_path / "again")
    assert files == {g.sop_instance_uid: g.path.read_bytes() for g in corpus}


def test_bytes_flipped_at_200_random_offsets_cost_only_what_they_hit(cli, tmp_path):
    corpus = imported(cli, tmp_path, 150, 1 << 17)
    records = {p: pack_records(p) for p in packs(cli.root)}
    rng = random.Random(20261130)
    hit: list[bytes] = []  # the payloads of the records a flip lands in
    for _ in range(200):
        pack = rng.choice(list(records))
        offset = rng.randrange(pack.stat().st_size)
        flip(pack, offset, 1 << rng.randrange(8))
        hit += [p for start, n, p in records[pack] if start <= offset < start + n]
    cli.run("verify", check=False)
    assert cli.run("reindex", check=False).returncode == 1  # it passed damaged records
    files, _ = export_all(cli, tmp_path / "out")
    intact = 0
    for g in corpus:
        original = g.path.read_bytes()
        # A blob is a piece of the file; its manifest record names the file it came from.
        if any(p in original or str(g.path).encode() in p for p in hit):
            continue
        intact += 1
        assert files.get(g.sop_instance_uid) == original, g.sop_instance_uid
    assert intact > len(corpus) // 4, f"only {intact} instances escaped the damage"
